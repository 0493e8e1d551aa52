"""Serving shared by chat and text completions: request -> JobSpec -> Generate ->
an OpenAI response, streamed (SSE) or whole.

The endpoint-specific shapes (a chat `message`/`delta` versus a completion `text`,
the two logprobs layouts) come from a `Flavor`; everything about the job's events,
errors and cancellation is here, once.

Cancellation: the job lives as long as its Generate call. When the HTTP client goes
away, streamed or not, the call is cancelled and the orchestrator cancels the job
(unless the request said `detach`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Protocol

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from llama_orch.v1 import common_pb2, events_pb2

from common import log
from common.errors import OrchError
from gateway import sse
from gateway.errors import error_body
from gateway.middleware import caller_of
from gateway.openai.outcome import Outcome
from gateway.openai.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    SamplingFields,
)
from gateway.orchestrator_client import JobEvents, OrchestratorClient

GenRequest = ChatCompletionRequest | CompletionRequest

_PRIORITY = {"interactive": common_pb2.PRIORITY_INTERACTIVE, "batch": common_pb2.PRIORITY_BATCH}
# The contract knows system, user and assistant; "developer" is OpenAI's newer "system".
_ROLE = {"developer": "system"}
_OPTIONAL = ("temperature", "top_p", "top_k", "seed", "presence_penalty", "frequency_penalty")


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
        logprobs=req.wants_logprobs, top_logprobs=req.top_logprob_count)
    for name in _OPTIONAL:
        # Unset stays unset, so the orchestrator's defaults apply and it records a seed.
        if (value := getattr(req, name)) is not None:
            setattr(sampling, name, value)
    return common_pb2.JobSpec(model=req.model, sampling=sampling, priority=_PRIORITY[req.priority],
                              detach=req.detach, user=req.user or "", **input)


async def serve(request: Request, req: GenRequest, spec: common_pb2.JobSpec,
                flavor: Flavor) -> Response:
    client: OrchestratorClient = request.app.state.orchestrator
    events = await client.generate(spec, caller_of(request),
                                   idempotency_key=_idempotency_key(request))
    # From here on the job is admitted: errors are the job's, not the request's.
    if req.stream:
        return sse.EventStreamResponse(_stream(request, events, req, flavor))
    try:
        outcome = await _until_disconnect(request, _collect(request, events, req))
    finally:
        events.cancel()
    return JSONResponse(_whole(outcome, req, flavor))


async def _collect(request: Request, events: JobEvents, req: GenRequest) -> Outcome:
    outcome = Outcome(events.first, req.choices)
    try:
        async for event in events:
            outcome.add(event)
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


async def _stream(request: Request, events: JobEvents, req: GenRequest,
                  flavor: Flavor) -> AsyncGenerator[str, None]:
    """The SSE body. Its `finally` cancels the call: on a normal end that is a no-op,
    on a client disconnect (EventStreamResponse closes us) it stops the job."""
    outcome = Outcome(events.first, req.choices)
    head: dict[str, Any] = {"id": flavor.id_prefix + outcome.job_id,
                            "object": flavor.chunk_object, "created": outcome.created,
                            "model": req.model, "system_fingerprint": None}
    # With include_usage every chunk says "usage": null; the usage chunk comes last.
    tail = {"usage": None} if req.include_usage else {}

    def chunk(choice: dict[str, Any]) -> str:
        return sse.data({**head, "choices": [choice], **tail})

    try:
        for index in range(req.choices):
            if (opening := flavor.opening(index)) is not None:
                yield chunk(opening)
        async for event in events:
            added = outcome.add(event)
            if added is None:
                continue
            choice, offset = added
            if event.HasField("tokens"):
                logprobs = (flavor.logprobs(event.tokens.logprobs, offset)
                            if req.wants_logprobs else None)
                yield chunk(flavor.delta(choice.index, event.tokens.text, logprobs))
            else:
                head["system_fingerprint"] = outcome.fingerprint
                yield chunk(flavor.finish(choice.index, choice.finish_reason or "stop"))
        outcome.check_done()
        if req.include_usage:
            yield sse.data({**head, "choices": [], "usage": outcome.usage()})
        yield sse.DONE
    except OrchError as err:
        yield _stream_error(request, err)
        yield sse.DONE
    except Exception as exc:  # a bug here must still end the stream the OpenAI way
        log.emit("gateway", "stream.crashed", f"{type(exc).__name__}: {exc}", level="error",
                 correlation_id=caller_of(request).correlation_id)
        yield _stream_error(request, OrchError("INTERNAL", "internal gateway error"))
        yield sse.DONE
    finally:
        events.cancel()
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


def _idempotency_key(request: Request) -> str:
    key = request.headers.get("idempotency-key", "")
    return key if key.isascii() and len(key) <= 256 else ""


def _log_divergences(outcome: Outcome, correlation_id: str) -> None:
    for d in outcome.divergences:
        log.emit("gateway", "job.diverged", d.message, level="warning",
                 correlation_id=correlation_id, job_id=outcome.job_id, token_index=d.token_index)
    outcome.divergences.clear()
