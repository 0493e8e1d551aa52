import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from llama_orch.v1 import common_pb2 as _common_pb2
from llama_orch.v1 import errors_pb2 as _errors_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_PHASE_UNSPECIFIED: _ClassVar[ModelPhase]
    MODEL_PHASE_DOWNLOADING: _ClassVar[ModelPhase]
    MODEL_PHASE_CACHED: _ClassVar[ModelPhase]
    MODEL_PHASE_PRELOADED: _ClassVar[ModelPhase]
    MODEL_PHASE_EVICTED: _ClassVar[ModelPhase]
    MODEL_PHASE_FAILED: _ClassVar[ModelPhase]
MODEL_PHASE_UNSPECIFIED: ModelPhase
MODEL_PHASE_DOWNLOADING: ModelPhase
MODEL_PHASE_CACHED: ModelPhase
MODEL_PHASE_PRELOADED: ModelPhase
MODEL_PHASE_EVICTED: ModelPhase
MODEL_PHASE_FAILED: ModelPhase

class RegistrationPayload(_message.Message):
    __slots__ = ("pool_id", "endpoint", "inventory", "nonce", "timestamp")
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    pool_id: str
    endpoint: str
    inventory: _common_pb2.Inventory
    nonce: bytes
    timestamp: _timestamp_pb2.Timestamp
    def __init__(self, pool_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., inventory: _Optional[_Union[_common_pb2.Inventory, _Mapping]] = ..., nonce: _Optional[bytes] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SignedRegistration(_message.Message):
    __slots__ = ("payload", "signature", "provider_key_id")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    signature: bytes
    provider_key_id: str
    def __init__(self, payload: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., provider_key_id: _Optional[str] = ...) -> None: ...

class PoolRegistration(_message.Message):
    __slots__ = ("pool_id", "version", "inventory", "address", "workers", "models", "signed", "join_token")
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    SIGNED_FIELD_NUMBER: _ClassVar[int]
    JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    pool_id: str
    version: str
    inventory: _common_pb2.Inventory
    address: str
    workers: _containers.RepeatedCompositeFieldContainer[_common_pb2.WorkerInfo]
    models: _containers.RepeatedCompositeFieldContainer[_common_pb2.ModelResidency]
    signed: SignedRegistration
    join_token: str
    def __init__(self, pool_id: _Optional[str] = ..., version: _Optional[str] = ..., inventory: _Optional[_Union[_common_pb2.Inventory, _Mapping]] = ..., address: _Optional[str] = ..., workers: _Optional[_Iterable[_Union[_common_pb2.WorkerInfo, _Mapping]]] = ..., models: _Optional[_Iterable[_Union[_common_pb2.ModelResidency, _Mapping]]] = ..., signed: _Optional[_Union[SignedRegistration, _Mapping]] = ..., join_token: _Optional[str] = ...) -> None: ...

class PoolHeartbeat(_message.Message):
    __slots__ = ("seq", "inventory", "workers", "models")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    inventory: _common_pb2.Inventory
    workers: _containers.RepeatedCompositeFieldContainer[_common_pb2.WorkerInfo]
    models: _containers.RepeatedCompositeFieldContainer[_common_pb2.ModelResidency]
    def __init__(self, seq: _Optional[int] = ..., inventory: _Optional[_Union[_common_pb2.Inventory, _Mapping]] = ..., workers: _Optional[_Iterable[_Union[_common_pb2.WorkerInfo, _Mapping]]] = ..., models: _Optional[_Iterable[_Union[_common_pb2.ModelResidency, _Mapping]]] = ...) -> None: ...

class WorkerStarting(_message.Message):
    __slots__ = ("worker_id", "model_ref", "device_ids", "pid", "engine")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_REF_FIELD_NUMBER: _ClassVar[int]
    DEVICE_IDS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    model_ref: str
    device_ids: _containers.RepeatedScalarFieldContainer[str]
    pid: int
    engine: str
    def __init__(self, worker_id: _Optional[str] = ..., model_ref: _Optional[str] = ..., device_ids: _Optional[_Iterable[str]] = ..., pid: _Optional[int] = ..., engine: _Optional[str] = ...) -> None: ...

class WorkerReady(_message.Message):
    __slots__ = ("worker", "context_length", "load_ms")
    WORKER_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    worker: _common_pb2.WorkerInfo
    context_length: int
    load_ms: int
    def __init__(self, worker: _Optional[_Union[_common_pb2.WorkerInfo, _Mapping]] = ..., context_length: _Optional[int] = ..., load_ms: _Optional[int] = ...) -> None: ...

class WorkerExited(_message.Message):
    __slots__ = ("worker_id", "exit_code", "signal", "signal_name", "stderr_tail", "expected", "error")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_NAME_FIELD_NUMBER: _ClassVar[int]
    STDERR_TAIL_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    exit_code: int
    signal: int
    signal_name: str
    stderr_tail: str
    expected: bool
    error: _errors_pb2.ErrorDetail
    def __init__(self, worker_id: _Optional[str] = ..., exit_code: _Optional[int] = ..., signal: _Optional[int] = ..., signal_name: _Optional[str] = ..., stderr_tail: _Optional[str] = ..., expected: _Optional[bool] = ..., error: _Optional[_Union[_errors_pb2.ErrorDetail, _Mapping]] = ...) -> None: ...

class ModelProgress(_message.Message):
    __slots__ = ("model_ref", "phase", "bytes_done", "bytes_total", "resolved_revision", "error")
    MODEL_REF_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_REVISION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    model_ref: str
    phase: ModelPhase
    bytes_done: int
    bytes_total: int
    resolved_revision: str
    error: _errors_pb2.ErrorDetail
    def __init__(self, model_ref: _Optional[str] = ..., phase: _Optional[_Union[ModelPhase, str]] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., resolved_revision: _Optional[str] = ..., error: _Optional[_Union[_errors_pb2.ErrorDetail, _Mapping]] = ...) -> None: ...

class CommandResult(_message.Message):
    __slots__ = ("command_id", "ok", "error", "worker_id")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    ok: bool
    error: _errors_pb2.ErrorDetail
    worker_id: str
    def __init__(self, command_id: _Optional[str] = ..., ok: _Optional[bool] = ..., error: _Optional[_Union[_errors_pb2.ErrorDetail, _Mapping]] = ..., worker_id: _Optional[str] = ...) -> None: ...

class ConnectRequest(_message.Message):
    __slots__ = ("registration", "heartbeat", "worker_starting", "worker_ready", "worker_exited", "model_progress", "result")
    REGISTRATION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    WORKER_STARTING_FIELD_NUMBER: _ClassVar[int]
    WORKER_READY_FIELD_NUMBER: _ClassVar[int]
    WORKER_EXITED_FIELD_NUMBER: _ClassVar[int]
    MODEL_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    registration: PoolRegistration
    heartbeat: PoolHeartbeat
    worker_starting: WorkerStarting
    worker_ready: WorkerReady
    worker_exited: WorkerExited
    model_progress: ModelProgress
    result: CommandResult
    def __init__(self, registration: _Optional[_Union[PoolRegistration, _Mapping]] = ..., heartbeat: _Optional[_Union[PoolHeartbeat, _Mapping]] = ..., worker_starting: _Optional[_Union[WorkerStarting, _Mapping]] = ..., worker_ready: _Optional[_Union[WorkerReady, _Mapping]] = ..., worker_exited: _Optional[_Union[WorkerExited, _Mapping]] = ..., model_progress: _Optional[_Union[ModelProgress, _Mapping]] = ..., result: _Optional[_Union[CommandResult, _Mapping]] = ...) -> None: ...

class RegistrationAccepted(_message.Message):
    __slots__ = ("pool_id", "heartbeat_interval_ms", "orchestrator_version")
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    ORCHESTRATOR_VERSION_FIELD_NUMBER: _ClassVar[int]
    pool_id: str
    heartbeat_interval_ms: int
    orchestrator_version: str
    def __init__(self, pool_id: _Optional[str] = ..., heartbeat_interval_ms: _Optional[int] = ..., orchestrator_version: _Optional[str] = ...) -> None: ...

class StartWorkerCommand(_message.Message):
    __slots__ = ("worker_id", "model_ref", "engine", "device_ids", "engine_options", "memory_estimate_bytes")
    class EngineOptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_REF_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_IDS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_ESTIMATE_BYTES_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    model_ref: str
    engine: str
    device_ids: _containers.RepeatedScalarFieldContainer[str]
    engine_options: _containers.ScalarMap[str, str]
    memory_estimate_bytes: int
    def __init__(self, worker_id: _Optional[str] = ..., model_ref: _Optional[str] = ..., engine: _Optional[str] = ..., device_ids: _Optional[_Iterable[str]] = ..., engine_options: _Optional[_Mapping[str, str]] = ..., memory_estimate_bytes: _Optional[int] = ...) -> None: ...

class StopWorkerCommand(_message.Message):
    __slots__ = ("worker_id", "grace_ms", "force")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_MS_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    grace_ms: int
    force: bool
    def __init__(self, worker_id: _Optional[str] = ..., grace_ms: _Optional[int] = ..., force: _Optional[bool] = ...) -> None: ...

class FetchModelCommand(_message.Message):
    __slots__ = ("model_ref",)
    MODEL_REF_FIELD_NUMBER: _ClassVar[int]
    model_ref: str
    def __init__(self, model_ref: _Optional[str] = ...) -> None: ...

class PreloadModelCommand(_message.Message):
    __slots__ = ("model_ref",)
    MODEL_REF_FIELD_NUMBER: _ClassVar[int]
    model_ref: str
    def __init__(self, model_ref: _Optional[str] = ...) -> None: ...

class EvictModelCommand(_message.Message):
    __slots__ = ("model_ref", "from_disk")
    MODEL_REF_FIELD_NUMBER: _ClassVar[int]
    FROM_DISK_FIELD_NUMBER: _ClassVar[int]
    model_ref: str
    from_disk: bool
    def __init__(self, model_ref: _Optional[str] = ..., from_disk: _Optional[bool] = ...) -> None: ...

class DrainPoolCommand(_message.Message):
    __slots__ = ("drain",)
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    drain: bool
    def __init__(self, drain: _Optional[bool] = ...) -> None: ...

class PoolCommand(_message.Message):
    __slots__ = ("command_id", "start_worker", "stop_worker", "fetch_model", "preload_model", "evict_model", "drain_pool")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    START_WORKER_FIELD_NUMBER: _ClassVar[int]
    STOP_WORKER_FIELD_NUMBER: _ClassVar[int]
    FETCH_MODEL_FIELD_NUMBER: _ClassVar[int]
    PRELOAD_MODEL_FIELD_NUMBER: _ClassVar[int]
    EVICT_MODEL_FIELD_NUMBER: _ClassVar[int]
    DRAIN_POOL_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    start_worker: StartWorkerCommand
    stop_worker: StopWorkerCommand
    fetch_model: FetchModelCommand
    preload_model: PreloadModelCommand
    evict_model: EvictModelCommand
    drain_pool: DrainPoolCommand
    def __init__(self, command_id: _Optional[str] = ..., start_worker: _Optional[_Union[StartWorkerCommand, _Mapping]] = ..., stop_worker: _Optional[_Union[StopWorkerCommand, _Mapping]] = ..., fetch_model: _Optional[_Union[FetchModelCommand, _Mapping]] = ..., preload_model: _Optional[_Union[PreloadModelCommand, _Mapping]] = ..., evict_model: _Optional[_Union[EvictModelCommand, _Mapping]] = ..., drain_pool: _Optional[_Union[DrainPoolCommand, _Mapping]] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("accepted", "command")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    accepted: RegistrationAccepted
    command: PoolCommand
    def __init__(self, accepted: _Optional[_Union[RegistrationAccepted, _Mapping]] = ..., command: _Optional[_Union[PoolCommand, _Mapping]] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("pool_id", "join_token", "csr_pem", "signed")
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    SIGNED_FIELD_NUMBER: _ClassVar[int]
    pool_id: str
    join_token: str
    csr_pem: str
    signed: SignedRegistration
    def __init__(self, pool_id: _Optional[str] = ..., join_token: _Optional[str] = ..., csr_pem: _Optional[str] = ..., signed: _Optional[_Union[SignedRegistration, _Mapping]] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("certificate_pem", "ca_certificate_pem", "expires_at")
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: str
    ca_certificate_pem: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, certificate_pem: _Optional[str] = ..., ca_certificate_pem: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
