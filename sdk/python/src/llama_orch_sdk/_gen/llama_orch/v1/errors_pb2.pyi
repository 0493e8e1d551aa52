from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    ERROR_CODE_INVALID_ARGUMENT: _ClassVar[ErrorCode]
    ERROR_CODE_MODEL_NOT_FOUND: _ClassVar[ErrorCode]
    ERROR_CODE_CONTEXT_LENGTH_EXCEEDED: _ClassVar[ErrorCode]
    ERROR_CODE_NOT_FOUND: _ClassVar[ErrorCode]
    ERROR_CODE_IDEMPOTENCY_CONFLICT: _ClassVar[ErrorCode]
    ERROR_CODE_RESUME_OUT_OF_RANGE: _ClassVar[ErrorCode]
    ERROR_CODE_INVALID_MODEL_REF: _ClassVar[ErrorCode]
    ERROR_CODE_UNSUPPORTED_PARAMETER: _ClassVar[ErrorCode]
    ERROR_CODE_PAYLOAD_TOO_LARGE: _ClassVar[ErrorCode]
    ERROR_CODE_CANCELLED: _ClassVar[ErrorCode]
    ERROR_CODE_DEADLINE_EXCEEDED: _ClassVar[ErrorCode]
    ERROR_CODE_RETRIES_EXHAUSTED: _ClassVar[ErrorCode]
    ERROR_CODE_MODEL_UNSERVABLE: _ClassVar[ErrorCode]
    ERROR_CODE_WORKER_CRASHED: _ClassVar[ErrorCode]
    ERROR_CODE_WORKER_BUSY: _ClassVar[ErrorCode]
    ERROR_CODE_WORKER_START_FAILED: _ClassVar[ErrorCode]
    ERROR_CODE_WORKER_NOT_READY: _ClassVar[ErrorCode]
    ERROR_CODE_POOL_UNAVAILABLE: _ClassVar[ErrorCode]
    ERROR_CODE_PREFLIGHT_FAILED: _ClassVar[ErrorCode]
    ERROR_CODE_INSUFFICIENT_MEMORY: _ClassVar[ErrorCode]
    ERROR_CODE_ENGINE_UNAVAILABLE: _ClassVar[ErrorCode]
    ERROR_CODE_ENGINE_OPTION_REJECTED: _ClassVar[ErrorCode]
    ERROR_CODE_DEVICE_NOT_FOUND: _ClassVar[ErrorCode]
    ERROR_CODE_DEVICE_MASK_OVERLAP: _ClassVar[ErrorCode]
    ERROR_CODE_ENGINE_ERROR: _ClassVar[ErrorCode]
    ERROR_CODE_REVISION_NOT_FOUND: _ClassVar[ErrorCode]
    ERROR_CODE_CHECKSUM_MISMATCH: _ClassVar[ErrorCode]
    ERROR_CODE_DOWNLOAD_FAILED: _ClassVar[ErrorCode]
    ERROR_CODE_CACHE_BUDGET_EXCEEDED: _ClassVar[ErrorCode]
    ERROR_CODE_RAM_BUDGET_EXCEEDED: _ClassVar[ErrorCode]
    ERROR_CODE_MODEL_PINNED: _ClassVar[ErrorCode]
    ERROR_CODE_UNAUTHENTICATED: _ClassVar[ErrorCode]
    ERROR_CODE_PERMISSION_DENIED: _ClassVar[ErrorCode]
    ERROR_CODE_QUOTA_EXHAUSTED: _ClassVar[ErrorCode]
    ERROR_CODE_RATE_LIMITED: _ClassVar[ErrorCode]
    ERROR_CODE_JOIN_TOKEN_INVALID: _ClassVar[ErrorCode]
    ERROR_CODE_REGISTRATION_REJECTED: _ClassVar[ErrorCode]
    ERROR_CODE_CERTIFICATE_REJECTED: _ClassVar[ErrorCode]
    ERROR_CODE_POLICY_INVALID: _ClassVar[ErrorCode]
    ERROR_CODE_POLICY_FORBIDDEN: _ClassVar[ErrorCode]
    ERROR_CODE_DECISION_REJECTED: _ClassVar[ErrorCode]
    ERROR_CODE_INTERNAL: _ClassVar[ErrorCode]
    ERROR_CODE_UNAVAILABLE: _ClassVar[ErrorCode]
    ERROR_CODE_CONFIG_INVALID: _ClassVar[ErrorCode]
