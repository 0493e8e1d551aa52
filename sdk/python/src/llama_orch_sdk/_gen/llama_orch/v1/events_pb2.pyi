import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from llama_orch_sdk._gen.llama_orch.v1 import common_pb2 as _common_pb2
from llama_orch_sdk._gen.llama_orch.v1 import errors_pb2 as _errors_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FactKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FACT_KIND_UNSPECIFIED: _ClassVar[FactKind]
    FACT_KIND_JOB_ADMITTED: _ClassVar[FactKind]
    FACT_KIND_JOB_DISPATCHED: _ClassVar[FactKind]
    FACT_KIND_JOB_STARTED: _ClassVar[FactKind]
    FACT_KIND_JOB_FINISHED: _ClassVar[FactKind]
    FACT_KIND_JOB_FAILED: _ClassVar[FactKind]
    FACT_KIND_JOB_CANCELLED: _ClassVar[FactKind]
    FACT_KIND_JOB_RETRYING: _ClassVar[FactKind]
    FACT_KIND_JOB_DIVERGED: _ClassVar[FactKind]
    FACT_KIND_JOB_WAITING: _ClassVar[FactKind]
    FACT_KIND_WORKER_STARTING: _ClassVar[FactKind]
    FACT_KIND_WORKER_READY: _ClassVar[FactKind]
    FACT_KIND_WORKER_FAILED: _ClassVar[FactKind]
    FACT_KIND_WORKER_STOPPED: _ClassVar[FactKind]
    FACT_KIND_MODEL_DOWNLOADING: _ClassVar[FactKind]
    FACT_KIND_MODEL_CACHED: _ClassVar[FactKind]
    FACT_KIND_MODEL_PRELOADED: _ClassVar[FactKind]
    FACT_KIND_MODEL_EVICTED: _ClassVar[FactKind]
    FACT_KIND_MODEL_PINNED: _ClassVar[FactKind]
    FACT_KIND_MODEL_UNPINNED: _ClassVar[FactKind]
    FACT_KIND_POOL_JOINED: _ClassVar[FactKind]
    FACT_KIND_POOL_LOST: _ClassVar[FactKind]
    FACT_KIND_POOL_DRAINING: _ClassVar[FactKind]
    FACT_KIND_POOL_HEARTBEAT: _ClassVar[FactKind]
    FACT_KIND_DECISION_TAKEN: _ClassVar[FactKind]
    FACT_KIND_DECISION_REJECTED: _ClassVar[FactKind]
    FACT_KIND_POLICY_CHANGED: _ClassVar[FactKind]
    FACT_KIND_POLICY_FAILED: _ClassVar[FactKind]
    FACT_KIND_OPTIMIZER_RUN: _ClassVar[FactKind]
    FACT_KIND_OPTIMIZER_ADVICE: _ClassVar[FactKind]
    FACT_KIND_COMPONENT_STARTED: _ClassVar[FactKind]
    FACT_KIND_COMPONENT_STOPPED: _ClassVar[FactKind]
    FACT_KIND_AUTH_DENIED: _ClassVar[FactKind]
    FACT_KIND_QUOTA_WAIT: _ClassVar[FactKind]
    FACT_KIND_AUDIT: _ClassVar[FactKind]

class FactLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FACT_LEVEL_UNSPECIFIED: _ClassVar[FactLevel]
    FACT_LEVEL_DEBUG: _ClassVar[FactLevel]
    FACT_LEVEL_INFO: _ClassVar[FactLevel]
    FACT_LEVEL_WARNING: _ClassVar[FactLevel]
    FACT_LEVEL_ERROR: _ClassVar[FactLevel]
