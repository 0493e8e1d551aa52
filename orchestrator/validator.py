"""One validator for every decision, built-in or scripted, before it is carried out.

Refuses: dispatch of a job that is not queued, to a worker that is missing, not ready,
already claimed this cycle or serving another model; a start on a missing or
unavailable pool, unknown devices, or one that overcommits a device's memory.
"""

from __future__ import annotations

from orchestrator.snapshot import Decision, Dispatch, Snapshot, StartWorker, Wait
from orchestrator.types import WorkerPhase


def validate(snap: Snapshot, decisions: list[Decision]) -> list[tuple[Decision, str]]:
    """Return (decision, "") for accepted ones and (decision, why) for refused ones."""
    jobs = {j.job_id: j for j in snap.jobs}
    workers = {w.worker_id: w for w in snap.workers}
    pools = {p.pool_id: p for p in snap.pools}
    free = {(p.pool_id, d.device_id): d.free_bytes for p in snap.pools for d in p.devices}
    claimed_jobs: set[str] = set()
    claimed_workers: set[str] = set()
    out: list[tuple[Decision, str]] = []
    for d in decisions:
        why = ""
        if isinstance(d, Dispatch):
            job, w = jobs.get(d.job_id), workers.get(d.worker_id)
            if job is None or d.job_id in claimed_jobs:
                why = "job is not queued or already dispatched this cycle"
            elif w is None:
                why = "worker does not exist"
            elif w.phase is not WorkerPhase.READY or d.worker_id in claimed_workers:
                why = f"worker is {w.phase.value}, not idle"
            elif w.model_ref != job.model_ref:
                why = "worker serves a different model"
            else:
                claimed_jobs.add(d.job_id)
                claimed_workers.add(d.worker_id)
        elif isinstance(d, StartWorker):
            pool = pools.get(d.pool_id)
            if pool is None or not pool.available:
                why = "pool is missing or unavailable"
            elif not d.device_ids or len(set(d.device_ids)) != len(d.device_ids):
                why = "device mask is empty or repeats a device"
            elif any((d.pool_id, dev) not in free for dev in d.device_ids):
                why = "unknown device in mask"
            elif any(free[(d.pool_id, dev)] < d.memory_estimate for dev in d.device_ids):
                why = "would overcommit device memory"
            else:
                for dev in d.device_ids:
                    free[(d.pool_id, dev)] -= d.memory_estimate
        elif not isinstance(d, Wait):
            why = f"unknown decision {type(d).__name__}"
        out.append((d, why))
    return out
