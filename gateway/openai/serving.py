"""Serving shared by chat and text completions: request -> JobSpec -> Generate ->
an OpenAI response, streamed (SSE) or whole.

The endpoint-specific shapes (a chat `message`/`delta` versus a completion `text`,
the two logprobs layouts) come from a `Flavor`; everything about the job's events,
errors and cancellation is here, once.

A request is one job, or for a completion with several prompts one job per prompt,
all admitted before the response starts (a refusal of any is the request's error) and
merged into one response whose choice `i * n + j` is choice j of prompt i.

Cancellation: a job lives as long as its Generate call. When the HTTP client goes
away, streamed or not, the calls are cancelled and the orchestrator cancels the jobs
(unless the request said `detach`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any, Protocol

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from llama_orch.v1 import common_pb2, events_pb2

from common import log
from common.errors import InvalidInput, OrchError
from gateway import sse
from gateway.errors import error_body
from gateway.middleware import caller_of, idempotency_key
from gateway.openai.outcome import Outcome
from gateway.openai.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    SamplingFields,
)
from gateway.orchestrator_client import Caller, JobEvents, OrchestratorClient

GenRequest = ChatCompletionRequest | CompletionRequest

_PRIORITY = {"interactive": common_pb2.PRIORITY_INTERACTIVE, "batch": common_pb2.PRIORITY_BATCH}
# The contract knows system, user and assistant; "developer" is OpenAI's newer "system".
_ROLE = {"developer": "system"}
_OPTIONAL = ("temperature", "top_p", "top_k", "seed", "presence_penalty", "frequency_penalty")
_MAX_KEY = 256  # the orchestrator's limit on an idempotency key


class Flavor(Protocol):
    """How one endpoint shapes its objects; dicts are OpenAI wire objects."""

    object: str
    chunk_object: str
    id_prefix: str

    def opening(self, index: int) -> dict[str, Any] | None: ...
    def delta(self, index: int, text: str, logprobs: dict[str, Any] | None) -> dict[str, Any]: ...
    def finish(self, index: int, reason: str) -> dict[str, Any]: ...
    def choice(self, index: int, text: str, logprobs: dict[str, Any] | None,
               reason: str | None) -> dict[str, Any]: ...
    def logprobs(self, entries: Sequence[events_pb2.TokenLogprobs],
                 offset: int) -> dict[str, Any]: ...


def chat_messages(messages: Sequence[ChatMessage]) -> common_pb2.ChatMessages:
    """Validated chat messages as the contract's ChatMessages (JobSpec.chat)."""
    return common_pb2.ChatMessages(messages=[
        common_pb2.ChatMessage(role=_ROLE.get(m.role, m.role), content=m.content, name=m.name or "")
        for m in messages])


def job_spec(req: SamplingFields, **input: Any) -> common_pb2.JobSpec:
    """The JobSpec for a validated request (OpenAI or /v2); `input` is prompt= or chat=."""
    sampling = common_pb2.SamplingParams(
        max_tokens=req.length_limit or 0, stop=req.stop, n=req.choices,
        logprobs=req.wants_logprobs, top_logprobs=req.top_logprob_count,
        **_optional_sampling(req))
    return common_pb2.JobSpec(model=req.model, sampling=sampling, priority=_PRIORITY[req.priority],
                              detach=req.detach, user=req.user or "", **input)


def _optional_sampling(req: SamplingFields) -> dict[str, Any]:
    """The optional sampling fields the request sets. Unset stays unset, so the
    orchestrator's defaults apply and it records a seed."""
    values = {name: value for name in _OPTIONAL if (value := getattr(req, name)) is not None}
    if values.get("top_p") == 0:
        # OpenAI's top_p 0 keeps only the most likely token; the contract's top_p is
        # (0, 1], and top_k 1 says the same (whatever top_k the request gave).
        del values["top_p"]
        values["top_k"] = 1
    return values


