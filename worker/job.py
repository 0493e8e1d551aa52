"""One Execute request, from request to events; the servicer only guards the slot.

Event order (worker.proto):

    started ─┬─ tokens* (choice 0) ── end (choice 0) ─ ... ─ tokens* (last) ── metrics ── end (last)
             └─ error, at any point, ends the stream (cancel, deadline, engine failure)

A request refused before generation (empty prompt, too long) gets a lone `error`. With
n > 1 the choices run one after another, choice i seeded with seed + i, and the one
`metrics` message, covering all choices, comes just before the last `end`.

Token ids: every sampled token except the end-of-sequence token is emitted and counted
(usage, proof), also when its text is held back or cut by a stop string; text and ids
of one `tokens` message are released together.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

from common.errors import OrchError
from llama_orch.v1 import common_pb2, events_pb2, worker_pb2
from worker.detok import TextStream
from worker.engines.base import Engine, Step
from worker.proof import token_hash
from worker.sampling import SamplingConfig

MAX_TOP_LOGPROBS = 20
MAX_CHOICES = 128


@dataclass
class Control:
    """What the servicer can do to a running job: cancel it; and its deadline."""

    job_id: str
    deadline: float | None = None  # time.monotonic() value
    cancel_reason: str = ""
    # The job's task while it awaits an engine step: a cancel interrupts that await.
    _waiting: asyncio.Task | None = None
    _interrupting: bool = False

    def cancel(self, reason: str = "job cancelled") -> None:
        self.cancel_reason = self.cancel_reason or reason
        if self._waiting is not None and not self._interrupting:
            self._interrupting = True
            self._waiting.cancel()

    def check(self) -> OrchError | None:
        if self.cancel_reason:
            return OrchError("CANCELLED", self.cancel_reason)
        if self.deadline is not None and time.monotonic() > self.deadline:
            return OrchError("DEADLINE_EXCEEDED", "job deadline exceeded")
        return None

    async def next_step(self, steps: AsyncIterator[Step]) -> Step | None:
        """The engine's next step (None: it has no more), unless a cancel or the
        deadline comes first: then the step is abandoned (the engine's generator is
        closed where it waits) and Interrupted is raised. An engine can take long over
        one step (a long prefill, a queue inside the engine, a stalled device), and the
        job must not hold its slot and its caller that long.

        Cheap per step (a timer, no task): the await is interrupted by cancelling this
        task, and only while it is in the await, never while it sends an event."""
        if error := self.check():
            raise Interrupted(error)
        loop = asyncio.get_running_loop()
        when = None if self.deadline is None else loop.time() + self.deadline - time.monotonic()
        self._waiting = asyncio.current_task()
        try:
            async with asyncio.timeout_at(when):
                return await anext(steps, None)
        except TimeoutError:
            raise Interrupted(OrchError("DEADLINE_EXCEEDED", "job deadline exceeded")) from None
        except asyncio.CancelledError:
            # Ours (a cancel) unless the task is also being cancelled from outside
            # (the caller went away, shutdown): then that goes on.
            if self._interrupting and self._waiting.uncancel() == 0:
                raise Interrupted(OrchError("CANCELLED", self.cancel_reason)) from None
            raise
        finally:
            self._waiting = None


class Interrupted(Exception):
    """A step abandoned for a cancel or the deadline; `error` is what the job ends with."""

    def __init__(self, error: OrchError):
        super().__init__(error.message)
        self.error = error


@dataclass
class _Stats:
    started: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    last_token: float | None = None
    tokens: int = 0

    def token(self) -> None:
        now = time.monotonic()
        self.first_token = self.first_token or now
        self.last_token = now
        self.tokens += 1

    def metrics(self) -> events_pb2.JobMetrics:
        # tokens/s is the decode rate between the first and last token (prefill is
        # in the time to first token); a single token has no rate but its own.
        ttft = (self.first_token - self.started) * 1000 if self.first_token else 0.0
        span = (self.last_token or 0.0) - (self.first_token or 0.0)
        if self.tokens >= 2 and span > 0:
            rate = (self.tokens - 1) / span
        else:
            rate = self.tokens / max(time.monotonic() - self.started, 1e-9)
        return events_pb2.JobMetrics(time_to_first_token_ms=ttft, tokens_per_second=rate,
                                     generated_tokens=self.tokens)


def _error(err: OrchError) -> worker_pb2.ExecuteResponse:
    return worker_pb2.ExecuteResponse(error=err.to_detail())


def prompt_ids(engine: Engine, request: worker_pb2.ExecuteRequest) -> list[int]:
    """prompt_token_ids if given (authoritative), else the prompt, else the messages."""
    if request.prompt_token_ids:
        ids = list(request.prompt_token_ids)
        bad = next((i for i in ids if i >= engine.vocab_size), None)
        if bad is not None:
            raise OrchError("INVALID_ARGUMENT", f"token id {bad} is outside the vocabulary "
                                                f"({engine.vocab_size})", param="prompt_token_ids")
        return ids
    if request.prompt:
        ids = engine.encode(request.prompt)
    elif request.messages:
        ids = engine.encode_chat([{"role": m.role, "content": m.content,
                                   **({"name": m.name} if m.name else {})}
                                  for m in request.messages])
    else:
        ids = []
    if not ids:
        raise OrchError("INVALID_ARGUMENT", "the prompt is empty", param="prompt")
    return ids


def token_budget(context_length: int, prompt_len: int, max_tokens: int) -> int:
    """Tokens the job may generate; max_tokens 0 means up to the context's end."""
    room = context_length - prompt_len
    if room <= 0 or max_tokens > room:
        want = f"{prompt_len} prompt tokens" + (f" + {max_tokens} max_tokens" if max_tokens else "")
        raise OrchError("CONTEXT_LENGTH_EXCEEDED",
                        f"{want} exceed the model's context of {context_length}",
                        param="max_tokens" if max_tokens and room > 0 else "prompt")
    return max_tokens or room


