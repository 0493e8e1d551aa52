"""The edge of every request: correlation id in and out, counting and an access log;
HEAD answered as GET; and, when configured, CORS.

Pure ASGI middlewares (not BaseHTTPMiddleware) so that streamed responses pass
through untouched and `receive` still reports a client's disconnect to the route.
The order, outermost first (gateway.app):

    CORSMiddleware   only with cors_origins; answers preflights itself (no API key
                     needed, no route reached) and marks every answer, errors included
    EdgeMiddleware   correlation id, metrics, access log, crash -> 500
    HeadMiddleware   HEAD runs the GET route and drops the body
    the routes       bodies (size limit, JSON, model) are read by each route (gateway.body)
"""

from __future__ import annotations

import re
import time
import uuid

from fastapi import Request
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common import log
from common.errors import InvalidInput
from gateway.errors import crash_response
from gateway.metrics import COMPONENT, GatewayMetrics, route_of
from gateway.orchestrator_client import Caller

HEADER = "x-correlation-id"
# gRPC metadata takes printable ASCII; anything else (or anything huge) is replaced
# by a fresh id, which the response header then tells the client.
_VALID_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
# Scrapes and probes would drown the access log.
_QUIET = frozenset({"/metrics", "/healthz"})


def correlation_id(header: str | None) -> str:
    if header and _VALID_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


# The orchestrator refuses keys over 256 characters; printable ASCII keeps the header
# byte-for-byte what the client sent (non-ASCII header bytes decode ambiguously).
_KEY = re.compile(r"[\x20-\x7e]{1,256}")


def idempotency_key(request: Request) -> str:
    """The Idempotency-Key header ("" when absent); a bad one is a 400, never ignored:
    a client that asked for exactly-once submission must not silently lose it."""
    key = request.headers.get("idempotency-key", "").strip(" \t")
    if key and not _KEY.fullmatch(key):
        raise InvalidInput("INVALID_ARGUMENT", "Idempotency-Key must be 1 to 256 printable "
                           "ASCII characters", param="Idempotency-Key")
    return key


def caller_of(request: Request) -> Caller:
    """The Caller for RPCs made on behalf of this HTTP request."""
    auth = request.headers.get("authorization", "")
    return Caller(correlation_id=request.state.correlation_id,
                  authorization=auth if auth.isascii() and auth.isprintable() else "")


class EdgeMiddleware:
    """Stamps `request.state.correlation_id`, echoes it as X-Correlation-Id on every
    response (crashes included), and counts and logs each request once it ends."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        raw = headers.get(HEADER.encode())
        cid = correlation_id(raw.decode("latin-1") if raw else None)
        scope.setdefault("state", {})["correlation_id"] = cid
        status, status_sent = 500, False

        async def send_with_id(message: Message) -> None:
            nonlocal status, status_sent
            if message["type"] == "http.response.start":
                status, status_sent = message["status"], True
                MutableHeaders(scope=message)[HEADER] = cid
            await send(message)

        started = time.perf_counter()
        self.metrics.in_flight.labels(COMPONENT).inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if status_sent:
                raise  # mid-response: nothing to answer with; the server closes it
            await crash_response(exc, cid)(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight.labels(COMPONENT).dec()
            elapsed_ms = (time.perf_counter() - started) * 1000
            self.metrics.request_done(scope, status, elapsed_ms)
            if scope.get("path") not in _QUIET:
                log.emit("gateway", "http.request", level="info" if status < 500 else "warning",
                         correlation_id=cid, method=scope.get("method"), route=route_of(scope),
                         status=status, duration_ms=round(elapsed_ms, 1))


class HeadMiddleware:
    """HEAD on a path is its GET without the body, as HTTP says it must be: FastAPI's
    routes answer GET only. The headers are GET's (Content-Length included). A stream
    ends after its headers: the server then tells the route the client is gone."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        ended = False

        async def send_headers_only(message: Message) -> None:
            nonlocal ended
            if message["type"] == "http.response.start":
                await send(message)
            elif not ended:
                ended = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        # A copy, so the server and the access log still see HEAD.
        as_get = {**scope, "method": "GET"}
        try:
            await self.app(as_get, receive, send_headers_only)
        finally:
            # The edge labels its metrics with the route the router matched.
            if "route" in as_get:
                scope["route"] = as_get["route"]
