"""Tenant quotas: the limits, the per-cycle ledger decide and the validator share, and
the credit a finished job draws on. Platform mode only (Config.tenancy; ARCHITECTURE §6).

Quotas are enforced AT SCHEDULING TIME, never at admission: over-quota work waits in
the queue (a Wait whose reason names the quota, which the loop publishes as the job's
JOB_WAITING fact) and is never rejected for quota. Per tenant (0 = no limit):

  max_concurrent_jobs  jobs in worker slots at once, dispatched or running, over every
                       model. A dispatch that would exceed it is not made.
  vram_ceiling_bytes   device memory held for the tenant:
                         held = sum over the workers running >= 1 of its jobs of
                                memory_bytes (held on each device) x devices in the mask
                       A worker counts from the dispatch of the tenant's first job to it
                       until its last such job ends. Workers are never shared between
                       tenants at once, so a worker counts against one tenant at most,
                       and filling more slots of a worker the tenant already holds costs
                       nothing. Taking an idle worker (or having one started) must keep
                       held <= the ceiling; a STARTING worker counts once it runs a job.
  token budget         token_budget > 0 and not auto_refill: the tenant's jobs wait while
                       credit_tokens <= 0. credit_tokens falls by prompt + completion
                       tokens of every job of the tenant as it finishes (`charge`),
                       whatever its limits; the operator raises it (AddCredit). A running
                       job is never cut short for budget, so credit may end below zero.
                       With auto_refill the budget does not hold jobs back (billing
                       settles the use); token_budget's amount is the operator's grant,
                       the scheduler reads only the credit.

Reasons (stable prefixes; the numbers are the tenant's own):
  "tenant quota: 4 of 4 concurrent jobs"
  "tenant token budget exhausted: credit 0"
  "tenant VRAM ceiling: 24.0 GiB held + 16.0 GiB for a worker > 32.0 GiB"

Who keeps what: the registry counts each tenant's jobs in slots and the VRAM its
workers hold as slots are reserved and unreserved (fleet.FleetIndex); the
orchestrator keeps the limits (loaded from the store at start, replaced whole when an
admin changes them: Orchestrator.tenant_limits_changed / reload_tenant); the snapshot
carries both; `Ledger` adds what one cycle's dispatches take.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.core import Orchestrator
    from orchestrator.jobs import JobRecord

_GIB = float(1 << 30)


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """One tenant's quota and credit as the scheduler reads them (0 = no limit)."""
    max_concurrent_jobs: int = 0
    vram_ceiling_bytes: int = 0
    token_budget: int = 0
    credit_tokens: int = 0
    auto_refill: bool = False

    @property
    def on_budget(self) -> bool:
        """Does the token budget hold jobs back (a budget, and no auto-refill)?"""
        return self.token_budget > 0 and not self.auto_refill

    @classmethod
    def of(cls, row: Any) -> "TenantLimits":
        """From a store.TenantRow (None = unlimited there, 0 here)."""
        return cls(int(row.max_concurrent_jobs or 0), int(row.vram_ceiling_bytes or 0),
                   int(row.token_budget or 0), int(row.credit_tokens or 0),
                   bool(row.auto_refill))


UNLIMITED = TenantLimits()


def concurrency_reason(running: int, limit: int) -> str:
    return f"tenant quota: {running} of {limit} concurrent jobs"


def budget_reason(credit: int) -> str:
    return f"tenant token budget exhausted: credit {credit}"


def vram_reason(held: int, need: int, ceiling: int) -> str:
    return (f"tenant VRAM ceiling: {held / _GIB:.1f} GiB held + {need / _GIB:.1f} GiB for a "
            f"worker > {ceiling / _GIB:.1f} GiB")


def is_quota_reason(reason: str) -> bool:
    return reason.startswith("tenant ")


