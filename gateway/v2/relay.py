"""An orchestrator stream (StreamJob, WatchFacts) relayed as native SSE.

Two phases, so that a refusal is an HTTP status whenever it can be:

1. `open_stream` waits for the first message before the response is committed, at
   most `stream_open_wait_s`. What the orchestrator refuses at once (unknown job,
   RESUME_OUT_OF_RANGE, unauthenticated, unreachable) raises here and becomes the
   HTTP status and error body. A stream with nothing to say yet (a queued job, a
   quiet fact stream) is committed when the wait runs out; a proxy must see headers.
2. `relay` then writes each message as an `id:`/`event:`/`data:` block, and a
   `: keep-alive` comment whenever `heartbeat_s` passes without one. A failure after
   commit is an `event: error` block without an `id:` (so the client's
   Last-Event-ID still names the last real event), and the stream ends.

Ending the response (client gone, stream over) cancels the gRPC call and nothing
else: StreamJob and WatchFacts never cancel a job.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any

from fastapi import Request

from common import log
from common.errors import OrchError
from gateway import sse
from gateway.errors import error_body
from gateway.middleware import caller_of
from gateway.orchestrator_client import WAITING, ServerStream

# (SSE text of one message, whether it is the stream's last)
Frame = Callable[[Any], tuple[str, bool]]


async def open_stream(stream: ServerStream, wait_s: float) -> Any:
    """The first message, None if the stream ended empty, or WAITING."""
    try:
        return await stream.next(timeout=wait_s)
    except BaseException:
        stream.cancel()
        raise


async def relay(request: Request, stream: ServerStream, first: Any,
                frame: Frame) -> AsyncGenerator[str, None]:
    heartbeat_s: float = request.app.state.heartbeat_s
    try:
        msg = first
        while msg is not None:
            if msg is WAITING:
                yield sse.KEEP_ALIVE
            else:
                text, last = frame(msg)
                yield text
                if last:
                    return
            msg = await stream.next(timeout=heartbeat_s)
    except OrchError as err:
        yield _error(request, err)
    except Exception as exc:  # a bug here must still end the stream with an error event
        log.emit("gateway", "stream.crashed", f"{type(exc).__name__}: {exc}", level="error",
                 correlation_id=caller_of(request).correlation_id)
        yield _error(request, OrchError("INTERNAL", "internal gateway error"))
    finally:
        stream.cancel()


def _error(request: Request, err: OrchError) -> str:
    request.app.state.metrics.stream_error(request.scope, err.code)
    log.emit("gateway", "stream.failed", err.message, level="warning",
             correlation_id=caller_of(request).correlation_id, error_code=err.code)
    return sse.event("error", error_body(err))
