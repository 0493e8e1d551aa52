"""Server-sent events, in the two framings the gateway speaks.

OpenAI's (/v1): `data: <json>\\n\\n` per chunk, then `data: [DONE]\\n\\n`; an error
mid-stream is `data: {"error": {...}}` (the openai SDK raises APIError on it),
followed by [DONE] so plain SSE readers also stop cleanly.

The native one (/v2): named, numbered events, so an EventSource can dispatch on the
kind and resume with Last-Event-ID:

    id: 3
    event: tokens
    data: {"job_id":"...","seq":3,...}

and `: keep-alive` comment lines while the stream is idle, so proxies keep it open.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

DONE = "data: [DONE]\n\n"

# One encoder for every event: json.dumps with options builds a new encoder per call,
# which is a measurable part of each streamed token's cost.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def compact(payload: Any) -> str:
    """Compact JSON, UTF-8 kept as is (the encoding of every SSE payload)."""
    return _encode(payload)


def data(payload: Mapping[str, Any]) -> str:
    """One SSE event carrying a JSON object (compact, UTF-8 kept as is)."""
    return "data: " + _encode(payload) + "\n\n"


def event(name: str, payload: Mapping[str, Any], id: int | None = None) -> str:
    """One named SSE event; `id` (when given) becomes the client's Last-Event-ID.
    Event names are fixed identifiers and compact JSON has no raw newlines, so each
    field is one line."""
    head = f"id: {id}\n" if id is not None else ""
    return f"{head}event: {name}\n" + data(payload)


def comment(text: str) -> str:
    """A comment line: ignored by SSE clients, but traffic for proxies and sockets."""
    return f": {text}\n\n"


KEEP_ALIVE = comment("keep-alive")


class EventStreamResponse(Response):
    """A text/event-stream response over an async generator of SSE strings.

    Contract: when the client goes away, the generator is closed at once, even while
    it is waiting for its next upstream event (Starlette only notices a disconnect on
    the next write under ASGI spec 2.4). Closing runs the generator's `finally`, which
    is where the caller cancels the upstream gRPC call.
    """

    media_type = "text/event-stream"

    def __init__(self, events: AsyncGenerator[str, None], headers: Mapping[str, str] | None = None):
        self.events = events
        self.status_code = 200
        self.background = None
        # no-cache and no proxy buffering: tokens must reach the client as they come.
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no",
                           **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tasks:
                async def stream() -> None:
                    await self._stream(send)
                    tasks.cancel_scope.cancel()

                tasks.start_soon(stream)
                while (await receive())["type"] != "http.disconnect":
                    pass
                tasks.cancel_scope.cancel()
        finally:
            await self.events.aclose()

    async def _stream(self, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            async for chunk in self.events:
                await send({"type": "http.response.body", "body": chunk.encode(),
                            "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client is gone; the disconnect listener ends the response
