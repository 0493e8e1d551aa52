"""The queue optimizer's pure part: advise(snapshot, budget_s) -> advice.

The loop runs it in the background while the queue is deeper than a threshold
(`should_run`), every `interval_s`, and hands the result to the next snapshots
(`build_snapshot(..., advice=...)`); it never acts itself. Defaults (OptimizerConfig):
threshold 10 queued jobs, interval 30 s, cycle budget 5 s.

Inputs: eligible heads (memory estimate, device count, engine of each queued model),
queued counts, workers, pools and their devices. Rules, per queued model m, in the
order of its head job (priority, admission order):
- UnservableAdvice(m, why) when, among AVAILABLE pools (none available is transient,
  not unservable), none offers m's engine, or none has device_count devices whose TOTAL
  memory holds m's estimate.
- StartAdvice(m, pool, devices) on idle devices (devices hosting no worker): while
  pressure(m) = eligible(m) / (lanes(m) + starts advised for m x slots(m) + 1) is at
  least `min_backlog_per_worker`, advise the least-loaded fitting mask of idle devices,
  most pressured model first; each idle device is advised once. lanes(m) sums the slots
  of m's workers (jobs they run at once; 1 per worker that is not ready yet) and
  slots(m) is the most any of them has (1 without workers): the backlog is measured per
  slot, which for single-slot workers is per worker.
- PreloadAdvice(pool, m) for models with no worker, no idle-device placement and no
  room anywhere without eviction: the pool that could hold m (by total memory) with the
  most free memory, so that the start after an eviction loads from RAM.
Deterministic for a given snapshot, unless the budget runs out: then the advice found
so far is returned (the loop, which times each run, reports that as a metric).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from orchestrator.snapshot import (Advice, DeviceKey, JobView, PoolView, PreloadAdvice,
                                   Snapshot, StartAdvice, UnservableAdvice)

GIB = float(1 << 30)


@dataclass(frozen=True)
class OptimizerConfig:
    threshold_queued: int = 10  # runs while more jobs than this are queued
    interval_s: float = 30.0  # between runs while it is deep
    budget_s: float = 5.0  # wall-clock budget of one run
    min_backlog_per_worker: float = 2.0  # pressure that justifies a start on idle devices


def should_run(snap: Snapshot, cfg: OptimizerConfig = OptimizerConfig()) -> bool:
    return sum(snap.queued_total.values()) > cfg.threshold_queued


def advise(snap: Snapshot, budget_s: float = OptimizerConfig.budget_s,
           cfg: OptimizerConfig = OptimizerConfig()) -> list[Advice]:
    deadline = time.perf_counter() + budget_s
    out: list[Advice] = []
    heads = [js[0] for js in snap.queued.values()]  # in head-job order
    available = [p for p in snap.pools.values() if p.available]
    servable: list[JobView] = []
    for job in heads:
        why = _unservable(job, available) if available else ""
        if why:
            out.append(UnservableAdvice(job.model_ref, why))
        else:
            servable.append(job)
    workers: dict[str, int] = {}  # model -> its workers
    lanes: dict[str, int] = {}  # model -> their slots, summed
    per: dict[str, int] = {}  # model -> slots of one of its workers (the most)
    for w in snap.workers.values():
        m = w.model_ref
        workers[m] = workers.get(m, 0) + 1
        lanes[m] = lanes.get(m, 0) + w.slots
        per[m] = max(per.get(m, 1), w.slots)
    idle_devs = {k for k in snap.devices if k not in snap.occupied
                 and snap.pools[k[0]].available}
    advised: dict[str, int] = {}
    placed: set[str] = set()
    while servable and idle_devs and time.perf_counter() < deadline:
        def pressure(j: JobView) -> float:
            m = j.model_ref
            return snap.eligible(m) / (lanes.get(m, 0) + advised.get(m, 0) * per.get(m, 1) + 1)
        job = max(servable, key=lambda j: (pressure(j), -j.priority, -j.order))
        if pressure(job) < cfg.min_backlog_per_worker:
            break
        start = _on_idle(snap, job, idle_devs)
        if not isinstance(start, StartAdvice):
            servable.remove(job)
            continue
        out.append(start)
        advised[job.model_ref] = advised.get(job.model_ref, 0) + 1
        placed.add(job.model_ref)
        idle_devs.difference_update((start.pool_id, d) for d in start.device_ids)
    for job in servable:
        if time.perf_counter() >= deadline:
            break
        if workers.get(job.model_ref, 0) or job.model_ref in placed or _fits_now(snap, job):
            continue
        pool_id = _preload_pool(snap, job)
        if pool_id:
            out.append(PreloadAdvice(pool_id, job.model_ref))
    return out


def _unservable(job: JobView, available: list[PoolView]) -> str:
    offering = [p for p in available if job.engine in p.engines]
    if not offering:
        return f"engine {job.engine!r} is not offered by any available pool"
    big = max(sum(d.total_bytes >= job.memory_estimate for d in p.devices) for p in offering)
    if big < job.device_count:
        largest = max(d.total_bytes for p in offering for d in p.devices)
        return (f"needs {job.device_count} device(s) with {job.memory_estimate / GIB:.1f} GiB "
                f"each; the largest device has {largest / GIB:.1f} GiB")
    return ""


def _on_idle(snap: Snapshot, job: JobView, idle: set[DeviceKey]) -> StartAdvice | str:
    """The least-loaded mask of idle devices that fits, or why there is none."""
    best: tuple[int, str, tuple[str, ...]] | None = None
    for pid, order in snap.devices_by_free.items():
        pool = snap.pools[pid]
        if not pool.available or job.engine not in pool.engines:
            continue
        fits = [d for d in order if (pid, d) in idle
                and snap.devices[(pid, d)].free_bytes >= job.memory_estimate]
        if len(fits) < job.device_count:
            continue
        mask = tuple(fits[:job.device_count])
        room = snap.devices[(pid, mask[-1])].free_bytes
        if best is None or room > best[0]:
            best = (room, pid, mask)
    if best is None:
        return "no idle devices fit"
    return StartAdvice(job.model_ref, best[1], best[2])


def _fits_now(snap: Snapshot, job: JobView) -> bool:
    for room, pid in snap.rooms(job.device_count):
        if room < job.memory_estimate:
            return False
        if job.engine in snap.pools[pid].engines:
            return True
    return False


def _preload_pool(snap: Snapshot, job: JobView) -> str:
    best: tuple[int, str] | None = None
    for pid, order in snap.devices_by_free.items():
        pool = snap.pools[pid]
        if not pool.available or job.engine not in pool.engines:
            continue
        big = [d for d in order if snap.devices[(pid, d)].total_bytes >= job.memory_estimate]
        if len(big) < job.device_count:
            continue
        room = sum(snap.devices[(pid, d)].free_bytes for d in big[:job.device_count])
        if best is None or room > best[0]:
            best = (room, pid)
    return best[1] if best else ""


__all__ = ["Advice", "OptimizerConfig", "PreloadAdvice", "StartAdvice", "UnservableAdvice",
           "advise", "should_run"]
