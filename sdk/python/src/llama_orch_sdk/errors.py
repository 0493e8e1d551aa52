"""The exception tree, drawn once.

    LlamaOrchError(code, message, param, retryable)
    ├── InvalidRequestError     INVALID_ARGUMENT, CONTEXT_LENGTH_EXCEEDED, INVALID_MODEL_REF,
    │                           UNSUPPORTED_PARAMETER, PAYLOAD_TOO_LARGE, RESUME_OUT_OF_RANGE,
    │                           ENGINE_OPTION_REJECTED, POLICY_INVALID, CONFIG_INVALID
    ├── NotFoundError           MODEL_NOT_FOUND, NOT_FOUND, REVISION_NOT_FOUND, DEVICE_NOT_FOUND
    ├── ConflictError           IDEMPOTENCY_CONFLICT, MODEL_PINNED, DEVICE_MASK_OVERLAP
    ├── AuthenticationError     UNAUTHENTICATED, JOIN_TOKEN_INVALID, REGISTRATION_REJECTED,
    │                           CERTIFICATE_REJECTED
    ├── PermissionDeniedError   PERMISSION_DENIED, POLICY_FORBIDDEN
    ├── RateLimitError          RATE_LIMITED
    │   └── QuotaExceededError  QUOTA_EXHAUSTED
    ├── CancelledError          CANCELLED
    ├── DeadlineExceededError   DEADLINE_EXCEEDED
    ├── UnavailableError        UNAVAILABLE, WORKER_CRASHED, WORKER_NOT_READY, WORKER_BUSY,
    │                           POOL_UNAVAILABLE, DOWNLOAD_FAILED
    ├── UnimplementedError      UNIMPLEMENTED: the orchestrator does not serve this RPC (yet)
    └── ServerError             INTERNAL, ENGINE_ERROR, RETRIES_EXHAUSTED, MODEL_UNSERVABLE,
                                WORKER_START_FAILED, PREFLIGHT_FAILED, INSUFFICIENT_MEMORY,
                                ENGINE_UNAVAILABLE, CHECKSUM_MISMATCH, CACHE_BUDGET_EXCEEDED,
                                RAM_BUDGET_EXCEEDED, DECISION_REJECTED, and any code this SDK
                                does not know yet

`code` is the stable string of errors.proto's ErrorCode (the value name without the
ERROR_CODE_ prefix). The orchestrator sends it as google.rpc.ErrorInfo (reason = code,
metadata "param") inside the gRPC status details; a failure without one (a proxy, a
connection refused, an RPC the server lacks) gets the code of its gRPC status. A code
newer than this SDK is kept as sent and classed by its gRPC status.
"""

from __future__ import annotations

import grpc
from google.protobuf.message import DecodeError

from llama_orch_sdk._gen.google.rpc import error_details_pb2, status_pb2
from llama_orch_sdk._gen.llama_orch.v1 import errors_pb2

DOMAIN = "llama-orch"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"

# Codes after which trying again (later, or elsewhere) may succeed.
RETRYABLE = frozenset({"WORKER_CRASHED", "WORKER_NOT_READY", "WORKER_BUSY", "POOL_UNAVAILABLE",
                       "UNAVAILABLE", "RATE_LIMITED", "DOWNLOAD_FAILED"})