async def serve(request: Request, req: GenRequest, specs: Sequence[common_pb2.JobSpec],
                flavor: Flavor) -> Response:
    """Run `specs` (one job, or one per prompt) and answer with their choices."""
    client: OrchestratorClient = request.app.state.orchestrator
    caller = caller_of(request)
    await check_engine_support(client, req, caller)
    streams = await _generate_all(client, specs, caller, idempotency_key(request))
    # From here on the jobs are admitted: errors are the jobs', not the request's.
    if req.stream:
        return sse.EventStreamResponse(_stream(request, streams, req, flavor))
    try:
        outcome = await _until_disconnect(request, _collect(request, streams, req))
    finally:
        _cancel(streams)
    return JSONResponse(_whole(outcome, req, flavor))


async def check_engine_support(client: OrchestratorClient, req: SamplingFields,
                               caller: Caller) -> None:
    """Refuse, before any job exists, a parameter the model's engine would ignore.

    The orchestrator says what each model's engine honours (ModelInfo.supports_*); only
    presence/frequency penalties differ between engines today (hf and trtllm apply
    them, the simulator does not). The lookup is made only for a request that sets a
    penalty, so other requests pay nothing for it."""
    param = req.penalised
    if param is None:
        return
    info = await client.get_model(req.model, caller)
    if not info.supports_penalties:
        raise InvalidInput("UNSUPPORTED_PARAMETER",
                           f"{param}: model {req.model!r} runs on an engine "
                           f"({info.engine or 'unknown'}) that does not apply presence or "
                           "frequency penalties; leave them out or at 0", param=param)


async def _generate_all(client: OrchestratorClient, specs: Sequence[common_pb2.JobSpec],
                        caller: Caller, key: str) -> list[JobEvents]:
    """Admit every job, or none: if one is refused, the others are cancelled and the
    first refusal (in prompt order) is the answer."""
    if len(specs) == 1:
        return [await client.generate(specs[0], caller, idempotency_key=key, coalesce=True)]
    # One key per job, so that a retried request finds each of its jobs again.
    keys = [f"{key}#{i}" if key else "" for i in range(len(specs))]
    if any(len(k) > _MAX_KEY for k in keys):
        raise InvalidInput("INVALID_ARGUMENT", f"Idempotency-Key: at most {_MAX_KEY - 3} "
                           "characters with a list of prompts (each job adds #<i>)",
                           param="Idempotency-Key")
    results = await asyncio.gather(*(client.generate(spec, caller, idempotency_key=k,
                                                     coalesce=True)
                                     for spec, k in zip(specs, keys)), return_exceptions=True)
    admitted = [r for r in results if isinstance(r, JobEvents)]
    for result in results:
        if isinstance(result, BaseException):
            _cancel(admitted)
            raise result
    return admitted


def _cancel(streams: Sequence[JobEvents]) -> None:
    for s in streams:
        s.cancel()


async def _merged(streams: Sequence[JobEvents]) -> AsyncIterator[tuple[int, events_pb2.JobEvent]]:
    """(job index, event) from all streams as they come; each stream's order is kept.
    The first failure ends the merge with its error."""
    if len(streams) == 1:
        async for event in streams[0]:
            yield 0, event
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(job: int, events: JobEvents) -> None:
        try:
            async for event in events:
                queue.put_nowait((job, event, None))
        except Exception as exc:
            queue.put_nowait((job, None, exc))
            return
        queue.put_nowait((job, None, None))

    pumps = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(pumps)
        while running:
            job, event, exc = await queue.get()
            if exc is not None:
                raise exc
            if event is None:
                running -= 1
                continue
            yield job, event
    finally:
        for p in pumps:
            p.cancel()


async def _collect(request: Request, streams: Sequence[JobEvents], req: GenRequest) -> Outcome:
    outcome = Outcome([s.first for s in streams], req.choices, whole=True)
    try:
        async with contextlib.aclosing(_merged(streams)) as events:
            async for job, event in events:
                outcome.add(event, job)
    finally:
        _log_divergences(outcome, caller_of(request).correlation_id)
    outcome.check_done()
    return outcome


def _whole(outcome: Outcome, req: GenRequest, flavor: Flavor) -> dict[str, Any]:
    choices = [
        flavor.choice(c.index, c.text,
                      flavor.logprobs(c.logprobs, 0) if req.wants_logprobs else None,
                      c.finish_reason)
        for c in sorted(outcome.choices.values(), key=lambda c: c.index)]
    return {"id": flavor.id_prefix + outcome.job_id, "object": flavor.object,
            "created": outcome.created, "model": req.model,
            "system_fingerprint": outcome.fingerprint, "choices": choices,
            "usage": outcome.usage()}


