"""What the event streams of a request's jobs add up to, per choice: text, logprobs,
finish, usage.

A request is one job, or one job per prompt for a completion with several prompts;
each job has `n` choices, and choice j of job i is the response's choice `i * n + j`.

Event contract (events.proto): `queued` first, then `dispatched`, `started`, `tokens`*,
`metrics`*, `retrying`, `divergence`, and per choice exactly one terminal `end`, or
one `error` for the whole job. A `divergence` says what follows replaces the choice's
text after `char_offset` (a retry produced different tokens from `token_index` on). A
whole response applies it: its text is cut back there before the rest is appended. A
stream cannot: OpenAI's chunks only append, and the client has the old text already,
so there it is logged.

Usage: each `end` is taken to carry its own choice's usage; a job's usage is its
prompt counted once plus the completions of all its choices; the response's is the
sum over its jobs.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from llama_orch.v1 import common_pb2, events_pb2

from common.errors import OrchError


@dataclass
class ChoiceOutcome:
    index: int
    parts: list[str] = field(default_factory=list)
    logprobs: list[events_pb2.TokenLogprobs] = field(default_factory=list)
    chars: int = 0
    tokens: int = 0
    finish_reason: str | None = None
    completion_tokens: int = 0

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def cut(self, tokens: int, chars: int) -> None:
        """Keep the first `tokens` tokens and `chars` characters (a divergence)."""
        text = self.text[:chars]
        self.parts, self.chars = [text], len(text)
        self.logprobs = self.logprobs[:tokens]
        self.tokens = min(self.tokens, tokens)


class Outcome:
    """Folds JobEvents; `add` raises the job's OrchError on an `error` event. The
    response's id and creation time are its first job's."""

    def __init__(self, firsts: Sequence[events_pb2.JobEvent], n: int, *, whole: bool = False):
        """`whole`: folding for a whole response, which applies divergences."""
        self.whole = whole
        self.job_id = firsts[0].job_id
        self.job_ids = [f.job_id for f in firsts]
        self.created = firsts[0].time.seconds or int(time.time())
        self.n = n
        self.choices = {i: ChoiceOutcome(i) for i in range(n * len(firsts))}
        self.prompt_tokens = [0] * len(firsts)
        self.fingerprint: str | None = None
        self.divergences: list[events_pb2.JobDivergence] = []

    def choice(self, job: int, index: int) -> ChoiceOutcome:
        at = job * self.n + index
        return self.choices.setdefault(at, ChoiceOutcome(at))

    def add(self, event: events_pb2.JobEvent, job: int = 0) -> tuple[ChoiceOutcome, int] | None:
        """Fold one event of the request's `job`-th job. For tokens and end, return the
        choice and its text offset before this event (what a stream needs to render a
        chunk)."""
        kind = event.WhichOneof("kind")
        if kind == "tokens":
            tokens = event.tokens
            choice = self.choice(job, tokens.choice_index)
            offset = choice.chars
            choice.parts.append(tokens.text)
            choice.logprobs.extend(tokens.logprobs)
            choice.chars += len(tokens.text)
            choice.tokens += len(tokens.token_ids) or len(tokens.logprobs)
            return choice, offset
        if kind == "end":
            end = event.end
            choice = self.choice(job, end.choice_index)
            choice.finish_reason = end.finish_reason or "stop"
            choice.completion_tokens = end.usage.completion_tokens or choice.tokens
            self.prompt_tokens[job] = max(self.prompt_tokens[job], end.usage.prompt_tokens)
            self.fingerprint = fingerprint(end.proof) or self.fingerprint
            return choice, choice.chars
        if kind == "started":
            self.prompt_tokens[job] = max(self.prompt_tokens[job], event.started.prompt_tokens)
        elif kind == "divergence":
            d = event.divergence
            self.divergences.append(d)
            if self.whole:
                self.choice(job, d.choice_index).cut(d.token_index, d.char_offset)
        elif kind == "error":
            raise OrchError.from_detail(event.error)
        return None

    @property
    def done(self) -> bool:
        return all(c.finish_reason is not None for c in self.choices.values())

    def check_done(self) -> None:
        """The stream ended: every choice must have had its `end`."""
        if not self.done:
            raise OrchError("INTERNAL", f"job {self.job_id}: event stream ended before "
                                        "every choice finished")

    def usage(self) -> dict[str, int]:
        prompt = sum(self.prompt_tokens)
        completion = sum(c.completion_tokens or c.tokens for c in self.choices.values())
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}


def fingerprint(proof: common_pb2.ProofRecord) -> str | None:
    """OpenAI's system_fingerprint names the backend configuration that produced an
    answer; here that is the engine, its version and the exact weights."""
    if not (proof.engine or proof.engine_version or proof.model_digest):
        return None
    key = f"{proof.engine}\x00{proof.engine_version}\x00{proof.model_digest}"
    return "fp_" + hashlib.sha256(key.encode()).hexdigest()[:10]
