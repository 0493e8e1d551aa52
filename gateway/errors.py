"""Every gateway failure leaves as an OpenAI error body, mapped from one stable code.

    {"error": {"message": str, "type": str, "param": str | null, "code": str}}

`code` is the stable ErrorCode (errors.proto) in lower case, as OpenAI spells its own
codes ("model_not_found", "context_length_exceeded"). Errors raised by the gateway
itself and errors recovered from the orchestrator (`OrchError.from_rpc_error`, or an
`error` event) go through the same table:

    stable code                                  HTTP  type
    -------------------------------------------  ----  ---------------------
    INVALID_ARGUMENT, CONTEXT_LENGTH_EXCEEDED,   400   invalid_request_error
      UNSUPPORTED_PARAMETER, INVALID_MODEL_REF,
      RESUME_OUT_OF_RANGE, ENGINE_OPTION_REJECTED,
      POLICY_INVALID
    UNAUTHENTICATED                              401   authentication_error
    PERMISSION_DENIED, POLICY_FORBIDDEN          403   permission_error
    MODEL_NOT_FOUND, NOT_FOUND,                  404   invalid_request_error
      REVISION_NOT_FOUND
    IDEMPOTENCY_CONFLICT                         409   invalid_request_error
    PAYLOAD_TOO_LARGE                            413   invalid_request_error
    RATE_LIMITED                                 429   rate_limit_error
    QUOTA_EXHAUSTED                              429   insufficient_quota
    CANCELLED                                    499   cancelled
    UNAVAILABLE, POOL_UNAVAILABLE, WORKER_BUSY,  503   server_error
      WORKER_NOT_READY, WORKER_CRASHED,
      ENGINE_UNAVAILABLE, INSUFFICIENT_MEMORY
    DEADLINE_EXCEEDED                            504   timeout
    anything else (INTERNAL, ENGINE_ERROR,       500   server_error
      RETRIES_EXHAUSTED, MODEL_UNSERVABLE, ...)

Why these choices: 499 is nginx's "client closed request"; a job cancelled while a
caller waited for it (by CancelJob, an operator or a disconnect) is neither the
caller's fault nor the server's, and a 4xx keeps the OpenAI SDK from retrying it.
503 says that trying again later may well work (capacity, a crashed worker); 500
says something is broken. 504 "timeout": the job's deadline passed.

Where the error appears: before a response starts (bad input, admission refused by
the orchestrator, any failure of a non-streamed request) it is the HTTP status and
body above. Once a stream has begun it is an SSE event `data: {"error": {...}}` with
the same body, then `data: [DONE]`. HTTP errors that never reach a route (unknown
path 404, wrong method 405 with an `Allow` header listing every method of the path)
use the same body, codes "not_found" and "method_not_allowed"; so does a request that
does not arrive in time (408 "request_timeout", written by gateway.server). Unknown
request fields are not errors: they are ignored.
"""

from __future__ import annotations

import traceback
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from common import log
from common.errors import InvalidInput, OrchError

_INVALID = (400, "invalid_request_error")
_UNAVAILABLE = (503, "server_error")
HTTP_STATUS: dict[str, tuple[int, str]] = {
    "INVALID_ARGUMENT": _INVALID,
    "CONTEXT_LENGTH_EXCEEDED": _INVALID,
    "UNSUPPORTED_PARAMETER": _INVALID,
    "INVALID_MODEL_REF": _INVALID,
    "RESUME_OUT_OF_RANGE": _INVALID,
    "ENGINE_OPTION_REJECTED": _INVALID,
    "POLICY_INVALID": _INVALID,
    "UNAUTHENTICATED": (401, "authentication_error"),
    "PERMISSION_DENIED": (403, "permission_error"),
    "POLICY_FORBIDDEN": (403, "permission_error"),
    "MODEL_NOT_FOUND": (404, "invalid_request_error"),
    "NOT_FOUND": (404, "invalid_request_error"),
    "REVISION_NOT_FOUND": (404, "invalid_request_error"),
    "IDEMPOTENCY_CONFLICT": (409, "invalid_request_error"),
    "PAYLOAD_TOO_LARGE": (413, "invalid_request_error"),
    "RATE_LIMITED": (429, "rate_limit_error"),
    "QUOTA_EXHAUSTED": (429, "insufficient_quota"),
    "CANCELLED": (499, "cancelled"),
    "UNAVAILABLE": _UNAVAILABLE,
    "POOL_UNAVAILABLE": _UNAVAILABLE,
    "WORKER_BUSY": _UNAVAILABLE,
    "WORKER_NOT_READY": _UNAVAILABLE,
    "WORKER_CRASHED": _UNAVAILABLE,
    "ENGINE_UNAVAILABLE": _UNAVAILABLE,
    "INSUFFICIENT_MEMORY": _UNAVAILABLE,
    "DEADLINE_EXCEEDED": (504, "timeout"),
}
DEFAULT_STATUS = (500, "server_error")


def status_of(code: str) -> tuple[int, str]:
    """Stable code -> (HTTP status, OpenAI error type)."""
    return HTTP_STATUS.get(code, DEFAULT_STATUS)


def error_body(err: OrchError) -> dict[str, Any]:
    """The OpenAI error object for `err`; also the payload of an SSE error event."""
    _, kind = status_of(err.code)
    return {"error": {"message": err.message, "type": kind, "param": err.param or None,
                      "code": err.code.lower()}}


def error_response(err: OrchError, headers: dict[str, str] | None = None) -> JSONResponse:
    status, _ = status_of(err.code)
    return JSONResponse(error_body(err), status_code=status, headers=headers)


def _correlation_id(request: Request) -> str:
    return getattr(request.state, "correlation_id", "")


async def _on_orch_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OrchError)
    status, _ = status_of(exc.code)
    if status >= 500:
        log.emit("gateway", "request.failed", exc.message, level="warning",
                 correlation_id=_correlation_id(request), error_code=exc.code)
    return error_response(exc)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "NOT_FOUND", 405: "INVALID_ARGUMENT", 413: "PAYLOAD_TOO_LARGE"}.get(
        exc.status_code, "INVALID_ARGUMENT" if exc.status_code < 500 else "INTERNAL")
    body = error_body(OrchError(code, str(exc.detail)))
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        body["error"]["code"] = "method_not_allowed"
        # Starlette names only the methods of the first route on the path.
        headers["Allow"] = ", ".join(_allowed_methods(request))
    return JSONResponse(body, status_code=exc.status_code, headers=headers or None)


def _allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    # Only reachable for path or query parameters: bodies are validated by gateway.body.
    return error_response(InvalidInput("INVALID_ARGUMENT", f"invalid request: {exc}"))


def crash_response(exc: BaseException, correlation_id: str) -> JSONResponse:
    """A bug surfaced as an exception: log it, answer 500 INTERNAL without details."""
    log.emit("gateway", "request.crashed", f"{type(exc).__name__}: {exc}", level="error",
             correlation_id=correlation_id,
             traceback="".join(traceback.format_exception(exc)).strip())
    return error_response(OrchError("INTERNAL", "internal gateway error"))


def install(app: FastAPI) -> None:
    """Route every failure through the table above. Unexpected exceptions are turned
    into `crash_response` by gateway.middleware, which also stamps the correlation id."""
    app.add_exception_handler(OrchError, _on_orch_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
