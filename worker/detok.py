"""Incremental detokenization with stop-string holdback.

Tokens arrive one at a time, but text must only ever be appended to: a client that
concatenates the deltas has to end up with exactly the final text. Two things make
naive per-token decoding wrong:

- a character can span tokens (byte-level BPE): until it is complete, decoding shows
  U+FFFD at the tail. That tail is held back, and a U+FFFD that never resolves (the
  model produced invalid bytes) is dropped, so U+FFFD is never emitted;
- a stop string can span tokens: text that could be the start of a stop string is held
  back until it either completes the stop string (then the text is cut before it and
  nothing of it is emitted) or stops matching (then it is released).

Decoding covers the ids since the last anchor, preceded by a few ids before it (the
prompt's tail at first) so that tokenizers which drop a word's leading space at the
start of a text ("\u2581time" -> "time") still produce " time" after "Once upon a".
Whenever everything decoded so far has been released (nothing held back, no partial
character), the anchor moves up to the newest token, so each step decodes a short
window instead of the whole completion.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"
PREFIX_TOKENS = 4  # prompt ids decoded in front of the completion for context


def holdback(text: str, stops: Sequence[str]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


def find_stop(text: str, stops: Sequence[str], start: int = 0) -> int:
    """Index of the earliest stop-string occurrence at or after `start`, or -1."""
    found = -1
    for stop in stops:
        at = text.find(stop, start)
        if at != -1 and (found == -1 or at < found):
            found = at
    return found


class TextStream:
    """Turns generated token ids into append-only text deltas.

    `add(token_id)` returns the text that became safe to emit (possibly ""); once
    `stopped` is true a stop string matched and no more text will come. `finish()`
    returns whatever was held back when generation ends for another reason.
    """

    def __init__(self, decode: Callable[[list[int]], str], prefix_ids: Sequence[int] = (),
                 stop: Sequence[str] = ()):
        self._decode = decode
        self._anchor(list(prefix_ids))
        self._stops = [s for s in stop if s]
        self._longest_stop = max((len(s) for s in self._stops), default=0)
        self.stopped = False

    def _anchor(self, context: list[int]) -> None:
        # The last PREFIX_TOKENS ids, or more while those decode to nothing (special
        # tokens the decoder skips): an empty context would drop the next word's
        # leading space, as at the start of a text.
        take = PREFIX_TOKENS
        self._prefix = context[-take:]
        self._prefix_text = self._decode(self._prefix) if self._prefix else ""
        while not self._prefix_text and take < len(context):
            take *= 2
            self._prefix = context[-take:]
            self._prefix_text = self._decode(self._prefix)
        self._ids: list[int] = []  # ids after the anchor
        self._emitted = 0  # offset into the text of those ids

    def _text(self) -> str:
        full = self._decode(self._prefix + self._ids)
        if full.startswith(self._prefix_text):
            return full[len(self._prefix_text):]
        # The prefix decoded differently in context; fall back to the completion alone.
        return self._decode(self._ids)

    def add(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self._ids.append(token_id)
        text = self._text()
        if self._stops:
            at = find_stop(text, self._stops, max(0, self._emitted - self._longest_stop))
            if at != -1:
                self.stopped = True
                return self._release(text, max(at, self._emitted))
        safe = len(text)
        while safe > self._emitted and text[safe - 1] == REPLACEMENT:
            safe -= 1  # an incomplete character: wait for its remaining bytes
        safe -= holdback(text[self._emitted:safe], self._stops)
        delta = self._release(text, safe)
        if self._emitted == len(text):  # all released: no stop string can span the anchor
            self._anchor(self._prefix + self._ids)
        return delta

    def finish(self) -> str:
        """Release held-back text at the end of generation (nothing after a stop)."""
        if self.stopped:
            return ""
        text = self._text()
        return self._release(text, len(text))

    def _release(self, text: str, end: int) -> str:
        if end <= self._emitted:
            return ""
        delta = text[self._emitted:end].replace(REPLACEMENT, "")
        self._emitted = end
        return delta