FACT_KIND_UNSPECIFIED: FactKind
FACT_KIND_JOB_ADMITTED: FactKind
FACT_KIND_JOB_DISPATCHED: FactKind
FACT_KIND_JOB_STARTED: FactKind
FACT_KIND_JOB_FINISHED: FactKind
FACT_KIND_JOB_FAILED: FactKind
FACT_KIND_JOB_CANCELLED: FactKind
FACT_KIND_JOB_RETRYING: FactKind
FACT_KIND_JOB_DIVERGED: FactKind
FACT_KIND_JOB_WAITING: FactKind
FACT_KIND_WORKER_STARTING: FactKind
FACT_KIND_WORKER_READY: FactKind
FACT_KIND_WORKER_FAILED: FactKind
FACT_KIND_WORKER_STOPPED: FactKind
FACT_KIND_MODEL_DOWNLOADING: FactKind
FACT_KIND_MODEL_CACHED: FactKind
FACT_KIND_MODEL_PRELOADED: FactKind
FACT_KIND_MODEL_EVICTED: FactKind
FACT_KIND_MODEL_PINNED: FactKind
FACT_KIND_MODEL_UNPINNED: FactKind
FACT_KIND_POOL_JOINED: FactKind
FACT_KIND_POOL_LOST: FactKind
FACT_KIND_POOL_DRAINING: FactKind
FACT_KIND_POOL_HEARTBEAT: FactKind
FACT_KIND_DECISION_TAKEN: FactKind
FACT_KIND_DECISION_REJECTED: FactKind
FACT_KIND_POLICY_CHANGED: FactKind
FACT_KIND_POLICY_FAILED: FactKind
FACT_KIND_OPTIMIZER_RUN: FactKind
FACT_KIND_OPTIMIZER_ADVICE: FactKind
FACT_KIND_COMPONENT_STARTED: FactKind
FACT_KIND_COMPONENT_STOPPED: FactKind
FACT_KIND_AUTH_DENIED: FactKind
FACT_KIND_QUOTA_WAIT: FactKind
FACT_KIND_AUDIT: FactKind
FACT_LEVEL_UNSPECIFIED: FactLevel
FACT_LEVEL_DEBUG: FactLevel
FACT_LEVEL_INFO: FactLevel
FACT_LEVEL_WARNING: FactLevel
FACT_LEVEL_ERROR: FactLevel