async def _stream(request: Request, streams: Sequence[JobEvents], req: GenRequest,
                  flavor: Flavor) -> AsyncGenerator[str, None]:
    """The SSE body. Its `finally` cancels the calls: on a normal end that is a no-op,
    on a client disconnect (EventStreamResponse closes us) it stops the jobs."""
    outcome = Outcome([s.first for s in streams], req.choices)
    head: dict[str, Any] = {"id": flavor.id_prefix + outcome.job_id,
                            "object": flavor.chunk_object, "created": outcome.created,
                            "model": req.model, "system_fingerprint": None}
    # With include_usage every chunk says "usage": null; the usage chunk comes last.
    tail = {"usage": None} if req.include_usage else {}
    # Every chunk is head + one choice + tail: the head and tail are encoded once (again
    # only when the fingerprint arrives), each token encodes just its choice.
    suffix = "]," + sse.compact(tail)[1:] if tail else "]}"
    frame = {"prefix": ""}

    def reframe() -> None:
        frame["prefix"] = "data: " + sse.compact(head)[:-1] + ',"choices":['

    def chunk(choice: dict[str, Any]) -> str:
        return frame["prefix"] + sse.compact(choice) + suffix + "\n\n"

    reframe()
    # A choice's finish chunk waits for what comes next (another choice's token, or the
    # end: usage and [DONE]) and leaves with it: one write to the client where there
    # were three or four. A job's end is its last event, so nothing waits for long.
    finished = ""

    try:
        for index in sorted(outcome.choices):
            if (opening := flavor.opening(index)) is not None:
                yield chunk(opening)
        async with contextlib.aclosing(_merged(streams)) as events:
            async for job, event in events:
                added = outcome.add(event, job)
                if added is None:
                    continue
                choice, offset = added
                if event.HasField("tokens"):
                    logprobs = (flavor.logprobs(event.tokens.logprobs, offset)
                                if req.wants_logprobs else None)
                    yield finished + chunk(flavor.delta(choice.index, event.tokens.text, logprobs))
                    finished = ""
                else:
                    if head["system_fingerprint"] != outcome.fingerprint:
                        head["system_fingerprint"] = outcome.fingerprint
                        reframe()
                    finished += chunk(flavor.finish(choice.index, choice.finish_reason or "stop"))
        outcome.check_done()
        usage = (sse.data({**head, "choices": [], "usage": outcome.usage()})
                 if req.include_usage else "")
        yield finished + usage + sse.DONE
    except OrchError as err:
        yield finished + _stream_error(request, err) + sse.DONE
    except Exception as exc:  # a bug here must still end the stream the OpenAI way
        log.emit("gateway", "stream.crashed", f"{type(exc).__name__}: {exc}", level="error",
                 correlation_id=caller_of(request).correlation_id)
        crashed = OrchError("INTERNAL", "internal gateway error")
        yield finished + _stream_error(request, crashed) + sse.DONE
    finally:
        _cancel(streams)
        _log_divergences(outcome, caller_of(request).correlation_id)


def _stream_error(request: Request, err: OrchError) -> str:
    request.app.state.metrics.stream_error(request.scope, err.code)
    log.emit("gateway", "stream.failed", err.message, level="warning",
             correlation_id=caller_of(request).correlation_id, error_code=err.code)
    return sse.data(error_body(err))


async def _until_disconnect(request: Request, work: Any) -> Outcome:
    """Await `work`, but give up (cancelling it) if the client disconnects first.

    The body has been read, so the next ASGI message can only be http.disconnect.
    """
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})  # let its cleanup run before anything else
    if task.cancelled():
        raise OrchError("CANCELLED", "client disconnected before the job finished")
    return task.result()


def _log_divergences(outcome: Outcome, correlation_id: str) -> None:
    for d in outcome.divergences:
        log.emit("gateway", "job.diverged", d.message, level="warning",
                 correlation_id=correlation_id, job_id=outcome.job_id, token_index=d.token_index)
    outcome.divergences.clear()
