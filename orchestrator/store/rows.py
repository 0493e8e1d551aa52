"""JobRow: one row of the jobs table, as the orchestrator sees it.

The columns are plain Python values; `job` is the full llama_orch.v1.Job message, which
the store serializes on write and parses on read. Protobuf appears here only as that
Job (and JobEvent in the events API) — no other message crosses the store's boundary.

Contract: `from_job` takes the indexed columns from the Job itself (id, status,
attempts, model ref, times, idempotency key, correlation id), so the columns and the
message agree; the orchestrator supplies what the Job does not carry (queue_order,
its priority class, not_before). To change a row, build a new one (from_job again, or
dataclasses.replace for column-only changes such as not_before).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from common.timestamps import to_seconds
from llama_orch.v1 import common_pb2

UNFINISHED = (common_pb2.JOB_STATUS_QUEUED, common_pb2.JOB_STATUS_DISPATCHED,
              common_pb2.JOB_STATUS_RUNNING)


@dataclass(frozen=True, slots=True)
class JobRow:
    """A job as stored. Frozen: fields cannot be reassigned (the Job message itself is
    mutable, but the store snapshots it when a write is queued, so later changes to it
    never reach the database unless written again)."""

    job_id: str
    idempotency_key: str | None
    tenant_id: str
    model_ref: str
    priority: int
    status: int  # llama_orch.v1.JobStatus value
    queue_order: int
    attempts: int
    not_before: float
    created_at: float
    updated_at: float
    finished_at: float
    correlation_id: str
    job: common_pb2.Job

    @classmethod
    def from_job(cls, job: common_pb2.Job, *, queue_order: int, priority: int,
                 not_before: float = 0.0, tenant_id: str = "") -> JobRow:
        """Row for `job`; tenant_id defaults to job.tenant_id, created_at to now."""
        created = to_seconds(job.created_at) or time.time()
        return cls(
            job_id=job.job_id,
            idempotency_key=job.idempotency_key or None,
            tenant_id=tenant_id or job.tenant_id,
            model_ref=job.model_ref,
            priority=int(priority),
            status=int(job.status),
            queue_order=int(queue_order),
            attempts=int(job.attempts),
            not_before=float(not_before),
            created_at=created,
            updated_at=to_seconds(job.updated_at) or created,
            finished_at=to_seconds(job.finished_at),
            correlation_id=job.correlation_id,
            job=job,
        )

    @property
    def unfinished(self) -> bool:
        return self.status in UNFINISHED

    # ---- (de)serialization: the store's business, not the caller's ---------------------

    def to_values(self) -> dict[str, Any]:
        """Column values for an INSERT/UPSERT (serializes the Job now)."""
        return {
            "job_id": self.job_id, "idempotency_key": self.idempotency_key,
            "tenant_id": self.tenant_id, "model_ref": self.model_ref,
            "priority": self.priority, "status": self.status,
            "queue_order": self.queue_order, "attempts": self.attempts,
            "not_before": self.not_before, "created_at": self.created_at,
            "updated_at": self.updated_at, "finished_at": self.finished_at,
            "correlation_id": self.correlation_id, "job": self.job.SerializeToString(),
        }

    @classmethod
    def from_db(cls, r: Any) -> JobRow:
        """Row from a result row of `select(jobs)`."""
        return cls(
            job_id=r.job_id, idempotency_key=r.idempotency_key, tenant_id=r.tenant_id,
            model_ref=r.model_ref, priority=r.priority, status=r.status,
            queue_order=r.queue_order, attempts=r.attempts, not_before=r.not_before,
            created_at=r.created_at, updated_at=r.updated_at, finished_at=r.finished_at,
            correlation_id=r.correlation_id, job=common_pb2.Job.FromString(r.job),
        )
