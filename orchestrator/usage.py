"""The usage ledger: one record per finished job, which bills and provider earnings sum.

    usage.job_finished(orch, job)               the orchestrator, when a job ends
    await usage.export(store, tenant, start, end)  -> Export: records + totals per tenant
    Export.render("csv" | "json")               the bill, with plaintext tenant ids
    await usage.earnings(store, start, end)     -> [EarningRow] per pool and provider

Recording. Every job that reaches a terminal state (succeeded, failed, cancelled)
yields one UsageRow, queued on the store's group-commit writer (write-behind, like
the audit log): the finishing path never waits for a commit and never fails because
of the ledger (a record the store refuses is logged, never raised). The row is queued
before the job's own outcome row, so it commits with it or before it. Rows are keyed
by job id and written as an upsert: a job that finishes again (recovered after a
crash, its outcome not yet committed) replaces its record, so nothing counts twice.
The ledger is kept in every mode that has a store; exports and earnings are what
platform mode bills with (ARCHITECTURE §6).

The figures of a record:

    prompt_tokens, completion_tokens   the job's Usage, as GetJob reports it
    started_at         when its last attempt started running (0: it never ran)
    duration_ms        finished_at - started_at (0 if it never ran)
    queue_ms           started_at - created_at (never ran: finished_at - created_at)
    pool_id            the pool of the worker it finished on ("" if on none)
    provider_id        that pool's provider key id (`ed25519:...`, from its signed
                       registration: PoolRecord.provider_key_id) if it has one, else
                       the pool id
    vram_byte_seconds  held_bytes x duration_s / slots, where
                         held_bytes = the sum of the bytes the worker reported on
                                      each of its devices when ready
                                      (WorkerInfo.device_bytes); if it reported
                                      none, its memory estimate x its devices
                         slots      = the worker's concurrent job slots (>= 1): a
                                      batching worker's memory is shared, and each
                                      job pays one slot's share whether or not the
                                      other slots were busy
                       If the worker is gone from the registry by the time the job
                       ends (it crashed), the model's estimate x its device count is
                       used, with one slot.

Earnings are quantities, not money: per pool and provider, the jobs served, prompt
and completion tokens and VRAM byte-seconds (GetEarnings' `tokens` is prompt +
completion). Prices are the operator's business: `llama-orch usage earnings` can
apply a price per 1k tokens and per GiB-hour (docs/SECURITY.md).

Metrics never carry a tenant id (nor a job id): the counters here are labelled by
job status and token kind only.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from prometheus_client import Counter

from common import log
from orchestrator import metrics
from orchestrator.jobs import JobRecord
from orchestrator.store import Store
from orchestrator.store.store import EarningRow, UsageRow

if TYPE_CHECKING:
    from orchestrator.core import Orchestrator

FORMATS = ("json", "csv")

RECORDS = Counter("orchd_usage_records_total", "Usage records of finished jobs, by job status.",
                  ["component", "status"], registry=metrics.REGISTRY)
TOKENS = Counter("orchd_usage_tokens_total",
                 "Tokens of finished jobs, by kind (prompt or completion).",
                 ["component", "kind"], registry=metrics.REGISTRY)
VRAM = Counter("orchd_usage_vram_byte_seconds_total",
               "Device memory x running time charged to finished jobs (byte-seconds).",
               ["component"], registry=metrics.REGISTRY)


# ---- recording ----------------------------------------------------------------------------

def provider_of(orch: Orchestrator, pool_id: str) -> str:
    """Who provides the pool: its provider key id, else the pool id ("" for no pool)."""
    if not pool_id:
        return ""
    pool = orch.registry.pools.get(pool_id)
    return getattr(pool, "provider_key_id", "") or pool_id


def _held(orch: Orchestrator, job: JobRecord) -> tuple[int, int]:
    """(bytes the job's worker holds on its devices, its slots); see the docstring."""
    worker = orch.registry.workers.get(job.worker_id) if job.worker_id else None
    if worker is not None and worker.worker_id == job.worker_id:
        held = sum(worker.device_bytes.values()) or worker.memory_estimate * len(worker.device_ids)
        return int(held), max(1, worker.slots)
    model = job.admitted.model
    return model.memory_estimate_bytes * model.device_count, 1


def record_of(orch: Orchestrator, job: JobRecord) -> UsageRow:
    """The usage record of a finished job (the module docstring gives each figure)."""
    finished = job.finished_at or time.time()
    ran = bool(job.pool_id) and 0 < job.started_at <= finished
    started = job.started_at if ran else 0.0
    running_s = finished - started if ran else 0.0
    vram = 0.0
    if ran:
        held, slots = _held(orch, job)
        vram = held * running_s / slots
    return UsageRow(
        job_id=job.job_id, tenant_id=job.tenant_id, model_ref=job.model_ref,
        status=job.state.value, finished_at=finished, created_at=job.created_at,
        pool_id=job.pool_id, provider_id=provider_of(orch, job.pool_id),
        error_code=job.error.code if job.error is not None else "",
        prompt_tokens=int(job.usage.prompt_tokens),
        completion_tokens=int(job.usage.completion_tokens), attempts=job.attempts,
        started_at=started, duration_ms=round(running_s * 1000),
        queue_ms=round(max(0.0, (started or finished) - job.created_at) * 1000),
        vram_byte_seconds=vram)


def job_finished(orch: Orchestrator, job: JobRecord) -> None:
    """Record a job that reached its terminal state: write-behind, returns at once,
    never raises (a lost record is logged as `usage.lost`)."""
    try:
        row = record_of(orch, job)
        if orch.store is not None:
            orch.store.append_usage([row])
    except Exception as exc:  # noqa: BLE001 - the ledger must never wedge a job's end
        log.emit("orchestrator", "usage.lost", f"usage of {job.job_id} not recorded: {exc!r}",
                 level="error", job_id=job.job_id, correlation_id=job.correlation_id)
        return
    RECORDS.labels(status=row.status, **metrics.C).inc()
    TOKENS.labels(kind="prompt", **metrics.C).inc(row.prompt_tokens)
    TOKENS.labels(kind="completion", **metrics.C).inc(row.completion_tokens)
    VRAM.labels(**metrics.C).inc(row.vram_byte_seconds)


# ---- billing exports ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Totals:
    """One tenant's sums over the records of an export."""

    tenant_id: str
    jobs: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    duration_ms: int = 0
    vram_byte_seconds: float = 0.0


def totals(records: Iterable[UsageRow]) -> list[Totals]:
    """Per tenant (by tenant id), summed from exactly these records."""
    sums: dict[str, list] = {}
    for r in records:
        s = sums.setdefault(r.tenant_id, [0, 0, 0, 0, 0.0])
        s[0] += 1
        s[1] += r.prompt_tokens
        s[2] += r.completion_tokens
        s[3] += r.duration_ms
        s[4] += r.vram_byte_seconds
    return [Totals(t, *sums[t]) for t in sorted(sums)]


def iso(seconds: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds; "" for 0 (never)."""
    if not seconds:
        return ""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


_TIMES = ("created_at", "started_at", "finished_at")
CSV_COLUMNS = ("row", "job_id", "tenant_id", "model_ref", "pool_id", "provider_id", "status",
               "error_code", "jobs", "prompt_tokens", "completion_tokens", "attempts",
               "created_at", "started_at", "finished_at", "duration_ms", "queue_ms",
               "vram_byte_seconds")


def _record_dict(r: UsageRow) -> dict:
    d = {f: getattr(r, f) for f in r.__slots__}
    for k in _TIMES:
        d[k] = iso(d[k]) or None
    return d


@dataclass(frozen=True)
class Export:
    """A billing export: the records finished in [start, end) (end 0: up to now) of one
    tenant (or all, tenant_id ""), and each tenant's totals over them."""

    tenant_id: str
    start: float
    end: float
    records: Sequence[UsageRow]
    totals: Sequence[Totals]

    def render(self, fmt: str) -> str:
        """The export as "json" (one object: period, records, totals) or "csv" (one
        header; a `job` row per record, then a `total` row per tenant)."""
        if fmt == "json":
            return json.dumps({
                "tenant_id": self.tenant_id or None,
                "from": iso(self.start) or None, "to": iso(self.end) or None,
                "records": [_record_dict(r) for r in self.records],
                "totals": [asdict(t) for t in self.totals]}, indent=1)
        if fmt != "csv":
            raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
        out = io.StringIO()
        w = csv.DictWriter(out, CSV_COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in self.records:
            w.writerow({"row": "job", "jobs": 1,
                        **{k: ("" if v is None else v) for k, v in _record_dict(r).items()}})
        for t in self.totals:
            w.writerow({"row": "total", **asdict(t)})
        return out.getvalue()


async def export(store: Store, tenant_id: str = "", start: float = 0.0, end: float = 0.0,
                 limit: int = 0) -> Export:
    """Everything committed so far that finished in the period (at most `limit`
    records when it is set; the caller checks for more by asking one more)."""
    await store.settle()  # include jobs that finished a moment ago
    records = await store.usage_records(tenant_id, start, end, limit)
    return Export(tenant_id, start, end, records, totals(records))


async def earnings(store: Store, start: float = 0.0, end: float = 0.0) -> list[EarningRow]:
    """Per pool and provider over the period, summed in the database."""
    await store.settle()
    return await store.earnings(start, end)