class LlamaOrchError(Exception):
    """A failure with a stable `code`, a human `message`, the request field at fault
    (`param`, OpenAI style: "temperature", "messages[0].role"; "" when none) and
    whether trying again may succeed (`retryable`)."""

    def __init__(self, code: str, message: str, *, param: str = "",
                 retryable: bool | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.retryable = code in RETRYABLE if retryable is None else retryable

    def __str__(self) -> str:
        where = f" (param: {self.param})" if self.param else ""
        return f"{self.code}: {self.message}{where}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r}, param={self.param!r})"


class InvalidRequestError(LlamaOrchError):
    """The request is wrong; fix it before sending it again."""


class NotFoundError(LlamaOrchError):
    """No such model, job, worker, device or revision."""


class ConflictError(LlamaOrchError):
    """The request contradicts the current state (a reused idempotency key, a pin)."""


class AuthenticationError(LlamaOrchError):
    """Missing or unknown credentials."""


class PermissionDeniedError(LlamaOrchError):
    """The credentials are valid but not allowed to do this."""


class RateLimitError(LlamaOrchError):
    """Too many requests; slow down."""


class QuotaExceededError(RateLimitError):
    """The tenant's token budget or concurrency quota is used up."""


class CancelledError(LlamaOrchError):
    """The job was cancelled (by a client, an operator, or a disconnect)."""


class DeadlineExceededError(LlamaOrchError):
    """The job, or the call, ran past its deadline."""


class UnavailableError(LlamaOrchError):
    """The orchestrator, a pool or a worker is unreachable or gone; retry later."""


class UnimplementedError(LlamaOrchError):
    """The orchestrator does not implement this RPC (yet)."""


class ServerError(LlamaOrchError):
    """The orchestrator or its pools could not do what was asked."""


_FAMILIES: dict[type[LlamaOrchError], tuple[str, ...]] = {
    InvalidRequestError: ("INVALID_ARGUMENT", "CONTEXT_LENGTH_EXCEEDED", "INVALID_MODEL_REF",
                          "UNSUPPORTED_PARAMETER", "PAYLOAD_TOO_LARGE", "RESUME_OUT_OF_RANGE",
                          "ENGINE_OPTION_REJECTED", "POLICY_INVALID", "CONFIG_INVALID"),
    NotFoundError: ("MODEL_NOT_FOUND", "NOT_FOUND", "REVISION_NOT_FOUND", "DEVICE_NOT_FOUND"),
    ConflictError: ("IDEMPOTENCY_CONFLICT", "MODEL_PINNED", "DEVICE_MASK_OVERLAP"),
    AuthenticationError: ("UNAUTHENTICATED", "JOIN_TOKEN_INVALID", "REGISTRATION_REJECTED",
                          "CERTIFICATE_REJECTED"),
    PermissionDeniedError: ("PERMISSION_DENIED", "POLICY_FORBIDDEN"),
    RateLimitError: ("RATE_LIMITED",),
    QuotaExceededError: ("QUOTA_EXHAUSTED",),
    CancelledError: ("CANCELLED",),
    DeadlineExceededError: ("DEADLINE_EXCEEDED",),
    UnavailableError: ("UNAVAILABLE", "WORKER_CRASHED", "WORKER_NOT_READY", "WORKER_BUSY",
                       "POOL_UNAVAILABLE", "DOWNLOAD_FAILED"),
    UnimplementedError: ("UNIMPLEMENTED",),
    ServerError: ("INTERNAL", "ENGINE_ERROR", "RETRIES_EXHAUSTED", "MODEL_UNSERVABLE",
                  "WORKER_START_FAILED", "PREFLIGHT_FAILED", "INSUFFICIENT_MEMORY",
                  "ENGINE_UNAVAILABLE", "CHECKSUM_MISMATCH", "CACHE_BUDGET_EXCEEDED",
                  "RAM_BUDGET_EXCEEDED", "DECISION_REJECTED"),
}
CLASS_OF_CODE: dict[str, type[LlamaOrchError]] = {
    code: cls for cls, codes in _FAMILIES.items() for code in codes}

# A gRPC status without ErrorInfo: its code, and the class of an unknown ErrorInfo code.
_S = grpc.StatusCode
_CODE_OF_STATUS: dict[grpc.StatusCode, str] = {
    _S.INVALID_ARGUMENT: "INVALID_ARGUMENT", _S.NOT_FOUND: "NOT_FOUND",
    _S.ALREADY_EXISTS: "IDEMPOTENCY_CONFLICT", _S.OUT_OF_RANGE: "RESUME_OUT_OF_RANGE",
    _S.UNAUTHENTICATED: "UNAUTHENTICATED", _S.PERMISSION_DENIED: "PERMISSION_DENIED",
    _S.RESOURCE_EXHAUSTED: "RATE_LIMITED", _S.CANCELLED: "CANCELLED",
    _S.DEADLINE_EXCEEDED: "DEADLINE_EXCEEDED", _S.UNAVAILABLE: "UNAVAILABLE",
    _S.UNIMPLEMENTED: "UNIMPLEMENTED",
}


def error_for(code: str, message: str, *, param: str = "", retryable: bool | None = None,
              status: grpc.StatusCode | None = None) -> LlamaOrchError:
    """The typed error for a stable code; `status` classes codes this SDK does not know."""
    cls = CLASS_OF_CODE.get(code)
    if cls is None:
        cls = CLASS_OF_CODE.get(_CODE_OF_STATUS.get(status, ""), ServerError)
    return cls(code, message, param=param, retryable=retryable)


def from_detail(detail: errors_pb2.ErrorDetail) -> LlamaOrchError:
    """The error carried by a job's `error` event or record (errors.proto ErrorDetail)."""
    try:
        code = errors_pb2.ErrorCode.Name(detail.code).removeprefix("ERROR_CODE_")
    except ValueError:  # a number newer than this SDK's errors.proto
        code = "INTERNAL"
    if code == "UNSPECIFIED":
        code = "INTERNAL"
    return error_for(code, detail.message, param=detail.param, retryable=detail.retryable)


def from_rpc_error(err: grpc.RpcError) -> LlamaOrchError:
    """The typed error of a failed call (sync or asyncio), from its ErrorInfo if any."""
    status = err.code() if hasattr(err, "code") else None
    message = (err.details() if hasattr(err, "details") else "") or str(status or err)
    info = _error_info(err)
    if info is not None:
        return error_for(info.reason, message, param=info.metadata.get("param", ""),
                         status=status)
    code = _CODE_OF_STATUS.get(status, "INTERNAL")
    return error_for(code, message, status=status)


def _error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    trailers = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    for key, value in trailers or ():
        if key != "grpc-status-details-bin":
            continue
        # A malformed detail must not hide the failure itself: skip it, and the error
        # is classed by its gRPC status.
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            return None
        for detail in status.details:
            if detail.type_url != _ERROR_INFO:
                continue
            try:
                info = error_details_pb2.ErrorInfo.FromString(detail.value)
            except DecodeError:
                continue
            if info.domain == DOMAIN and info.reason:
                return info
    return None