def sampling_configs(params: common_pb2.SamplingParams) -> list[SamplingConfig]:
    """One config per choice, validated (the orchestrator checks first; defence in depth)."""
    def opt(name: str, default: float) -> float:
        return getattr(params, name) if params.HasField(name) else default

    temperature, top_p = opt("temperature", 1.0), opt("top_p", 1.0)
    presence, frequency = opt("presence_penalty", 0.0), opt("frequency_penalty", 0.0)
    checks = [
        ("temperature", math.isfinite(temperature) and temperature >= 0, "must be >= 0"),
        ("top_p", math.isfinite(top_p) and 0 < top_p <= 1, "must be in (0, 1]"),
        ("presence_penalty", math.isfinite(presence) and -2 <= presence <= 2, "must be in [-2, 2]"),
        ("frequency_penalty", math.isfinite(frequency) and -2 <= frequency <= 2,
         "must be in [-2, 2]"),
        ("top_logprobs", params.top_logprobs <= MAX_TOP_LOGPROBS, f"must be <= {MAX_TOP_LOGPROBS}"),
        ("n", params.n <= MAX_CHOICES, f"must be <= {MAX_CHOICES}"),
    ]
    for name, ok, why in checks:
        if not ok:
            raise OrchError("INVALID_ARGUMENT", f"{name} {why}", param=name)
    seed = params.seed if params.HasField("seed") else 0
    return [SamplingConfig(seed=(seed + i) & 0xFFFF_FFFF_FFFF_FFFF, temperature=temperature,
                           top_p=top_p, top_k=int(opt("top_k", 0)), presence_penalty=presence,
                           frequency_penalty=frequency, logprobs=params.logprobs,
                           top_logprobs=params.top_logprobs if params.logprobs else 0)
            for i in range(max(1, params.n))]


