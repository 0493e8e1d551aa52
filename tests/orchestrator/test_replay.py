from llama_orch.v1 import events_pb2 as E
from orchestrator.replay import Replay


def tok(ids, text, choice=0):
    return E.JobTokens(token_ids=ids, text=text, choice_index=choice)


def kinds(out):
    return [next(iter(e)) for e in out]


def test_first_attempt_passes_everything_through():
    r = Replay()
    out = r.on_tokens(tok([1, 2], " a b"))
    assert kinds(out) == ["tokens"] and list(out[0]["tokens"].token_ids) == [1, 2]


def test_identical_replay_sends_only_what_is_new():
    r = Replay()
    r.on_tokens(tok([1], " a"))
    r.on_tokens(tok([2], " b"))
    r.begin_attempt()
    assert r.on_tokens(tok([1], " a")) == []
    assert r.on_tokens(tok([2], " b")) == []
    [out] = r.on_tokens(tok([3, 4], " c d"))
    assert list(out["tokens"].token_ids) == [3, 4] and out["tokens"].text == " c d"


def test_replay_crossing_the_sent_boundary_inside_one_message():
    r = Replay()
    r.on_tokens(tok([1, 2], " a b"))
    r.begin_attempt()
    [out] = r.on_tokens(tok([1, 2, 3], " a b c"))
    assert list(out["tokens"].token_ids) == [3] and out["tokens"].text == " c"


def test_divergence_is_explicit_and_never_repeats_a_token():
    r = Replay()
    r.on_tokens(tok([1, 2, 3], " a b c"))
    r.begin_attempt()
    assert r.on_tokens(tok([1], " a")) == []
    out = r.on_tokens(tok([9, 10], " x y"))
    assert kinds(out) == ["divergence", "tokens"]
    assert out[0]["divergence"].token_index == 1
    # Texts part at character 3 (" a " is common): the client keeps " a " and appends.
    assert "character 3" in out[0]["divergence"].message
    assert list(out[1]["tokens"].token_ids) == [9, 10] and out[1]["tokens"].text == "x y"
    # After diverging, the new attempt streams as is.
    assert list(r.on_tokens(tok([11], " z"))[0]["tokens"].token_ids) == [11]


def test_choices_are_tracked_separately():
    r = Replay()
    r.on_tokens(tok([1], " a", 0))
    r.on_tokens(tok([5], " e", 1))
    r.begin_attempt()
    assert r.on_tokens(tok([1], " a", 0)) == []
    assert kinds(r.on_tokens(tok([6], " f", 1))) == ["divergence", "tokens"]


def lp(*tokens):
    return [E.TokenLogprobs(token=t, logprob=-0.5) for t in tokens]


def test_logprobs_travel_with_their_tokens_through_a_replay():
    r = Replay()
    [first] = r.on_tokens(E.JobTokens(token_ids=[1, 2], text=" a b", logprobs=lp(" a", " b")))
    assert [x.token for x in first["tokens"].logprobs] == [" a", " b"]
    r.begin_attempt()
    [out] = r.on_tokens(E.JobTokens(token_ids=[1, 2, 3], text=" a b c", logprobs=lp(" a", " b", " c")))
    assert list(out["tokens"].token_ids) == [3] and [x.token for x in out["tokens"].logprobs] == [" c"]
    r.begin_attempt()
    out = r.on_tokens(E.JobTokens(token_ids=[1, 9], text=" a z", logprobs=lp(" a", " z")))
    assert kinds(out) == ["divergence", "tokens"]
    assert [x.token for x in out[1]["tokens"].logprobs] == [" z"]


def test_text_without_tokens_at_the_end_reaches_the_client():
    # A worker holds back text that might begin a stop string and sends it at the end
    # with no token of its own (worker/job.py); it was dropped as "already sent".
    r = Replay()
    r.on_tokens(tok([1, 2], " a b"))
    [out] = r.on_tokens(tok([], " EN"))
    assert list(out["tokens"].token_ids) == [] and out["tokens"].text == " EN"
    assert r.attempt_text() == " a b EN" and r.sent(0) == (2, 7)


def test_a_retry_does_not_resend_a_tail_the_client_already_has():
    r = Replay()
    r.on_tokens(tok([1, 2], " a b"))
    r.on_tokens(tok([], " EN"))
    r.begin_attempt()
    assert r.on_tokens(tok([1, 2], " a b")) == []
    assert r.on_tokens(tok([], " EN")) == []
    [out] = r.on_tokens(tok([3], "D"))
    assert list(out["tokens"].token_ids) == [3] and out["tokens"].text == "D"
    assert r.sent(0) == (3, 8)


def test_a_retry_that_gets_further_sends_a_tail_the_client_never_had():
    r = Replay()
    r.on_tokens(tok([1, 2], " a b"))
    r.begin_attempt()
    assert r.on_tokens(tok([1, 2], " a b")) == []
    [out] = r.on_tokens(tok([], " EN"))
    assert out["tokens"].text == " EN" and r.sent(0) == (2, 7)


def test_a_long_stream_keeps_every_piece_in_order():
    r = Replay()
    for i in range(5000):
        [out] = r.on_tokens(tok([i], f"<{i}>"))
        assert out["tokens"].text == f"<{i}>"
    assert r.attempt_text() == "".join(f"<{i}>" for i in range(5000))
    assert r.sent(0) == (5000, len(r.attempt_text()))
