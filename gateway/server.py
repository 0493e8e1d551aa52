"""The HTTP server: uvicorn (h11) with every request read bounded in time.

uvicorn bounds the idle time between keep-alive requests (`timeout_keep_alive`) but
not the time a request takes to arrive: a client that opens connections and sends its
headers, or its body, a byte at a time (slow loris) holds each connection forever.
`BoundedH11Protocol` closes such connections, as Go's net/http does with
ReadHeaderTimeout and ReadTimeout:

    headers   from the connection's start, or the first byte after a keep-alive idle,
              until the end of the headers: `read_header_timeout_s` (10 s)
    request   from the same start until the end of the body: `read_timeout_s` (60 s)

When a deadline passes before a response has started, the client gets a 408 with an
OpenAI error body (code `request_timeout`) and the connection is closed; otherwise it
is just closed. A route still waiting for the body then sees the client go away
(gateway.body). Other connections are not affected: each has its own timers.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from common import log

READ_HEADER_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0


class BoundedH11Protocol(H11Protocol):
    """H11Protocol with read deadlines (see the module docstring); the two timeouts are
    class attributes, set by `protocol(...)`."""

    read_header_timeout_s = READ_HEADER_TIMEOUT_S
    read_timeout_s = READ_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._phase = ""  # "", "headers" or "body": what the timer is waiting for
        self._started = 0.0  # when the request in progress began to arrive

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._track()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._track()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._track()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop()
        super().connection_lost(exc)

    def _track(self) -> None:
        """Arm, move or stop the deadline for what the client is sending now."""
        if self.transport is None or self.transport.is_closing():
            return self._stop()
        state = self.conn.their_state
        if state is h11.IDLE:
            if self.timeout_keep_alive_task is not None:
                return self._stop()  # idle between requests: uvicorn's keep-alive bounds it
            if self._phase != "headers":
                self._started = time.monotonic()
                self._arm("headers", self.read_header_timeout_s)
        elif state is h11.SEND_BODY:
            if self._phase != "body":
                if self._phase != "headers":  # the headers came in one read
                    self._started = time.monotonic()
                self._arm("body", self._started + self.read_timeout_s - time.monotonic())
        else:
            self._stop()

    def _arm(self, phase: str, delay: float) -> None:
        self._stop()
        self._phase = phase
        self._timer = self.loop.call_later(max(0.0, delay), self._expired)

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._phase = None, ""

    def _expired(self) -> None:
        phase, self._timer, self._phase = self._phase, None, ""
        if self.transport.is_closing():
            return
        partial = phase == "body" or bool(self.conn.trailing_data[0])
        answered = phase == "body" and self.cycle is not None and self.cycle.response_started
        if partial and not answered:
            if self.cycle is not None and phase == "body":
                self.cycle.response_started = True  # the route can no longer answer
            self.transport.write(_timeout_response(phase))
        if partial:
            log.emit("gateway", "http.read_timeout", f"the request's {phase} did not arrive "
                     "in time; connection closed", level="warning",
                     client=":".join(map(str, self.client or ())), phase=phase)
        self.transport.close()


def _timeout_response(phase: str) -> bytes:
    body = json.dumps({"error": {"message": f"the request's {phase} did not arrive in time",
                                 "type": "invalid_request_error", "param": None,
                                 "code": "request_timeout"}}).encode()
    head = ("HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode() + body


def protocol(read_header_timeout_s: float = READ_HEADER_TIMEOUT_S,
             read_timeout_s: float = READ_TIMEOUT_S) -> type[BoundedH11Protocol]:
    """The protocol class with these deadlines."""
    return type("BoundedH11Protocol", (BoundedH11Protocol,), {
        "read_header_timeout_s": read_header_timeout_s, "read_timeout_s": read_timeout_s})


def config(app: Any, *, read_header_timeout_s: float = READ_HEADER_TIMEOUT_S,
           read_timeout_s: float = READ_TIMEOUT_S, **kwargs: Any) -> uvicorn.Config:
    """The uvicorn configuration the gateway runs with (kwargs: more uvicorn settings).
    Our own JSON lines replace uvicorn's access log and formatters."""
    return uvicorn.Config(app, http=protocol(read_header_timeout_s, read_timeout_s),
                          log_config=None, access_log=False, lifespan="on", **kwargs)
