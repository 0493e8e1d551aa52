"""Job events -> OpenAI results, whole or streamed (the gateway's gateway/openai/outcome.py
and serving.py, on dataclasses instead of JSON).

Event contract (events.proto): per choice, `tokens`* then exactly one `end`; or one
`error` for the whole job, which raises its typed error here. A `divergence` (a retry
produced other tokens) replaces the choice's text after its `char_offset`: a whole
result applies it; a stream cannot take back chunks it has given, as with OpenAI.
Other kinds (queued, started, metrics, ...) shape nothing but the prompt token count.

Several prompts run as several jobs (one Generate call each); job p's choice c is the
result's choice p * n + c, as OpenAI numbers them. Usage adds up over the jobs.
The endpoint-specific shapes come from a Flavor (CHAT, TEXT).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from llama_orch_sdk import errors
from llama_orch_sdk._gen.llama_orch.v1 import common_pb2, events_pb2
from llama_orch_sdk.types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionTokenLogprob,
    Choice,
    ChoiceDelta,
    ChoiceLogprobs,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionUsage,
    Logprobs,
    TopLogprob,
)

Entries = Sequence[events_pb2.TokenLogprobs]


@dataclass
class _Choice:
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


class JobOutcome:
    """Folds one job's events; `add` raises the job's typed error on an `error` event.
    `whole`: folding for a whole result, which applies divergences."""

    def __init__(self, first: events_pb2.JobEvent, n: int, *, whole: bool = False):
        self.whole = whole
        self.job_id = first.job_id
        self.created = first.time.seconds or int(time.time())
        self.choices = {i: _Choice(i) for i in range(n)}
        self.prompt_tokens = 0
        self.fingerprint: str | None = None

    def add(self, event: events_pb2.JobEvent) -> tuple[_Choice, int] | None:
        """Fold one event. For tokens and end: the choice, and its text offset before
        this event (what a streamed chunk needs)."""
        kind = event.WhichOneof("kind")
        if kind == "tokens":
            t = event.tokens
            choice = self.choices.setdefault(t.choice_index, _Choice(t.choice_index))
            offset = choice.chars
            choice.parts.append(t.text)
            choice.logprobs.extend(t.logprobs)
            choice.chars += len(t.text)
            choice.tokens += len(t.token_ids) or len(t.logprobs)
            return choice, offset
        if kind == "end":
            end = event.end
            choice = self.choices.setdefault(end.choice_index, _Choice(end.choice_index))
            choice.finish_reason = end.finish_reason or "stop"
            choice.completion_tokens = end.usage.completion_tokens or choice.tokens
            self.prompt_tokens = max(self.prompt_tokens, end.usage.prompt_tokens)
            self.fingerprint = fingerprint(end.proof) or self.fingerprint
            return choice, choice.chars
        if kind == "started":
            self.prompt_tokens = max(self.prompt_tokens, event.started.prompt_tokens)
        elif kind == "divergence" and self.whole:
            d = event.divergence
            self.choices.setdefault(d.choice_index, _Choice(d.choice_index)).cut(
                d.token_index, d.char_offset)
        elif kind == "error":
            raise errors.from_detail(event.error)
        return None

    def check_done(self) -> None:
        if not all(c.finish_reason is not None for c in self.choices.values()):
            raise errors.ServerError("INTERNAL", f"job {self.job_id}: the event stream ended "
                                                 "before every choice finished")

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens or c.tokens for c in self.choices.values())


def fingerprint(proof: common_pb2.ProofRecord) -> str | None:
    """The gateway's system_fingerprint: engine, its version and the exact weights."""
    if not (proof.engine or proof.engine_version or proof.model_digest):
        return None
    key = f"{proof.engine}\x00{proof.engine_version}\x00{proof.model_digest}"
    return "fp_" + hashlib.sha256(key.encode()).hexdigest()[:10]


def usage(outcomes: Sequence[JobOutcome]) -> CompletionUsage:
    prompt = sum(o.prompt_tokens for o in outcomes)
    completion = sum(o.completion_tokens for o in outcomes)
    return CompletionUsage(prompt_tokens=prompt, completion_tokens=completion,
                           total_tokens=prompt + completion)


# ---- flavors -------------------------------------------------------------------------


class Flavor(Protocol):
    id_prefix: str

    def opening(self, index: int) -> Any | None: ...
    def delta(self, index: int, text: str, logprobs: Entries | None, offset: int) -> Any: ...
    def finish(self, index: int, reason: str) -> Any: ...
    def choice(self, index: int, c: _Choice, logprobs: bool) -> Any: ...
    def whole(self, **fields: Any) -> Any: ...
    def chunk(self, **fields: Any) -> Any: ...


def _top(t: events_pb2.TokenLogprob) -> TopLogprob:
    return TopLogprob(token=t.token, logprob=t.logprob, bytes=list(t.token.encode()))


def _chat_logprobs(entries: Entries) -> ChoiceLogprobs:
    return ChoiceLogprobs(content=[
        ChatCompletionTokenLogprob(token=e.token, logprob=e.logprob, bytes=list(e.token.encode()),
                                   top_logprobs=[_top(t) for t in e.top]) for e in entries])


