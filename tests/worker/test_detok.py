"""Table tests of incremental detokenization and stop strings (worker.detok)."""

import pytest

from worker.detok import TextStream, find_stop, holdback

# A word-level vocabulary whose decoder drops the first word's leading space, like a
# Metaspace / SentencePiece decoder.
WORDS = ["\u2581Once", "\u2581upon", "\u2581a", "\u2581time", ",", "\u2581the", "\u2581end", "."]


def word_decode(ids):
    return "".join(WORDS[i] for i in ids).replace("\u2581", " ").removeprefix(" ")


def byte_decode(ids):
    """Byte-level: token id = one byte, like GPT-2 style BPE at its worst."""
    return bytes(ids).decode("utf-8", errors="replace")


def text_tokens(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def run(decode, ids, stop=(), prefix=()):
    stream = TextStream(decode, prefix, stop)
    deltas = [stream.add(i) for i in ids]
    deltas.append(stream.finish())
    return deltas, stream.stopped


@pytest.mark.parametrize("ids,prefix,expected", [
    ([0, 1, 2, 3], [], "Once upon a time"),
    ([3, 4, 5, 6, 7], [0, 1, 2], " time, the end."),
    ([3], [2], " time"),
], ids=["no-prefix", "prefix-keeps-leading-space", "one-token"])
def test_word_text(ids, prefix, expected):
    deltas, stopped = run(word_decode, ids, prefix=prefix)
    assert "".join(deltas) == expected
    assert not stopped


@pytest.mark.parametrize("ids,expected_deltas", [
    (text_tokens("é"), ["", "é", ""]),
    (text_tokens("a€b"), ["a", "", "", "€", "b", ""]),
    (text_tokens("😀"), ["", "", "", "😀", ""]),
    ([0xFF, 0x41], ["", "A", ""]),
    ([0x41, 0xE2, 0x82], ["A", "", "", ""]),
], ids=["two-byte-char", "three-byte-char", "four-byte-char", "invalid-byte-dropped",
        "incomplete-tail-dropped"])
def test_incomplete_characters_are_held_and_never_replaced(ids, expected_deltas):
    deltas, _ = run(byte_decode, ids)
    assert deltas == expected_deltas
    assert "\ufffd" not in "".join(deltas)


@pytest.mark.parametrize("text,stop,expected,stopped", [
    ("Hello world", ["o w"], "Hell", True),
    ("Hello world", ["world"], "Hello ", True),
    ("Hello world", ["xyz"], "Hello world", False),
    ("Hello world", ["wor", "lo"], "Hel", True),
    ("Hello world", ["Hello"], "", True),
    ("abd", ["abc"], "abd", False),
    ("a\u00e9b stop", [" stop"], "a\u00e9b", True),
    ("Hello world", ["", "d"], "Hello worl", True),
    ("ab", ["abc"], "ab", False),
], ids=["spans-tokens", "word", "never-matches", "earliest-wins", "at-start", "prefix-released",
        "after-multibyte", "empty-stop-ignored", "dangling-prefix-released-at-end"])
def test_stop_strings(text, stop, expected, stopped):
    deltas, was_stopped = run(byte_decode, text_tokens(text), stop=stop)
    out = "".join(deltas)
    assert out == expected
    assert was_stopped == stopped
    # Never any part of a completed stop string, not even transiently.
    if stopped:
        assert not any(s and s in out for s in stop)


def test_stop_prefix_is_held_until_resolved():
    stream = TextStream(byte_decode, (), ["abc"])
    assert [stream.add(i) for i in text_tokens("xab")] == ["x", "", ""]
    assert stream.add(ord("d")) == "abd"
    assert stream.add(ord("a")) == ""
    assert stream.add(ord("b")) == ""
    assert stream.add(ord("c")) == ""
    assert stream.stopped
    assert stream.add(ord("z")) == "" and stream.finish() == ""


@pytest.mark.parametrize("text,stops,expected", [
    ("hello wo", ["world"], 2),
    ("hello w", ["world", "low"], 1),
    ("hello", ["world"], 0),
    ("hello wor", ["wor"], 0),
    ("ab", ["abab"], 2),
    ("", ["x"], 0),
], ids=["two-chars", "longest-of-several", "none", "complete-is-not-partial", "repeat", "empty"])
def test_holdback(text, stops, expected):
    assert holdback(text, stops) == expected


@pytest.mark.parametrize("text,stops,start,expected", [
    ("a stop b stop", ["stop"], 0, 2),
    ("a stop b stop", ["stop"], 3, 9),
    ("xyz", ["q"], 0, -1),
    ("one two", ["two", "one"], 0, 0),
], ids=["first", "from-start", "absent", "earliest-of-several"])
def test_find_stop(text, stops, start, expected):
    assert find_stop(text, stops, start) == expected


@pytest.mark.parametrize("decode,ids,prefix,expected", [
    (byte_decode, text_tokens("Grüße, 世界! 😀 ok " * 20), (), "Grüße, 世界! 😀 ok " * 20),
    (word_decode, [0, 1, 2, 3, 4, 5, 6, 7] * 30, [2], " Once upon a time, the end." * 30),
], ids=["bytes", "words"])
def test_long_streams_match_decoding_everything_at_once(decode, ids, prefix, expected):
    # The anchor moves as text is released; the result must not depend on it.
    deltas, _ = run(decode, ids, prefix=prefix)
    assert "".join(deltas) == expected


def test_a_run_of_skipped_special_tokens_keeps_the_next_words_space():
    # The decode context was the last PREFIX_TOKENS ids: after that many special tokens
    # (which the decoder skips) it decoded to "", and " the" came out as "the".
    special = len(WORDS)

    def skipping_decode(ids):
        return word_decode([i for i in ids if i != special])
    ids = [3, special, special, special, special, special, 5]
    deltas, _ = run(skipping_decode, ids, prefix=[0, 1, 2])
    assert "".join(deltas) == " time the"
