"""Replays of retried jobs: the client never receives a token twice.

A retried job runs again with the same seed. Its tokens are compared with what the
client already received: the matching prefix is suppressed; past it, only new tokens
are sent. If a token differs, the stream carries one JobDivergence (token index and
character offset where the texts part) and then the new attempt's tokens from that
point, which replace what was sent after it. Tracked per choice.

Invariant: for each choice, `sent_ids`/`sent_text` are exactly what the client has
(after applying any divergence), and `ended` the choices whose `end` it has: a retry
of a job with several choices replays the ones that had finished, and their ends are
not sent twice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from llama_orch.v1 import events_pb2


class _Text:
    """Text that grows by pieces: appending is O(piece) where `str +=` on an attribute
    copies the whole text each time (quadratic over a long generation); the joined
    text is built only when read."""

    __slots__ = ("_parts", "chars")

    def __init__(self, text: str = "") -> None:
        self._parts = [text] if text else []
        self.chars = len(text)

    def add(self, piece: str) -> None:
        if piece:
            self._parts.append(piece)
            self.chars += len(piece)

    def value(self) -> str:
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""


@dataclass
class _Choice:
    sent_ids: list[int] = field(default_factory=list)
    sent_text: _Text = field(default_factory=_Text)
    ids: list[int] = field(default_factory=list)  # this attempt
    text: _Text = field(default_factory=_Text)
    # This attempt's logprobs, aligned with `ids` when the worker sends them.
    logprobs: list[events_pb2.TokenLogprobs] = field(default_factory=list)
    diverged: bool = False


@dataclass
class Replay:
    choices: dict[int, _Choice] = field(default_factory=dict)
    # Choices whose `end` the client has: a retry replays them, end included.
    ended: set[int] = field(default_factory=set)

    def on_end(self, index: int) -> bool:
        """Whether choice `index`'s end is news to the client (its first end)."""
        if index in self.ended:
            return False
        self.ended.add(index)
        return True

    def begin_attempt(self) -> None:
        for c in self.choices.values():
            c.ids, c.text, c.logprobs, c.diverged = [], _Text(), [], False

    def attempt_text(self, index: int = 0) -> str:
        c = self.choices.get(index)
        return c.text.value() if c else ""

    def sent(self, index: int) -> tuple[int, int]:
        """Tokens and characters the client has of choice `index`."""
        c = self.choices.get(index)
        return (len(c.sent_ids), c.sent_text.chars) if c else (0, 0)

    def on_tokens(self, tokens: events_pb2.JobTokens) -> list[dict]:
        """Events to append for one worker `tokens` message, as JobRecord.append kwargs."""
        c = self.choices.setdefault(tokens.choice_index, _Choice())
        start = len(c.ids)
        c.ids.extend(tokens.token_ids)
        c.text.add(tokens.text)
        c.logprobs.extend(tokens.logprobs)
        if c.diverged or (start >= len(c.sent_ids)
                          and c.text.chars - len(tokens.text) == c.sent_text.chars):
            # The client has exactly what came before this message (always so on a
            # first attempt): it goes on as the worker sent it.
            c.sent_ids.extend(tokens.token_ids)
            c.sent_text.add(tokens.text)
            return [{"tokens": tokens}]
        for at in range(start, min(len(c.ids), len(c.sent_ids))):
            if c.ids[at] != c.sent_ids[at]:
                return self._diverge(c, tokens.choice_index, at)
        if len(c.ids) < len(c.sent_ids) or (len(c.ids) == len(c.sent_ids)
                                            and c.text.chars <= c.sent_text.chars):
            return []  # still inside what the client has
        # Past it: the new tokens, or only text (a worker's last message may carry
        # text it held back, checking for a stop string, and no token).
        return [self._send(c, tokens.choice_index, c.ids[len(c.sent_ids):],
                           c.text.value()[c.sent_text.chars:], c.logprobs[len(c.sent_ids):])]

    def _diverge(self, c: _Choice, index: int, at: int) -> list[dict]:
        c.diverged = True
        text = c.text.value()
        offset = len(os.path.commonprefix([c.sent_text.value(), text]))
        c.sent_ids, c.sent_text = c.sent_ids[:at], _Text(c.sent_text.value()[:offset])
        note = events_pb2.JobDivergence(
            token_index=at, choice_index=index, char_offset=offset,
            message=f"the retry differs from token {at} (character {offset}) on; "
                    "what follows replaces what was sent after that point")
        return [{"divergence": note}, self._send(c, index, c.ids[at:], text[offset:],
                                                 c.logprobs[at:])]

    @staticmethod
    def _send(c: _Choice, index: int, ids: list[int], text: str,
              logprobs: list[events_pb2.TokenLogprobs]) -> dict:
        c.sent_ids.extend(ids)
        c.sent_text.add(text)
        return {"tokens": events_pb2.JobTokens(choice_index=index, token_ids=ids, text=text,
                                               logprobs=logprobs)}