class Ledger:
    """Each tenant's use during one cycle: the snapshot's counts plus what this cycle's
    dispatches took. Claims only grow within a cycle (`take`); jobs end between cycles,
    and the next snapshot shows it. A tenant without limits is never held back."""

    __slots__ = ("limits", "running", "vram", "_jobs", "_bytes", "_why")

    def __init__(self, limits: Mapping[str, TenantLimits], running: Mapping[str, int],
                 vram: Mapping[str, int]) -> None:
        self.limits, self.running, self.vram = limits, running, vram
        self._jobs: dict[str, int] = {}  # tenant -> jobs dispatched this cycle
        self._bytes: dict[str, int] = {}  # tenant -> worker bytes taken this cycle
        self._why: dict[str, str] = {}  # tenant -> blocked() as of its last claim

    def jobs(self, tenant: str) -> int:
        return self.running.get(tenant, 0) + self._jobs.get(tenant, 0)

    def held(self, tenant: str) -> int:
        return self.vram.get(tenant, 0) + self._bytes.get(tenant, 0)

    def blocked(self, tenant: str) -> str:
        """Why the tenant may not have one more job dispatched ("" if it may): its
        concurrent-job quota or its exhausted token budget. (VRAM: `over_vram`.)"""
        why = self._why.get(tenant)
        if why is None:
            why = self._why[tenant] = self._blocked(tenant)
        return why

    def _blocked(self, tenant: str) -> str:
        lim = self.limits.get(tenant)
        if lim is None:
            return ""
        if lim.max_concurrent_jobs and self.jobs(tenant) >= lim.max_concurrent_jobs:
            return concurrency_reason(self.jobs(tenant), lim.max_concurrent_jobs)
        if lim.on_budget and lim.credit_tokens <= 0:
            return budget_reason(lim.credit_tokens)
        return ""

    def room(self, tenant: str, most: int) -> int:
        """How many more jobs the tenant may have dispatched, at most `most`."""
        lim = self.limits.get(tenant)
        if lim is None or not lim.max_concurrent_jobs:
            return most
        return max(0, min(most, lim.max_concurrent_jobs - self.jobs(tenant)))

    def over_vram(self, tenant: str, need: int) -> str:
        """Why the tenant may not take a worker holding `need` bytes ("" if it may)."""
        lim = self.limits.get(tenant)
        if lim is None or not lim.vram_ceiling_bytes or not need:
            return ""
        held = self.held(tenant)
        if held + need > lim.vram_ceiling_bytes:
            return vram_reason(held, need, lim.vram_ceiling_bytes)
        return ""

    def take(self, tenant: str, worker_bytes: int = 0) -> None:
        """Claim a slot for one job of the tenant, and `worker_bytes` when the job takes
        a worker the tenant did not hold."""
        self._jobs[tenant] = self._jobs.get(tenant, 0) + 1
        self._why.pop(tenant, None)
        if worker_bytes:
            self._bytes[tenant] = self._bytes.get(tenant, 0) + worker_bytes


def worker_bytes(memory_bytes: int, devices: int) -> int:
    """What a worker holds for its tenant: per-device bytes x devices in its mask."""
    return memory_bytes * devices


# ---- credit ---------------------------------------------------------------------------------

def tokens_of(job: "JobRecord") -> int:
    """What a finished job draws from its tenant's credit: prompt + completion tokens."""
    return int(job.usage.prompt_tokens) + int(job.usage.completion_tokens)


def charge(orch: "Orchestrator", job: "JobRecord") -> int:
    """Draw a finished job's tokens from its tenant's credit: at once in the limits the
    scheduler reads, and write-behind in the store (quota_store.debit). Call it once per
    job, when it reaches its terminal state (the orchestrator does, as the job's last
    attempt ends: core.Orchestrator._run). Platform mode only; returns the tokens drawn
    (0 when nothing was). Never raises: a debit the store loses is logged."""
    if not orch.cfg.tenancy or not job.tenant_id:
        return 0
    tokens = tokens_of(job)
    if tokens <= 0:
        return 0
    lim = orch.tenant_limits.get(job.tenant_id)
    if lim is not None:
        orch.tenant_limits_changed(job.tenant_id, dataclasses.replace(
            lim, credit_tokens=lim.credit_tokens - tokens))
    if orch.store is not None:
        from orchestrator import quota_store
        quota_store.debit(orch.store, job.tenant_id, tokens, job.job_id)
    return tokens


__all__ = ["TenantLimits", "UNLIMITED", "Ledger", "charge", "tokens_of", "worker_bytes",
           "concurrency_reason", "budget_reason", "vram_reason", "is_quota_reason"]