class JobQueued(_message.Message):
    __slots__ = ("priority", "reason")
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    priority: _common_pb2.Priority
    reason: str
    def __init__(self, priority: _Optional[_Union[_common_pb2.Priority, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class JobDispatched(_message.Message):
    __slots__ = ("worker_id", "pool_id", "attempt")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    pool_id: str
    attempt: int
    def __init__(self, worker_id: _Optional[str] = ..., pool_id: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class JobStarted(_message.Message):
    __slots__ = ("prompt_tokens", "model_ref", "attempt", "seed")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MODEL_REF_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    model_ref: str
    attempt: int
    seed: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., model_ref: _Optional[str] = ..., attempt: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class TokenLogprob(_message.Message):
    __slots__ = ("token", "logprob")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    token: str
    logprob: float
    def __init__(self, token: _Optional[str] = ..., logprob: _Optional[float] = ...) -> None: ...

class TokenLogprobs(_message.Message):
    __slots__ = ("token", "logprob", "top")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    token: str
    logprob: float
    top: _containers.RepeatedCompositeFieldContainer[TokenLogprob]
    def __init__(self, token: _Optional[str] = ..., logprob: _Optional[float] = ..., top: _Optional[_Iterable[_Union[TokenLogprob, _Mapping]]] = ...) -> None: ...

class JobTokens(_message.Message):
    __slots__ = ("text", "token_ids", "logprobs", "choice_index")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    CHOICE_INDEX_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedCompositeFieldContainer[TokenLogprobs]
    choice_index: int
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[_Union[TokenLogprobs, _Mapping]]] = ..., choice_index: _Optional[int] = ...) -> None: ...

class JobMetrics(_message.Message):
    __slots__ = ("time_to_first_token_ms", "tokens_per_second", "generated_tokens", "queue_ms")
    TIME_TO_FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    time_to_first_token_ms: float
    tokens_per_second: float
    generated_tokens: int
    queue_ms: float
    def __init__(self, time_to_first_token_ms: _Optional[float] = ..., tokens_per_second: _Optional[float] = ..., generated_tokens: _Optional[int] = ..., queue_ms: _Optional[float] = ...) -> None: ...

class JobDivergence(_message.Message):
    __slots__ = ("token_index", "message", "choice_index", "char_offset")
    TOKEN_INDEX_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CHOICE_INDEX_FIELD_NUMBER: _ClassVar[int]
    CHAR_OFFSET_FIELD_NUMBER: _ClassVar[int]
    token_index: int
    message: str
    choice_index: int
    char_offset: int
    def __init__(self, token_index: _Optional[int] = ..., message: _Optional[str] = ..., choice_index: _Optional[int] = ..., char_offset: _Optional[int] = ...) -> None: ...

class JobRetrying(_message.Message):
    __slots__ = ("attempt", "backoff_ms", "cause")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_MS_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    backoff_ms: int
    cause: _errors_pb2.ErrorDetail
    def __init__(self, attempt: _Optional[int] = ..., backoff_ms: _Optional[int] = ..., cause: _Optional[_Union[_errors_pb2.ErrorDetail, _Mapping]] = ...) -> None: ...

class JobEnd(_message.Message):
    __slots__ = ("finish_reason", "usage", "proof", "choice_index")
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    CHOICE_INDEX_FIELD_NUMBER: _ClassVar[int]
    finish_reason: str
    usage: _common_pb2.Usage
    proof: _common_pb2.ProofRecord
    choice_index: int
    def __init__(self, finish_reason: _Optional[str] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., proof: _Optional[_Union[_common_pb2.ProofRecord, _Mapping]] = ..., choice_index: _Optional[int] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job_id", "seq", "time", "queued", "dispatched", "started", "tokens", "metrics", "divergence", "retrying", "end", "error")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    DISPATCHED_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    DIVERGENCE_FIELD_NUMBER: _ClassVar[int]
    RETRYING_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    seq: int
    time: _timestamp_pb2.Timestamp
    queued: JobQueued
    dispatched: JobDispatched
    started: JobStarted
    tokens: JobTokens
    metrics: JobMetrics
    divergence: JobDivergence
    retrying: JobRetrying
    end: JobEnd
    error: _errors_pb2.ErrorDetail
    def __init__(self, job_id: _Optional[str] = ..., seq: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., queued: _Optional[_Union[JobQueued, _Mapping]] = ..., dispatched: _Optional[_Union[JobDispatched, _Mapping]] = ..., started: _Optional[_Union[JobStarted, _Mapping]] = ..., tokens: _Optional[_Union[JobTokens, _Mapping]] = ..., metrics: _Optional[_Union[JobMetrics, _Mapping]] = ..., divergence: _Optional[_Union[JobDivergence, _Mapping]] = ..., retrying: _Optional[_Union[JobRetrying, _Mapping]] = ..., end: _Optional[_Union[JobEnd, _Mapping]] = ..., error: _Optional[_Union[_errors_pb2.ErrorDetail, _Mapping]] = ...) -> None: ...

class Fact(_message.Message):
    __slots__ = ("id", "time", "kind", "code", "level", "component", "correlation_id", "message", "job_id", "pool_id", "worker_id", "model_ref", "attributes")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_REF_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    id: int
    time: _timestamp_pb2.Timestamp
    kind: FactKind
    code: str
    level: FactLevel
    component: str
    correlation_id: str
    message: str
    job_id: str
    pool_id: str
    worker_id: str
    model_ref: str
    attributes: _struct_pb2.Struct
    def __init__(self, id: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[_Union[FactKind, str]] = ..., code: _Optional[str] = ..., level: _Optional[_Union[FactLevel, str]] = ..., component: _Optional[str] = ..., correlation_id: _Optional[str] = ..., message: _Optional[str] = ..., job_id: _Optional[str] = ..., pool_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., model_ref: _Optional[str] = ..., attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...
