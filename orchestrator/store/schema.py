"""The durable tables, as SQLAlchemy Core metadata.

This module is the *current* shape of the database; the migrations under
migrations/versions/ are the history that produces it, and a test asserts that the two
agree (alembic's compare_metadata finds no difference on SQLite and PostgreSQL). To
change a table: edit it here, then add a migration; never edit an applied migration.

jobs — one row per job. The columns are an index for the queries the orchestrator
needs (status, queue order, idempotency, tenancy, retention); `job` holds the whole
serialized llama_orch.v1.Job (spec, seed, worker, usage, error, output, proof, ...),
which is the record itself. Times are float epoch seconds; 0 means "not yet" (and for
not_before: "now").

job_events — a job's events (serialized llama_orch.v1.JobEvent) by (job_id, seq), so a
client can resume after a restart. There is deliberately no foreign key to jobs:
events are written behind, batched with other callers' writes, and an ordering slip
must never fail someone else's commit. Retention deletes both tables explicitly.

tenants — who a job, an API key and (later) a quota or bill belongs to. The quota
columns (NULL = no limit) are read by the scheduler's quota engineer; 0002 only adds
them. credit_tokens and auto_refill back token budgets.

api_keys — `lo_<id>_<secret>` keys. Only a keyed hash of the secret is stored:
hash = HMAC-SHA256(key=salt, msg=secret), hex, with a random per-key salt; the
plaintext is shown once at creation. `prefix` ("lo_<id>") is what lists display.
revoked_at/last_used_at: 0 = never. Keys are never deleted, only revoked.

audit_log — append-only: the store offers insert and read, nothing else, and a trigger
on each backend refuses UPDATE and DELETE (and TRUNCATE on PostgreSQL), so even a
hand-written statement cannot rewrite history. Retention, when it comes, must drop
and re-create that trigger in its own migration-like, audited step.

usage_records (0003) — the usage ledger: one row per finished job (succeeded, failed or
cancelled), written behind by orchestrator/usage.py, the source of billing exports
and provider earnings. job_id is the primary key, so a job that finishes again (after
a restart, say) replaces its row instead of counting twice. tenant_id is the plaintext
tenant (bills need it; metrics never carry it). No foreign keys: the rows are written
behind in other callers' batches, like job_events. tenants.submit_rate_per_second
(0003) is the tenant's submission rate limit (NULL = none; orchestrator/ratelimit.py).

policy_versions (0004) — the scheduler policies an operator stored (orchestrator/policies.py):
one row per version (numbered 1, 2, ... in order), its language ('lua' or 'builtin'),
source, author (an API key id, or 'config' for cfg.scheduler.policy) and whether it is
the active one. At most one row is active; none active means the built-in scheduler.

pins (0005) — the operator's model pins (AdminService PinModel/UnpinModel): one row per
(model_ref, pool_id, device_id) where the model's workers are never evicted. The
orchestrator loads them at start (Orchestrator.pins), so a pin outlives a restart. A pin
may name a pool that is not connected (yet): the scheduler matches pins to workers.

Join tokens and provider keys live in files in pki_dir, not here (orchestrator/join.py:
the CLI writes them on the orchestrator's machine while it runs).
"""

from __future__ import annotations

from sqlalchemy import (BigInteger, Boolean, CheckConstraint, Column, Double, ForeignKey,
                        Index, Integer, LargeBinary, MetaData, String, Table, Text, false)

# Deterministic constraint names, identical on every backend (migrations use them too).
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
}

metadata = MetaData(naming_convention=NAMING)

