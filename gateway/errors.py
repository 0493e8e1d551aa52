"""Every gateway failure leaves as an OpenAI error body, mapped from one stable code.

    {"error": {"message": str, "type": str, "param": str | null, "code": str}}

`code` is the stable ErrorCode (errors.proto) in lower case, as OpenAI spells its own
codes ("model_not_found", "context_length_exceeded"), except where OpenAI has its own
name for the same refusal (`OPENAI_CODE`): a missing or bad API key (UNAUTHENTICATED)
is "invalid_api_key", which OpenAI clients and tools know. The stable code itself does
not change (gRPC and the SDKs still see UNAUTHENTICATED). Errors raised by the gateway
itself and errors recovered from the orchestrator (`OrchError.from_rpc_error`, or an
`error` event) go through the same table:

    stable code                                  HTTP  type
    -------------------------------------------  ----  ---------------------
    INVALID_ARGUMENT, CONTEXT_LENGTH_EXCEEDED,   400   invalid_request_error
      UNSUPPORTED_PARAMETER, INVALID_MODEL_REF,
      RESUME_OUT_OF_RANGE, ENGINE_OPTION_REJECTED,
      POLICY_INVALID
    UNAUTHENTICATED                              401   authentication_error
      (code "invalid_api_key")
    PERMISSION_DENIED, POLICY_FORBIDDEN          403   permission_error
    MODEL_NOT_FOUND, NOT_FOUND,                  404   invalid_request_error
      REVISION_NOT_FOUND, DEVICE_NOT_FOUND
    IDEMPOTENCY_CONFLICT, MODEL_PINNED,          409   invalid_request_error
      DEVICE_MASK_OVERLAP
    PAYLOAD_TOO_LARGE                            413   invalid_request_error
    RATE_LIMITED                                 429   rate_limit_error  (+ Retry-After)
    QUOTA_EXHAUSTED                              429   insufficient_quota
    CANCELLED                                    499   cancelled
    UNAVAILABLE, POOL_UNAVAILABLE, WORKER_BUSY,  503   server_error
      WORKER_NOT_READY, WORKER_CRASHED,
      ENGINE_UNAVAILABLE, INSUFFICIENT_MEMORY,
      RAM_BUDGET_EXCEEDED, CACHE_BUDGET_EXCEEDED
    DEADLINE_EXCEEDED                            504   timeout
    anything else (INTERNAL, ENGINE_ERROR,       500   server_error
      RETRIES_EXHAUSTED, MODEL_UNSERVABLE, ...)

and one code of the gateway's own, which errors.proto does not have (`Unimplemented`):

    UNIMPLEMENTED                                501   server_error
      the orchestrator does not implement the RPC yet (gRPC UNIMPLEMENTED; today
      AdminService.DrainPool and the policy RPCs), so a client (the web UI) can tell
      a missing feature from a failure

A RATE_LIMITED refusal carries the orchestrator's hint (gRPC trailing metadata
`retry-after`, whole seconds; orchestrator/ratelimit.py) as the `Retry-After` header.

Why these choices: 499 is nginx's "client closed request"; a job cancelled while a
caller waited for it (by CancelJob, an operator or a disconnect) is neither the
caller's fault nor the server's, and a 4xx keeps the OpenAI SDK from retrying it.
503 says that trying again later may well work (capacity, a crashed worker); 500
says something is broken. 504 "timeout": the job's deadline passed.

Where the error appears: before a response starts (bad input, admission refused by
the orchestrator, any failure of a non-streamed request) it is the HTTP status and
body above. Once a stream has begun it is an SSE event `data: {"error": {...}}` with
the same body, then `data: [DONE]`. HTTP errors that never reach a route (unknown
path 404, wrong method 405 with an `Allow` header listing every method of the path,
HEAD wherever GET is)
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
    "DEVICE_NOT_FOUND": (404, "invalid_request_error"),
    "IDEMPOTENCY_CONFLICT": (409, "invalid_request_error"),
    "MODEL_PINNED": (409, "invalid_request_error"),
    "DEVICE_MASK_OVERLAP": (409, "invalid_request_error"),
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
    "RAM_BUDGET_EXCEEDED": _UNAVAILABLE,
    "CACHE_BUDGET_EXCEEDED": _UNAVAILABLE,
    "DEADLINE_EXCEEDED": (504, "timeout"),
}
# Codes of the gateway's own, beside the stable ones.
GATEWAY_STATUS: dict[str, tuple[int, str]] = {
    "UNIMPLEMENTED": (501, "server_error"),
}
DEFAULT_STATUS = (500, "server_error")
# The body's `code` where OpenAI names the refusal otherwise than stable_code.lower().
OPENAI_CODE: dict[str, str] = {
    "UNAUTHENTICATED": "invalid_api_key",
}


class Unimplemented(OrchError):
    """The orchestrator answered gRPC UNIMPLEMENTED: 501 with code "unimplemented".

    errors.proto has no such stable code (an orchestrator never chooses to answer it;
    its generated base class does), so this error carries the gateway's own code. It
    never travels back over gRPC (`to_detail` would refuse the code)."""

    def __init__(self, message: str):
        super().__init__("INTERNAL", message, retryable=False)
        self.code = "UNIMPLEMENTED"


def status_of(code: str) -> tuple[int, str]:
    """Stable (or gateway) code -> (HTTP status, OpenAI error type)."""
    return HTTP_STATUS.get(code) or GATEWAY_STATUS.get(code, DEFAULT_STATUS)


def error_body(err: OrchError) -> dict[str, Any]:
    """The OpenAI error object for `err`; also the payload of an SSE error event."""
    _, kind = status_of(err.code)
    return {"error": {"message": err.message, "type": kind, "param": err.param or None,
                      "code": OPENAI_CODE.get(err.code, err.code.lower())}}


def retry_headers(err: OrchError) -> dict[str, str]:
    """`Retry-After` for an error that carries the orchestrator's hint (RATE_LIMITED;
    gateway.orchestrator_client sets `retry_after`), else nothing."""
    after = getattr(err, "retry_after", "")
    return {"Retry-After": after} if after else {}


def error_response(err: OrchError, headers: dict[str, str] | None = None) -> JSONResponse:
    status, _ = status_of(err.code)
    return JSONResponse(error_body(err), status_code=status,
                        headers={**retry_headers(err), **(headers or {})} or None)


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
    path = _route_path(request.scope)
    methods: set[str] = set()
    for route in _flat(request.app.router.routes):
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path):
            methods |= getattr(route, "methods", None) or set()
    if "GET" in methods:
        methods.add("HEAD")  # gateway.middleware.HeadMiddleware answers it
    return sorted(methods)


def _flat(routes: Any) -> Any:
    """Every route, those of included routers too: FastAPI keeps each included router
    as one route (`_IncludedRouter`) whose own routes carry the paths and methods."""
    for route in routes:
        candidates = getattr(route, "effective_candidates", None)
        if callable(candidates):
            yield from _flat(candidates())
        else:
            yield route


def _route_path(scope: dict[str, Any]) -> str:
    # As Starlette matches: the path below the app's root_path.
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):][:1] in ("", "/"):
        return path[len(root):]
    return path


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
