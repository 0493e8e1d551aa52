from llama_orch.v1 import errors_pb2 as _errors_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReportReadyRequest(_message.Message):
    __slots__ = ("worker_id", "model_ref", "device_bytes", "endpoint", "engine", "engine_version", "model_digest", "pid", "context_length", "slots", "load_ms")
    class DeviceBytesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_REF_FIELD_NUMBER: _ClassVar[int]
    DEVICE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    ENGINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    model_ref: str
    device_bytes: _containers.ScalarMap[str, int]
    endpoint: str
    engine: str
    engine_version: str
    model_digest: str
    pid: int
    context_length: int
    slots: int
    load_ms: int
    def __init__(self, worker_id: _Optional[str] = ..., model_ref: _Optional[str] = ..., device_bytes: _Optional[_Mapping[str, int]] = ..., endpoint: _Optional[str] = ..., engine: _Optional[str] = ..., engine_version: _Optional[str] = ..., model_digest: _Optional[str] = ..., pid: _Optional[int] = ..., context_length: _Optional[int] = ..., slots: _Optional[int] = ..., load_ms: _Optional[int] = ...) -> None: ...

class ReportReadyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReportFailureRequest(_message.Message):
    __slots__ = ("worker_id", "error")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    error: _errors_pb2.ErrorDetail
    def __init__(self, worker_id: _Optional[str] = ..., error: _Optional[_Union[_errors_pb2.ErrorDetail, _Mapping]] = ...) -> None: ...

class ReportFailureResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