def _text_logprobs(entries: Entries, offset: int) -> Logprobs:
    """The legacy layout; text_offset is each token's character offset in the text."""
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.token)
    return Logprobs(tokens=[e.token for e in entries],
                    token_logprobs=[e.logprob for e in entries],
                    top_logprobs=[{t.token: t.logprob for t in e.top} for e in entries],
                    text_offset=offsets)


class ChatFlavor:
    id_prefix = "chatcmpl-"

    def opening(self, index: int) -> ChunkChoice:
        return ChunkChoice(index=index, delta=ChoiceDelta(role="assistant", content=""))

    def delta(self, index: int, text: str, logprobs: Entries | None, offset: int) -> ChunkChoice:
        return ChunkChoice(index=index, delta=ChoiceDelta(content=text),
                           logprobs=_chat_logprobs(logprobs) if logprobs is not None else None)

    def finish(self, index: int, reason: str) -> ChunkChoice:
        return ChunkChoice(index=index, delta=ChoiceDelta(), finish_reason=reason)

    def choice(self, index: int, c: _Choice, logprobs: bool) -> Choice:
        return Choice(index=index, message=ChatCompletionMessage(content=c.text),
                      finish_reason=c.finish_reason or "stop",
                      logprobs=_chat_logprobs(c.logprobs) if logprobs else None)

    def whole(self, **fields: Any) -> ChatCompletion:
        return ChatCompletion(**fields)

    def chunk(self, **fields: Any) -> ChatCompletionChunk:
        return ChatCompletionChunk(**fields)


class TextFlavor:
    id_prefix = "cmpl-"

    def opening(self, index: int) -> None:
        return None

    def delta(self, index: int, text: str, logprobs: Entries | None,
              offset: int) -> CompletionChoice:
        return CompletionChoice(index=index, text=text, finish_reason=None,
                                logprobs=_text_logprobs(logprobs, offset)
                                if logprobs is not None else None)

    def finish(self, index: int, reason: str) -> CompletionChoice:
        return CompletionChoice(index=index, text="", finish_reason=reason)

    def choice(self, index: int, c: _Choice, logprobs: bool) -> CompletionChoice:
        return CompletionChoice(index=index, text=c.text, finish_reason=c.finish_reason or "stop",
                                logprobs=_text_logprobs(c.logprobs, 0) if logprobs else None)

    def whole(self, **fields: Any) -> Completion:
        return Completion(**fields)

    def chunk(self, **fields: Any) -> Completion:
        return Completion(**fields)


CHAT = ChatFlavor()
TEXT = TextFlavor()


# ---- whole and streamed ----------------------------------------------------------------


def whole(flavor: Flavor, responses: list[list[Any]], *, model: str, n: int,
          logprobs: bool) -> Any:
    """The result of one or more finished Generate calls (GenerateResponse lists)."""
    outcomes = []
    for messages in responses:
        if not messages:
            raise errors.ServerError("INTERNAL", "the orchestrator ended Generate without events")
        outcome = JobOutcome(messages[0].event, n, whole=True)
        for m in messages:
            outcome.add(m.event)
        outcome.check_done()
        outcomes.append(outcome)
    choices = [
        flavor.choice(p * n + c.index, c, logprobs)
        for p, o in enumerate(outcomes) for c in sorted(o.choices.values(), key=lambda c: c.index)]
    first = outcomes[0]
    return flavor.whole(id=flavor.id_prefix + first.job_id, created=first.created, model=model,
                        system_fingerprint=first.fingerprint, choices=choices,
                        usage=usage(outcomes))


class Chunks:
    """The Renderer of a streamed completion: Generate responses -> chunks, one `id` for
    the whole stream; with include_usage, every chunk says usage None and one last
    chunk without choices carries it."""

    def __init__(self, flavor: Flavor, *, model: str, n: int, logprobs: bool,
                 include_usage: bool):
        self.flavor, self.model, self.n = flavor, model, n
        self.logprobs, self.include_usage = logprobs, include_usage
        self.outcomes: dict[int, JobOutcome] = {}
        self.head: dict[str, Any] = {}

    def _chunk(self, choices: list[Any], usage_: CompletionUsage | None = None) -> Any:
        return self.flavor.chunk(**self.head, choices=choices, usage=usage_)

    def feed(self, index: int, message: Any) -> list[Any]:
        event, out = message.event, []
        outcome = self.outcomes.get(index)
        if outcome is None:
            outcome = self.outcomes[index] = JobOutcome(event, self.n)
            if not self.head:
                self.head = {"id": self.flavor.id_prefix + outcome.job_id,
                             "created": outcome.created, "model": self.model,
                             "system_fingerprint": None}
            for c in range(self.n):
                if (opening := self.flavor.opening(index * self.n + c)) is not None:
                    out.append(self._chunk([opening]))
        added = outcome.add(event)
        if added is not None:
            choice, offset = added
            at = index * self.n + choice.index
            if event.HasField("tokens"):
                entries = event.tokens.logprobs if self.logprobs else None
                out.append(self._chunk([self.flavor.delta(at, event.tokens.text, entries,
                                                          offset)]))
            else:
                self.head["system_fingerprint"] = outcome.fingerprint
                out.append(self._chunk([self.flavor.finish(at, choice.finish_reason or "stop")]))
        return out

    def finish(self) -> list[Any]:
        for outcome in self.outcomes.values():
            outcome.check_done()
        if not self.include_usage:
            return []
        return [self._chunk([], usage(list(self.outcomes.values())))]