jobs = Table(
    "jobs", metadata,
    Column("job_id", String(64), primary_key=True),
    # NULL when the client gave none (NULLs never collide with each other).
    Column("idempotency_key", String(255), nullable=True, unique=True),
    Column("tenant_id", String(128), nullable=False, server_default=""),
    Column("model_ref", Text, nullable=False),
    # Lower runs first; the orchestrator's Priority value, not the proto enum.
    Column("priority", Integer, nullable=False),
    # llama_orch.v1.JobStatus value.
    Column("status", Integer, nullable=False),
    # FIFO position within a priority class, assigned by the orchestrator.
    Column("queue_order", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    # Earliest time the job may be dispatched (retry backoff); 0 = now.
    Column("not_before", Double, nullable=False, server_default="0"),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    Column("finished_at", Double, nullable=False, server_default="0"),
    Column("correlation_id", String(128), nullable=False, server_default=""),
    # Serialized llama_orch.v1.Job: the record itself.
    Column("job", LargeBinary, nullable=False),
    Index("ix_jobs_status_priority_queue_order", "status", "priority", "queue_order"),
)

job_events = Table(
    "job_events", metadata,
    Column("job_id", String(64), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    # Serialized llama_orch.v1.JobEvent.
    Column("event", LargeBinary, nullable=False),
)

# Columns update_job rewrites; the rest are fixed at admission.
JOB_MUTABLE = ("model_ref", "priority", "status", "queue_order", "attempts", "not_before",
               "updated_at", "finished_at", "job")

tenants = Table(
    "tenants", metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("created_at", Double, nullable=False),
    # Quotas (NULL = unlimited), enforced at scheduling time in platform mode.
    Column("max_concurrent_jobs", Integer, nullable=True),
    Column("vram_ceiling_bytes", BigInteger, nullable=True),
    Column("token_budget", BigInteger, nullable=True),
    Column("credit_tokens", BigInteger, nullable=False, server_default="0"),
    Column("auto_refill", Boolean, nullable=False, server_default=false()),
    # Submissions per second (burst 2x), checked before admission; NULL = no limit (0003).
    Column("submit_rate_per_second", Double, nullable=True),
)

api_keys = Table(
    "api_keys", metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(64), ForeignKey("tenants.id"), nullable=False),
    Column("scope", String(16), nullable=False),
    Column("name", String(255), nullable=False, server_default=""),
    Column("prefix", String(64), nullable=False),
    Column("salt", String(64), nullable=False),
    Column("hash", String(128), nullable=False),
    Column("created_at", Double, nullable=False),
    Column("revoked_at", Double, nullable=False, server_default="0"),
    Column("last_used_at", Double, nullable=False, server_default="0"),
    CheckConstraint("scope IN ('client', 'admin')", name="scope"),
    Index("ix_api_keys_tenant_id", "tenant_id"),
)

# Integer on SQLite: only an INTEGER PRIMARY KEY autoincrements there.
AUDIT_ID = BigInteger().with_variant(Integer, "sqlite")

audit_log = Table(
    "audit_log", metadata,
    Column("id", AUDIT_ID, primary_key=True, autoincrement=True),
    Column("time", Double, nullable=False),
    # An API key id, "anonymous", "local" (no auth), or a pool's identity.
    Column("principal", String(128), nullable=False),
    # "<Service>/<Method>", e.g. "AdminService/RevokeApiKey".
    Column("action", String(128), nullable=False),
    Column("target", String(255), nullable=False, server_default=""),
    # "OK" or the stable error code the caller got.
    Column("outcome", String(64), nullable=False),
    Column("correlation_id", String(128), nullable=False, server_default=""),
    Column("detail", Text, nullable=False, server_default=""),
)

usage_records = Table(
    "usage_records", metadata,
    Column("job_id", String(64), primary_key=True),
    Column("tenant_id", String(128), nullable=False, server_default=""),
    Column("model_ref", Text, nullable=False),
    # The pool that ran the job's last attempt ("" if it never ran) and who provides it:
    # the pool's provider key id when it registered with one, else the pool id.
    Column("pool_id", String(128), nullable=False, server_default=""),
    Column("provider_id", String(128), nullable=False, server_default=""),
    # "succeeded" | "failed" | "cancelled", and the stable error code of the last two.
    Column("status", String(16), nullable=False),
    Column("error_code", String(64), nullable=False, server_default=""),
    Column("prompt_tokens", BigInteger, nullable=False, server_default="0"),
    Column("completion_tokens", BigInteger, nullable=False, server_default="0"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    # Epoch seconds: admitted, last attempt started (0 = never ran), finished.
    Column("created_at", Double, nullable=False),
    Column("started_at", Double, nullable=False, server_default="0"),
    Column("finished_at", Double, nullable=False),
    # started -> finished, and admitted -> started (-> finished if it never ran).
    Column("duration_ms", BigInteger, nullable=False, server_default="0"),
    Column("queue_ms", BigInteger, nullable=False, server_default="0"),
    # Device bytes held x running seconds / the worker's slots (orchestrator/usage.py).
    Column("vram_byte_seconds", Double, nullable=False, server_default="0"),
    Index("ix_usage_records_finished_at", "finished_at"),
    Index("ix_usage_records_tenant_id_finished_at", "tenant_id", "finished_at"),
)

policy_versions = Table(
    "policy_versions", metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("language", String(16), nullable=False),
    Column("source", Text, nullable=False, server_default=""),
    Column("created_at", Double, nullable=False),
    Column("author", String(128), nullable=False, server_default=""),
    Column("active", Boolean, nullable=False, server_default=false()),
    CheckConstraint("language IN ('lua', 'builtin')", name="language"),
)

pins = Table(
    "pins", metadata,
    Column("model_ref", Text, primary_key=True),
    Column("pool_id", String(128), primary_key=True),
    Column("device_id", String(128), primary_key=True),
    Column("created_at", Double, nullable=False),
)
