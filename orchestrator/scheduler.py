"""The built-in scheduling policy: decide(snapshot) -> decisions. Pure and deterministic.

Formula, per cycle, over queued jobs in (priority, admission order):
  1. Dispatch to an idle READY worker serving the job's model; among several, the one
     idle longest (spreads wear, keeps recently used ones warm for affinity).
  2. Else, if no worker for the model exists or is starting, start one: on the
     available pool and device set with the most free memory that fits the model's
     estimate on every device of the mask.
  3. Else the job waits, with the reason ("worker starting", "all workers busy",
     "no device fits", "no pool available").
One Wait is reported per model and reason, not per job, so a deep queue costs
O(workers + distinct models) per cycle once the idle workers are used up.
"""

from __future__ import annotations

from collections import defaultdict

from orchestrator.snapshot import (Decision, DeviceView, Dispatch, JobView, PoolView,
                                   Snapshot, StartWorker, Wait)
from orchestrator.types import WorkerPhase


def decide(snap: Snapshot) -> list[Decision]:
    idle: dict[str, list] = defaultdict(list)
    present: set[str] = set()
    for w in snap.workers:
        if w.phase in (WorkerPhase.READY, WorkerPhase.BUSY, WorkerPhase.STARTING):
            present.add(w.model_ref)
        if w.phase is WorkerPhase.READY:
            idle[w.model_ref].append(w)
    for ws in idle.values():
        ws.sort(key=lambda w: (w.last_used, w.worker_id), reverse=True)  # pop() = oldest
    backoff = dict(snap.start_backoff_until)
    free = {(p.pool_id, d.device_id): d.free_bytes for p in snap.pools if p.available
            for d in p.devices}
    decisions: list[Decision] = []
    waited: set[tuple[str, str]] = set()
    for job in sorted(snap.jobs, key=lambda j: (j.priority, j.order)):
        pool_of_model = idle.get(job.model_ref)
        if pool_of_model:
            w = pool_of_model.pop()
            decisions.append(Dispatch(job.job_id, w.worker_id, "idle worker with the model"))
            continue
        if job.model_ref in present:
            reason = "all workers for the model are busy or starting"
        elif backoff.get(job.model_ref, 0.0) > snap.now:
            reason = "worker start failed recently; backing off"
        else:
            start = _place(job, snap.pools, free)
            if start is not None:
                decisions.append(start)
                present.add(job.model_ref)
                for dev in start.device_ids:
                    free[(start.pool_id, dev)] -= job.memory_estimate
                reason = "worker starting"
            elif not any(p.available for p in snap.pools):
                reason = "no pool available"
            else:
                reason = "no device has room for the model"
        key = (job.model_ref, reason)
        if key not in waited:
            waited.add(key)
            decisions.append(Wait(job.job_id, reason))
    return decisions


def _place(job: JobView, pools: tuple[PoolView, ...],
           free: dict[tuple[str, str], int]) -> StartWorker | None:
    best: tuple[int, str, tuple[str, ...]] | None = None
    for pool in pools:
        if not pool.available:
            continue
        fits = [d for d in pool.devices if free[(pool.pool_id, d.device_id)] >= job.memory_estimate]
        if len(fits) < job.device_count:
            continue
        fits.sort(key=lambda d: (-free[(pool.pool_id, d.device_id)], d.device_id))
        mask = fits[: job.device_count]
        room = min(free[(pool.pool_id, d.device_id)] for d in mask)
        if best is None or room > best[0]:
            best = (room, pool.pool_id, tuple(d.device_id for d in mask))
    if best is None:
        return None
    return StartWorker(job.model_ref, best[1], best[2], job.memory_estimate,
                       f"no worker for {job.model_ref}; most free memory on {best[1]}")


__all__ = ["decide", "DeviceView"]
