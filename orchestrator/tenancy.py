"""Tenant isolation: which jobs and facts a caller may see.

Rules (they hold whenever auth is on, in lab as in platform mode: keys are always bound
to a tenant; with auth off the one trusted operator, auth.LOCAL, sees everything):

- A job belongs to its submitter's tenant: JobRecord.tenant_id, stored in
  jobs.tenant_id and in the Job message.
- A client-scoped caller sees only its own tenant's jobs; an admin key sees all.
- Another tenant's job answers exactly as a job that does not exist — NOT_FOUND with
  the same message — so its existence does not leak. The refusal is audited.
- Facts follow their job: a fact with a job_id is shown only to whoever may see that
  job (a job no longer in memory: to admins only). Security facts (AUTH_DENIED,
  AUDIT) are for admins. Facts about the cluster (pools, workers, models) are shown
  to every authenticated caller.
- Idempotency keys are per tenant: the orchestrator stores "<tenant>:<key>", so one
  tenant's key can never return (or conflict with) another tenant's job; clients
  see their key as they sent it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

from common.errors import OrchError
from llama_orch.v1 import common_pb2, events_pb2
from orchestrator import auth
from orchestrator.auth import Principal
from orchestrator.jobs import JobRecord

KEY_COLUMN_WIDTH = 255  # jobs.idempotency_key
_ADMIN_FACTS = frozenset({events_pb2.FACT_KIND_AUTH_DENIED, events_pb2.FACT_KIND_AUDIT})


def not_found(job_id: str) -> OrchError:
    """The one answer for a job that does not exist or is not the caller's."""
    return OrchError("NOT_FOUND", f"no job {job_id!r}", param="job_id")


def may_see(who: Principal, job: JobRecord) -> bool:
    return who.sees_all or job.tenant_id == who.tenant_id


def check(who: Principal, job: JobRecord) -> JobRecord:
    """The job, if the caller may see it; else NOT_FOUND (and an audited refusal)."""
    if may_see(who, job):
        return job
    auth.note_refusal(f"job of another tenant ({job.tenant_id})")
    raise not_found(job.job_id)


def scoped_key(who: Principal, key: str) -> str:
    """The idempotency key as the orchestrator stores it (see the module docstring).
    A key too long for the column once prefixed is replaced by its sha256."""
    if not key or not who.tenant_id:
        return key
    scoped = f"{who.tenant_id}:{key}"
    if len(scoped) > KEY_COLUMN_WIDTH:
        scoped = f"{who.tenant_id}:sha256:{hashlib.sha256(key.encode()).hexdigest()}"
    return scoped


def job_proto(job: JobRecord) -> common_pb2.Job:
    """The Job message for clients: the idempotency key without its tenant prefix."""
    pb = job.to_proto()
    prefix = f"{job.tenant_id}:"
    if job.tenant_id and pb.idempotency_key.startswith(prefix):
        pb.idempotency_key = pb.idempotency_key[len(prefix):]
    return pb


def fact_filter(who: Principal, jobs: Mapping[str, JobRecord]
                ) -> Callable[[events_pb2.Fact], bool] | None:
    """A predicate for the facts the caller may see; None when it sees everything."""
    if who.sees_all:
        return None

    def visible(fact: events_pb2.Fact) -> bool:
        if fact.kind in _ADMIN_FACTS:
            return False
        if not fact.job_id:
            return True
        job = jobs.get(fact.job_id)
        return job is not None and job.tenant_id == who.tenant_id
    return visible
