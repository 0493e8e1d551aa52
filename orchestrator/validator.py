"""One validator for every decision, built-in or scripted, before it is carried out.

Decisions are checked in list order against the snapshot plus what earlier accepted
decisions of the same cycle claimed (workers, jobs, device memory) or released
(memory of workers stopped by a StopWorker). Refuses, with the reason:
- Dispatch: a job that is not among the snapshot's eligible heads, not eligible yet
  (not_before > now) or already dispatched this cycle; a worker that is missing, not
  READY, stopped this cycle, whose free slots earlier dispatches of this cycle already
  took (a worker takes at most `slots - active` jobs per cycle), or serving another
  model. In platform mode (snapshot.tenancy) also: a worker that runs (or was sent this
  cycle) another tenant's jobs, and a job whose tenant is over its concurrent-job quota
  or out of token budget, or would pass its VRAM ceiling by taking an idle worker
  (orchestrator.quota), counting this cycle's earlier dispatches.
- StartWorker: a missing or unavailable pool, an engine the pool does not offer (when
  the model has queued heads to tell), an empty mask, repeated or unknown devices, a
  non-positive memory estimate, or memory overcommitted on any device of the mask.
- StopWorker: a missing worker, one that is not idle (READY with no job running),
  dispatched to or already stopped this cycle, or one serving a pinned model on its
  pinned devices.
- Preload / EvictModel: a missing or unavailable pool; evicting a pinned model's files
  from a pool it is pinned on.
Accepted decisions come back with "".
"""

from __future__ import annotations

from orchestrator.quota import Ledger, worker_bytes
from orchestrator.snapshot import (Decision, DeviceKey, Dispatch, EvictModel, JobView, Preload,
                                   Snapshot, StartWorker, StopWorker, Wait, WorkerView)
from orchestrator.types import WorkerPhase


def validate(snap: Snapshot, decisions: list[Decision]) -> list[tuple[Decision, str]]:
    """Return (decision, "") for accepted ones and (decision, why) for refused ones."""
    heads = {j.job_id: j for js in snap.queued.values() for j in js}
    engines = {m: js[0].engine for m, js in snap.queued.items()}
    freed: dict[DeviceKey, int] = {}
    used: dict[DeviceKey, int] = {}
    claimed_jobs: set[str] = set()
    taken: dict[str, int] = {}  # worker -> slots dispatched into this cycle
    stopped: set[str] = set()
    # Platform mode: each tenant's use so far, and whose jobs each worker now runs.
    ledger = Ledger(snap.tenants, snap.tenant_running, snap.tenant_vram) if snap.tenancy else None
    owner: dict[str, str] = {}
    out: list[tuple[Decision, str]] = []
    for d in decisions:
        why = ""
        if isinstance(d, Dispatch):
            job, w = heads.get(d.job_id), snap.workers.get(d.worker_id)
            if job is None or d.job_id in claimed_jobs:
                why = "job is not queued among this cycle's heads or already dispatched this cycle"
            elif job.not_before > snap.now:
                why = "job is not eligible yet (retry backoff)"
            elif w is None:
                why = "worker does not exist"
            elif w.free_slots <= 0:
                why = f"worker is {w.phase.value} with no free slot"
            elif d.worker_id in stopped:
                why = "worker is already claimed this cycle (stopped)"
            elif taken.get(d.worker_id, 0) >= w.free_slots:
                why = (f"worker's {w.free_slots} free slot(s) are already claimed this cycle "
                       f"({w.active} of {w.slots} running)")
            elif w.model_ref != job.model_ref:
                why = "worker serves a different model"
            elif ledger is not None and (why := _tenant_refusal(ledger, owner, job, w)):
                pass
            else:
                claimed_jobs.add(d.job_id)
                taken[d.worker_id] = taken.get(d.worker_id, 0) + 1
        elif isinstance(d, StartWorker):
            pool = snap.pools.get(d.pool_id)
            keys = [(d.pool_id, dev) for dev in d.device_ids]
            if pool is None or not pool.available:
                why = "pool is missing or unavailable"
            elif d.model_ref in engines and engines[d.model_ref] not in pool.engines:
                why = f"pool does not offer engine {engines[d.model_ref]!r}"
            elif not keys or len(set(keys)) != len(keys):
                why = "device mask is empty or repeats a device"
            elif any(k not in snap.devices for k in keys):
                why = "unknown device in mask"
            elif d.memory_estimate <= 0:
                why = "memory estimate must be positive"
            else:
                short = [k[1] for k in keys if snap.devices[k].free_bytes + freed.get(k, 0)
                         - used.get(k, 0) < d.memory_estimate]
                if short:
                    why = f"would overcommit device memory on {', '.join(short)}"
                else:
                    for k in keys:
                        used[k] = used.get(k, 0) + d.memory_estimate
        elif isinstance(d, StopWorker):
            w = snap.workers.get(d.worker_id)
            if w is None:
                why = "worker does not exist"
            elif w.phase is not WorkerPhase.READY or w.active:
                why = f"worker is {w.phase.value} running {w.active} job(s), not idle"
            elif d.worker_id in taken or d.worker_id in stopped:
                why = "worker is claimed this cycle, not idle"
            elif snap.is_pinned(w):
                why = f"worker serves pinned model {w.model_ref} on its pinned devices"
            else:
                stopped.add(d.worker_id)
                for dev in w.device_ids:
                    freed[(w.pool_id, dev)] = freed.get((w.pool_id, dev), 0) + w.memory_bytes
        elif isinstance(d, (Preload, EvictModel)):
            pool = snap.pools.get(d.pool_id)
            if pool is None or not pool.available:
                why = "pool is missing or unavailable"
            elif isinstance(d, EvictModel) and any(
                    pid == d.pool_id for pid, _ in snap.pins.get(d.model_ref, ())):
                why = f"model {d.model_ref} is pinned on {d.pool_id}"
        elif not isinstance(d, Wait):
            why = f"unknown decision {type(d).__name__}"
        out.append((d, why))
    return out


def _tenant_refusal(ledger: Ledger, owner: dict[str, str], job: JobView, w: WorkerView) -> str:
    """Why a dispatch breaks tenancy ("" if it does not); if it does not, claim it."""
    t, current = job.tenant_id, owner.get(w.worker_id, w.tenant_id)
    if current and current != t:
        return "worker runs another tenant's jobs (workers are never shared between tenants)"
    why = ledger.blocked(t)
    if why:
        return f"over the tenant's quota: {why}"
    need = 0 if current else worker_bytes(w.memory_bytes, len(w.device_ids))
    why = ledger.over_vram(t, need)
    if why:
        return f"over the tenant's quota: {why}"
    ledger.take(t, need)
    owner[w.worker_id] = t
    return ""
