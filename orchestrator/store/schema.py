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

Later migrations add tenants, API keys, usage ledger, audit log, ...: not here yet.
"""

from __future__ import annotations

from sqlalchemy import (BigInteger, Column, Double, Index, Integer, LargeBinary, MetaData,
                        String, Table, Text)

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
