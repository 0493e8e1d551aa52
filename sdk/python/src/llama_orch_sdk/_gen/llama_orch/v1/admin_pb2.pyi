import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from llama_orch_sdk._gen.llama_orch.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ApiKeyScope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    API_KEY_SCOPE_UNSPECIFIED: _ClassVar[ApiKeyScope]
    API_KEY_SCOPE_CLIENT: _ClassVar[ApiKeyScope]
    API_KEY_SCOPE_ADMIN: _ClassVar[ApiKeyScope]
API_KEY_SCOPE_UNSPECIFIED: ApiKeyScope
API_KEY_SCOPE_CLIENT: ApiKeyScope
API_KEY_SCOPE_ADMIN: ApiKeyScope

class Pin(_message.Message):
    __slots__ = ("model_ref", "pool_id", "device_ids", "created_at")
    MODEL_REF_FIELD_NUMBER: _ClassVar[int]
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_IDS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    model_ref: str
    pool_id: str
    device_ids: _containers.RepeatedScalarFieldContainer[str]
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, model_ref: _Optional[str] = ..., pool_id: _Optional[str] = ..., device_ids: _Optional[_Iterable[str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PinModelRequest(_message.Message):
    __slots__ = ("model", "pool_id", "device_ids")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_IDS_FIELD_NUMBER: _ClassVar[int]
    model: str
    pool_id: str
    device_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., pool_id: _Optional[str] = ..., device_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class PinModelResponse(_message.Message):
    __slots__ = ("pin",)
    PIN_FIELD_NUMBER: _ClassVar[int]
    pin: Pin
    def __init__(self, pin: _Optional[_Union[Pin, _Mapping]] = ...) -> None: ...

class UnpinModelRequest(_message.Message):
    __slots__ = ("model", "pool_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    pool_id: str
    def __init__(self, model: _Optional[str] = ..., pool_id: _Optional[str] = ...) -> None: ...

class UnpinModelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StartWorkerRequest(_message.Message):
    __slots__ = ("model", "pool_id", "device_ids", "engine", "engine_options")
    class EngineOptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_IDS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    ENGINE_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    pool_id: str
    device_ids: _containers.RepeatedScalarFieldContainer[str]
    engine: str
    engine_options: _containers.ScalarMap[str, str]
    def __init__(self, model: _Optional[str] = ..., pool_id: _Optional[str] = ..., device_ids: _Optional[_Iterable[str]] = ..., engine: _Optional[str] = ..., engine_options: _Optional[_Mapping[str, str]] = ...) -> None: ...

class StartWorkerResponse(_message.Message):
    __slots__ = ("worker",)
    WORKER_FIELD_NUMBER: _ClassVar[int]
    worker: _common_pb2.WorkerInfo
    def __init__(self, worker: _Optional[_Union[_common_pb2.WorkerInfo, _Mapping]] = ...) -> None: ...

class StopWorkerRequest(_message.Message):
    __slots__ = ("worker_id", "force")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    force: bool
    def __init__(self, worker_id: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class StopWorkerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DrainPoolRequest(_message.Message):
    __slots__ = ("pool_id", "drain")
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    pool_id: str
    drain: bool
    def __init__(self, pool_id: _Optional[str] = ..., drain: _Optional[bool] = ...) -> None: ...

class DrainPoolResponse(_message.Message):
    __slots__ = ("pool",)
    POOL_FIELD_NUMBER: _ClassVar[int]
    pool: _common_pb2.PoolInfo
    def __init__(self, pool: _Optional[_Union[_common_pb2.PoolInfo, _Mapping]] = ...) -> None: ...

class PreloadModelRequest(_message.Message):
    __slots__ = ("model", "pool_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    pool_id: str
    def __init__(self, model: _Optional[str] = ..., pool_id: _Optional[str] = ...) -> None: ...

class PreloadModelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EvictModelRequest(_message.Message):
    __slots__ = ("model", "pool_id", "from_disk")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_DISK_FIELD_NUMBER: _ClassVar[int]
    model: str
    pool_id: str
    from_disk: bool
    def __init__(self, model: _Optional[str] = ..., pool_id: _Optional[str] = ..., from_disk: _Optional[bool] = ...) -> None: ...

class EvictModelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PolicyVersion(_message.Message):
    __slots__ = ("version", "language", "source", "created_at", "author", "active")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    version: int
    language: str
    source: str
    created_at: _timestamp_pb2.Timestamp
    author: str
    active: bool
    def __init__(self, version: _Optional[int] = ..., language: _Optional[str] = ..., source: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., author: _Optional[str] = ..., active: _Optional[bool] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetPolicyResponse(_message.Message):
    __slots__ = ("active", "editable")
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    EDITABLE_FIELD_NUMBER: _ClassVar[int]
    active: PolicyVersion
    editable: bool
    def __init__(self, active: _Optional[_Union[PolicyVersion, _Mapping]] = ..., editable: _Optional[bool] = ...) -> None: ...

class ListPolicyVersionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPolicyVersionsResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[PolicyVersion]
    def __init__(self, versions: _Optional[_Iterable[_Union[PolicyVersion, _Mapping]]] = ...) -> None: ...

class PolicyProblem(_message.Message):
    __slots__ = ("line", "message")
    LINE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    line: int
    message: str
    def __init__(self, line: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ValidatePolicyRequest(_message.Message):
    __slots__ = ("source",)
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    source: str
    def __init__(self, source: _Optional[str] = ...) -> None: ...

class ValidatePolicyResponse(_message.Message):
    __slots__ = ("ok", "problems")
    OK_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    problems: _containers.RepeatedCompositeFieldContainer[PolicyProblem]
    def __init__(self, ok: _Optional[bool] = ..., problems: _Optional[_Iterable[_Union[PolicyProblem, _Mapping]]] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("action", "job_id", "worker_id", "pool_id", "model_ref", "device_ids", "reason", "rejected")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_REF_FIELD_NUMBER: _ClassVar[int]
    DEVICE_IDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    action: str
    job_id: str
    worker_id: str
    pool_id: str
    model_ref: str
    device_ids: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    rejected: str
    def __init__(self, action: _Optional[str] = ..., job_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., pool_id: _Optional[str] = ..., model_ref: _Optional[str] = ..., device_ids: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ..., rejected: _Optional[str] = ...) -> None: ...

class DryRunPolicyRequest(_message.Message):
    __slots__ = ("source",)
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    source: str
    def __init__(self, source: _Optional[str] = ...) -> None: ...

class DryRunPolicyResponse(_message.Message):
    __slots__ = ("policy_decisions", "builtin_decisions", "problems", "policy_ms", "builtin_ms")
    POLICY_DECISIONS_FIELD_NUMBER: _ClassVar[int]
    BUILTIN_DECISIONS_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    POLICY_MS_FIELD_NUMBER: _ClassVar[int]
    BUILTIN_MS_FIELD_NUMBER: _ClassVar[int]
    policy_decisions: _containers.RepeatedCompositeFieldContainer[Decision]
    builtin_decisions: _containers.RepeatedCompositeFieldContainer[Decision]
    problems: _containers.RepeatedCompositeFieldContainer[PolicyProblem]
    policy_ms: float
    builtin_ms: float
    def __init__(self, policy_decisions: _Optional[_Iterable[_Union[Decision, _Mapping]]] = ..., builtin_decisions: _Optional[_Iterable[_Union[Decision, _Mapping]]] = ..., problems: _Optional[_Iterable[_Union[PolicyProblem, _Mapping]]] = ..., policy_ms: _Optional[float] = ..., builtin_ms: _Optional[float] = ...) -> None: ...

class ActivatePolicyRequest(_message.Message):
    __slots__ = ("source", "version", "builtin")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BUILTIN_FIELD_NUMBER: _ClassVar[int]
    source: str
    version: int
    builtin: bool
    def __init__(self, source: _Optional[str] = ..., version: _Optional[int] = ..., builtin: _Optional[bool] = ...) -> None: ...

class ActivatePolicyResponse(_message.Message):
    __slots__ = ("active",)
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    active: PolicyVersion
    def __init__(self, active: _Optional[_Union[PolicyVersion, _Mapping]] = ...) -> None: ...

class Quota(_message.Message):
    __slots__ = ("max_concurrent_jobs", "max_vram_bytes", "token_budget", "auto_refill", "submit_rate_per_second")
    MAX_CONCURRENT_JOBS_FIELD_NUMBER: _ClassVar[int]
    MAX_VRAM_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOKEN_BUDGET_FIELD_NUMBER: _ClassVar[int]
    AUTO_REFILL_FIELD_NUMBER: _ClassVar[int]
    SUBMIT_RATE_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    max_concurrent_jobs: int
    max_vram_bytes: int
    token_budget: int
    auto_refill: bool
    submit_rate_per_second: float
    def __init__(self, max_concurrent_jobs: _Optional[int] = ..., max_vram_bytes: _Optional[int] = ..., token_budget: _Optional[int] = ..., auto_refill: _Optional[bool] = ..., submit_rate_per_second: _Optional[float] = ...) -> None: ...

class Tenant(_message.Message):
    __slots__ = ("tenant_id", "name", "quota", "credit_tokens", "created_at")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    CREDIT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    name: str
    quota: Quota
    credit_tokens: int
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, tenant_id: _Optional[str] = ..., name: _Optional[str] = ..., quota: _Optional[_Union[Quota, _Mapping]] = ..., credit_tokens: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateTenantRequest(_message.Message):
    __slots__ = ("name", "quota")
    NAME_FIELD_NUMBER: _ClassVar[int]
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    name: str
    quota: Quota
    def __init__(self, name: _Optional[str] = ..., quota: _Optional[_Union[Quota, _Mapping]] = ...) -> None: ...

class CreateTenantResponse(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: Tenant
    def __init__(self, tenant: _Optional[_Union[Tenant, _Mapping]] = ...) -> None: ...

class ListTenantsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTenantsResponse(_message.Message):
    __slots__ = ("tenants",)
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    tenants: _containers.RepeatedCompositeFieldContainer[Tenant]
    def __init__(self, tenants: _Optional[_Iterable[_Union[Tenant, _Mapping]]] = ...) -> None: ...

class SetQuotaRequest(_message.Message):
    __slots__ = ("tenant_id", "quota")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    quota: Quota
    def __init__(self, tenant_id: _Optional[str] = ..., quota: _Optional[_Union[Quota, _Mapping]] = ...) -> None: ...

class SetQuotaResponse(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: Tenant
    def __init__(self, tenant: _Optional[_Union[Tenant, _Mapping]] = ...) -> None: ...

class AddCreditRequest(_message.Message):
    __slots__ = ("tenant_id", "tokens")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    tokens: int
    def __init__(self, tenant_id: _Optional[str] = ..., tokens: _Optional[int] = ...) -> None: ...

class AddCreditResponse(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: Tenant
    def __init__(self, tenant: _Optional[_Union[Tenant, _Mapping]] = ...) -> None: ...

class ApiKey(_message.Message):
    __slots__ = ("key_id", "tenant_id", "scope", "name", "created_at", "revoked", "secret")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    tenant_id: str
    scope: ApiKeyScope
    name: str
    created_at: _timestamp_pb2.Timestamp
    revoked: bool
    secret: str
    def __init__(self, key_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., scope: _Optional[_Union[ApiKeyScope, str]] = ..., name: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked: _Optional[bool] = ..., secret: _Optional[str] = ...) -> None: ...

class CreateApiKeyRequest(_message.Message):
    __slots__ = ("tenant_id", "scope", "name")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    scope: ApiKeyScope
    name: str
    def __init__(self, tenant_id: _Optional[str] = ..., scope: _Optional[_Union[ApiKeyScope, str]] = ..., name: _Optional[str] = ...) -> None: ...

class CreateApiKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: ApiKey
    def __init__(self, key: _Optional[_Union[ApiKey, _Mapping]] = ...) -> None: ...

class ListApiKeysRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class ListApiKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[ApiKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[ApiKey, _Mapping]]] = ...) -> None: ...

class RevokeApiKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class RevokeApiKeyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateJoinTokenRequest(_message.Message):
    __slots__ = ("pool_id", "ttl_seconds")
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    pool_id: str
    ttl_seconds: int
    def __init__(self, pool_id: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class CreateJoinTokenResponse(_message.Message):
    __slots__ = ("token", "expires_at")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    token: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, token: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class EnrollProviderKeyRequest(_message.Message):
    __slots__ = ("provider_id", "public_key")
    PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    provider_id: str
    public_key: bytes
    def __init__(self, provider_id: _Optional[str] = ..., public_key: _Optional[bytes] = ...) -> None: ...

class EnrollProviderKeyResponse(_message.Message):
    __slots__ = ("provider_key_id",)
    PROVIDER_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    provider_key_id: str
    def __init__(self, provider_key_id: _Optional[str] = ...) -> None: ...

class RevokeCertificateRequest(_message.Message):
    __slots__ = ("serial_hex", "reason")
    SERIAL_HEX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    serial_hex: str
    reason: str
    def __init__(self, serial_hex: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RevokeCertificateResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UsageRecord(_message.Message):
    __slots__ = ("job_id", "tenant_id", "model_ref", "pool_id", "provider_id", "prompt_tokens", "completion_tokens", "duration_ms", "vram_seconds", "finished_at")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_REF_FIELD_NUMBER: _ClassVar[int]
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    VRAM_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    tenant_id: str
    model_ref: str
    pool_id: str
    provider_id: str
    prompt_tokens: int
    completion_tokens: int
    duration_ms: int
    vram_seconds: float
    finished_at: _timestamp_pb2.Timestamp
    def __init__(self, job_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., model_ref: _Optional[str] = ..., pool_id: _Optional[str] = ..., provider_id: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., duration_ms: _Optional[int] = ..., vram_seconds: _Optional[float] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ExportUsageRequest(_message.Message):
    __slots__ = ("tenant_id", "start", "end", "format")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    format: str
    def __init__(self, tenant_id: _Optional[str] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., format: _Optional[str] = ...) -> None: ...

class ExportUsageResponse(_message.Message):
    __slots__ = ("records", "rendered")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    RENDERED_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[UsageRecord]
    rendered: str
    def __init__(self, records: _Optional[_Iterable[_Union[UsageRecord, _Mapping]]] = ..., rendered: _Optional[str] = ...) -> None: ...

class Earning(_message.Message):
    __slots__ = ("pool_id", "provider_id", "tokens", "vram_seconds", "jobs")
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    VRAM_SECONDS_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    pool_id: str
    provider_id: str
    tokens: int
    vram_seconds: float
    jobs: int
    def __init__(self, pool_id: _Optional[str] = ..., provider_id: _Optional[str] = ..., tokens: _Optional[int] = ..., vram_seconds: _Optional[float] = ..., jobs: _Optional[int] = ...) -> None: ...

class GetEarningsRequest(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    def __init__(self, start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetEarningsResponse(_message.Message):
    __slots__ = ("earnings",)
    EARNINGS_FIELD_NUMBER: _ClassVar[int]
    earnings: _containers.RepeatedCompositeFieldContainer[Earning]
    def __init__(self, earnings: _Optional[_Iterable[_Union[Earning, _Mapping]]] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("id", "time", "principal", "action", "target", "outcome", "correlation_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    time: _timestamp_pb2.Timestamp
    principal: str
    action: str
    target: str
    outcome: str
    correlation_id: str
    def __init__(self, id: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., principal: _Optional[str] = ..., action: _Optional[str] = ..., target: _Optional[str] = ..., outcome: _Optional[str] = ..., correlation_id: _Optional[str] = ...) -> None: ...

class ListAuditEntriesRequest(_message.Message):
    __slots__ = ("after_id", "page_size")
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    after_id: int
    page_size: int
    def __init__(self, after_id: _Optional[int] = ..., page_size: _Optional[int] = ...) -> None: ...

class ListAuditEntriesResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ...) -> None: ...