async def execute(engine: Engine, request: worker_pb2.ExecuteRequest, control: Control,
                  model_ref: str) -> AsyncIterator[worker_pb2.ExecuteResponse]:
    """Run the request; yields ExecuteResponse events in the documented order."""
    stats = _Stats()  # time to first token includes tokenizing the prompt
    try:
        ids = prompt_ids(engine, request)
        budget = token_budget(engine.context_length, len(ids), request.sampling.max_tokens)
        configs = sampling_configs(request.sampling)
    except OrchError as err:
        yield _error(err)
        return
    yield worker_pb2.ExecuteResponse(started=events_pb2.JobStarted(
        prompt_tokens=len(ids), model_ref=model_ref, attempt=request.attempt,
        seed=configs[0].seed))
    for index, cfg in enumerate(configs):
        choice = _Choice(engine, ids, cfg, index, budget, list(request.sampling.stop), control)
        async for event in choice.run(stats):
            yield event
        if choice.failed:
            return
        if index == len(configs) - 1:
            yield worker_pb2.ExecuteResponse(metrics=stats.metrics())
        yield worker_pb2.ExecuteResponse(end=events_pb2.JobEnd(
            finish_reason=choice.finish_reason, choice_index=index,
            usage=common_pb2.Usage(prompt_tokens=len(ids), completion_tokens=len(choice.token_ids),
                                   total_tokens=len(ids) + len(choice.token_ids)),
            proof=common_pb2.ProofRecord(
                seed=cfg.seed, model_ref=model_ref, model_digest=engine.digest,
                engine=engine.name, engine_version=engine.version, device=engine.device,
                token_hash=token_hash(choice.token_ids), token_count=len(choice.token_ids))))


class _Choice:
    """One sample: the token loop with stop strings, limits, cancel and deadline."""

    def __init__(self, engine: Engine, prompt: list[int], cfg: SamplingConfig, index: int,
                 budget: int, stop: list[str], control: Control):
        self.engine, self.prompt, self.cfg, self.index = engine, prompt, cfg, index
        self.budget, self.control = budget, control
        self.text = TextStream(engine.decode, prompt, stop)
        self.token_ids: list[int] = []
        self.finish_reason = "length"  # unless eos or a stop string ends it
        self.failed = False
        self._pending: list[int] = []
        self._logprobs: list[events_pb2.TokenLogprobs] = []

    def _tokens(self, text: str) -> worker_pb2.ExecuteResponse:
        event = events_pb2.JobTokens(text=text, token_ids=self._pending,
                                     logprobs=self._logprobs, choice_index=self.index)
        self._pending, self._logprobs = [], []
        return worker_pb2.ExecuteResponse(tokens=event)

    async def run(self, stats: _Stats) -> AsyncIterator[worker_pb2.ExecuteResponse]:
        error = self.control.check()  # cancelled between choices?
        if error is None:
            try:
                async with aclosing(self.engine.generate(self.prompt, self.cfg)) as steps:
                    while (step := await self.control.next_step(steps)) is not None:
                        if error := self.control.check():
                            break
                        if step.eos:
                            self.finish_reason = "stop"
                            break
                        stats.token()
                        self._take(step)
                        delta = self.text.add(step.token_id)
                        if self.text.stopped:
                            self.finish_reason = "stop"
                            yield self._tokens(delta)
                            break
                        if delta:
                            yield self._tokens(delta)
                        if len(self.token_ids) >= self.budget:
                            break
            except Interrupted as stop:  # cancelled, or past the deadline, mid-step
                error = stop.error
            except Exception as exc:  # noqa: BLE001 - an engine failure ends this job only
                error = OrchError("ENGINE_ERROR", f"engine failed: {' '.join(str(exc).split())}")
        if error is not None:
            self.failed = True
            yield _error(error)
            return
        tail = self.text.finish()
        if tail or self._pending:
            yield self._tokens(tail)

    def _take(self, step) -> None:
        previous = self.token_ids[-1] if self.token_ids else self.prompt[-1]
        self.token_ids.append(step.token_id)
        self._pending.append(step.token_id)
        if self.cfg.logprobs:
            text = self.engine.token_text
            self._logprobs.append(events_pb2.TokenLogprobs(
                token=text(step.token_id, previous), logprob=step.logprob or 0.0,
                top=[events_pb2.TokenLogprob(token=text(t, previous), logprob=lp)
                     for t, lp in step.top]))
