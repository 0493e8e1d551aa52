"""The error tree, drawn once.

    OrchError(code)                 every failure with a stable code (errors.proto)
    ├── InvalidInput                INVALID_ARGUMENT, MODEL_NOT_FOUND,
    │                               CONTEXT_LENGTH_EXCEEDED, INVALID_MODEL_REF, ...
    └── ConfigError                 CONFIG_INVALID: a daemon refuses to start

The stable string of a code is its ErrorCode name without the ERROR_CODE_ prefix.
On gRPC it travels as google.rpc.ErrorInfo (reason = code, metadata.param), mapped to
a status code by GRPC_STATUS below; the gateway maps the same codes to OpenAI bodies.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from llama_orch.v1 import errors_pb2

DOMAIN = "llama-orch"

_S = grpc.StatusCode
GRPC_STATUS: dict[str, grpc.StatusCode] = {
    "INVALID_ARGUMENT": _S.INVALID_ARGUMENT,
    "MODEL_NOT_FOUND": _S.NOT_FOUND,
    "CONTEXT_LENGTH_EXCEEDED": _S.INVALID_ARGUMENT,
    "NOT_FOUND": _S.NOT_FOUND,
    "IDEMPOTENCY_CONFLICT": _S.ALREADY_EXISTS,
    "RESUME_OUT_OF_RANGE": _S.OUT_OF_RANGE,
    "INVALID_MODEL_REF": _S.INVALID_ARGUMENT,
    "UNSUPPORTED_PARAMETER": _S.INVALID_ARGUMENT,
    "PAYLOAD_TOO_LARGE": _S.INVALID_ARGUMENT,
    "CANCELLED": _S.CANCELLED,
    "DEADLINE_EXCEEDED": _S.DEADLINE_EXCEEDED,
    "RETRIES_EXHAUSTED": _S.ABORTED,
    "MODEL_UNSERVABLE": _S.FAILED_PRECONDITION,
    "WORKER_CRASHED": _S.UNAVAILABLE,
    "WORKER_BUSY": _S.RESOURCE_EXHAUSTED,
    "WORKER_START_FAILED": _S.FAILED_PRECONDITION,
    "WORKER_NOT_READY": _S.UNAVAILABLE,
    "POOL_UNAVAILABLE": _S.UNAVAILABLE,
    "PREFLIGHT_FAILED": _S.FAILED_PRECONDITION,
    "INSUFFICIENT_MEMORY": _S.RESOURCE_EXHAUSTED,
    "ENGINE_UNAVAILABLE": _S.FAILED_PRECONDITION,
    "ENGINE_OPTION_REJECTED": _S.INVALID_ARGUMENT,
    "DEVICE_NOT_FOUND": _S.NOT_FOUND,
    "DEVICE_MASK_OVERLAP": _S.FAILED_PRECONDITION,
    "ENGINE_ERROR": _S.INTERNAL,
    "REVISION_NOT_FOUND": _S.NOT_FOUND,
    "CHECKSUM_MISMATCH": _S.DATA_LOSS,
    "DOWNLOAD_FAILED": _S.UNAVAILABLE,
    "CACHE_BUDGET_EXCEEDED": _S.RESOURCE_EXHAUSTED,
    "RAM_BUDGET_EXCEEDED": _S.RESOURCE_EXHAUSTED,
    "MODEL_PINNED": _S.FAILED_PRECONDITION,
    "UNAUTHENTICATED": _S.UNAUTHENTICATED,
    "PERMISSION_DENIED": _S.PERMISSION_DENIED,
    # Enrolment and peer checks (docs/SECURITY.md): a credential that does not hold is
    # UNAUTHENTICATED; a registration refused on its merits is PERMISSION_DENIED.
    "JOIN_TOKEN_INVALID": _S.UNAUTHENTICATED,
    "REGISTRATION_REJECTED": _S.PERMISSION_DENIED,
    "CERTIFICATE_REJECTED": _S.UNAUTHENTICATED,
    "QUOTA_EXHAUSTED": _S.RESOURCE_EXHAUSTED,
    "RATE_LIMITED": _S.RESOURCE_EXHAUSTED,
    "POLICY_INVALID": _S.INVALID_ARGUMENT,
    "POLICY_FORBIDDEN": _S.PERMISSION_DENIED,
    "INTERNAL": _S.INTERNAL,
    "UNAVAILABLE": _S.UNAVAILABLE,
    "CONFIG_INVALID": _S.INVALID_ARGUMENT,
}

# Codes after which the orchestrator may run the job again elsewhere.
# WORKER_BUSY: the worker refused before running anything, so another attempt is safe.
RETRYABLE = frozenset({"WORKER_CRASHED", "WORKER_NOT_READY", "WORKER_BUSY", "POOL_UNAVAILABLE",
                       "UNAVAILABLE"})


def code_name(code: int) -> str:
    """ErrorCode enum value -> stable string ("MODEL_NOT_FOUND")."""
    return errors_pb2.ErrorCode.Name(code).removeprefix("ERROR_CODE_")


def code_value(name: str) -> int:
    return errors_pb2.ErrorCode.Value("ERROR_CODE_" + name)


class OrchError(Exception):
    """A failure with a stable code, a human message and optionally the faulty param."""

    def __init__(self, code: str, message: str, *, param: str = "", retryable: bool | None = None):
        code_value(code)  # unknown codes are a programming error, caught in tests
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.retryable = code in RETRYABLE if retryable is None else retryable

    def __repr__(self) -> str:
        return f"OrchError({self.code}: {self.message})"

    @property
    def grpc_status(self) -> grpc.StatusCode:
        return GRPC_STATUS.get(self.code, grpc.StatusCode.UNKNOWN)

    def to_detail(self) -> errors_pb2.ErrorDetail:
        return errors_pb2.ErrorDetail(
            code=code_value(self.code), message=self.message, param=self.param,
            retryable=self.retryable,
        )

    @classmethod
    def from_detail(cls, detail: errors_pb2.ErrorDetail) -> "OrchError":
        return cls(code_name(detail.code) if detail.code else "INTERNAL", detail.message,
                   param=detail.param, retryable=detail.retryable)

    def to_status(self) -> grpc.Status:
        info = error_details_pb2.ErrorInfo(reason=self.code, domain=DOMAIN)
        if self.param:
            info.metadata["param"] = self.param
        packed = any_pb2.Any()
        packed.Pack(info)
        return rpc_status.to_status(status_pb2.Status(
            code=self.grpc_status.value[0], message=self.message, details=[packed]))

    async def abort(self, context: grpc.aio.ServicerContext) -> None:
        """End the RPC with this error (raises, as context.abort does)."""
        await context.abort_with_status(self.to_status())

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> "OrchError":
        """Recover the stable code from a failed call; plain gRPC failures get one too."""
        try:
            status = rpc_status.from_call(err)
        except ValueError:
            status = None
        if status is not None:
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info) and info.domain == DOMAIN:
                    try:
                        return cls(info.reason, status.message, param=info.metadata.get("param", ""))
                    except ValueError:
                        break
        code = err.code() if hasattr(err, "code") else None
        fallback = {
            grpc.StatusCode.UNAVAILABLE: "UNAVAILABLE",
            grpc.StatusCode.DEADLINE_EXCEEDED: "DEADLINE_EXCEEDED",
            grpc.StatusCode.CANCELLED: "CANCELLED",
            grpc.StatusCode.NOT_FOUND: "NOT_FOUND",
            grpc.StatusCode.UNAUTHENTICATED: "UNAUTHENTICATED",
            grpc.StatusCode.INVALID_ARGUMENT: "INVALID_ARGUMENT",
            grpc.StatusCode.RESOURCE_EXHAUSTED: "RATE_LIMITED",
            grpc.StatusCode.ALREADY_EXISTS: "IDEMPOTENCY_CONFLICT",
            grpc.StatusCode.OUT_OF_RANGE: "RESUME_OUT_OF_RANGE",
            grpc.StatusCode.PERMISSION_DENIED: "PERMISSION_DENIED",
        }.get(code, "INTERNAL")
        details = err.details() if hasattr(err, "details") else str(err)
        return cls(fallback, details or str(code))


class InvalidInput(OrchError):
    """Input the caller must fix; never retried, never stored as queued."""


class ConfigError(OrchError):
    """A daemon's configuration is unusable; the daemon exits non-zero with this line."""

    def __init__(self, message: str, *, param: str = ""):
        super().__init__("CONFIG_INVALID", message, param=param)