ERROR_CODE_UNSPECIFIED: ErrorCode
ERROR_CODE_INVALID_ARGUMENT: ErrorCode
ERROR_CODE_MODEL_NOT_FOUND: ErrorCode
ERROR_CODE_CONTEXT_LENGTH_EXCEEDED: ErrorCode
ERROR_CODE_NOT_FOUND: ErrorCode
ERROR_CODE_IDEMPOTENCY_CONFLICT: ErrorCode
ERROR_CODE_RESUME_OUT_OF_RANGE: ErrorCode
ERROR_CODE_INVALID_MODEL_REF: ErrorCode
ERROR_CODE_UNSUPPORTED_PARAMETER: ErrorCode
ERROR_CODE_PAYLOAD_TOO_LARGE: ErrorCode
ERROR_CODE_CANCELLED: ErrorCode
ERROR_CODE_DEADLINE_EXCEEDED: ErrorCode
ERROR_CODE_RETRIES_EXHAUSTED: ErrorCode
ERROR_CODE_MODEL_UNSERVABLE: ErrorCode
ERROR_CODE_WORKER_CRASHED: ErrorCode
ERROR_CODE_WORKER_BUSY: ErrorCode
ERROR_CODE_WORKER_START_FAILED: ErrorCode
ERROR_CODE_WORKER_NOT_READY: ErrorCode
ERROR_CODE_POOL_UNAVAILABLE: ErrorCode
ERROR_CODE_PREFLIGHT_FAILED: ErrorCode
ERROR_CODE_INSUFFICIENT_MEMORY: ErrorCode
ERROR_CODE_ENGINE_UNAVAILABLE: ErrorCode
ERROR_CODE_ENGINE_OPTION_REJECTED: ErrorCode
ERROR_CODE_DEVICE_NOT_FOUND: ErrorCode
ERROR_CODE_DEVICE_MASK_OVERLAP: ErrorCode
ERROR_CODE_ENGINE_ERROR: ErrorCode
ERROR_CODE_REVISION_NOT_FOUND: ErrorCode
ERROR_CODE_CHECKSUM_MISMATCH: ErrorCode
ERROR_CODE_DOWNLOAD_FAILED: ErrorCode
ERROR_CODE_CACHE_BUDGET_EXCEEDED: ErrorCode
ERROR_CODE_RAM_BUDGET_EXCEEDED: ErrorCode
ERROR_CODE_MODEL_PINNED: ErrorCode
ERROR_CODE_UNAUTHENTICATED: ErrorCode
ERROR_CODE_PERMISSION_DENIED: ErrorCode
ERROR_CODE_QUOTA_EXHAUSTED: ErrorCode
ERROR_CODE_RATE_LIMITED: ErrorCode
ERROR_CODE_JOIN_TOKEN_INVALID: ErrorCode
ERROR_CODE_REGISTRATION_REJECTED: ErrorCode
ERROR_CODE_CERTIFICATE_REJECTED: ErrorCode
ERROR_CODE_POLICY_INVALID: ErrorCode
ERROR_CODE_POLICY_FORBIDDEN: ErrorCode
ERROR_CODE_DECISION_REJECTED: ErrorCode
ERROR_CODE_INTERNAL: ErrorCode
ERROR_CODE_UNAVAILABLE: ErrorCode
ERROR_CODE_CONFIG_INVALID: ErrorCode

class ErrorDetail(_message.Message):
    __slots__ = ("code", "message", "param", "retryable")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PARAM_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    message: str
    param: str
    retryable: bool
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ..., param: _Optional[str] = ..., retryable: _Optional[bool] = ...) -> None: ...
