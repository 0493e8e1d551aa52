"""The frozen snapshot the scheduler decides over, and the decisions it returns.

Contract: a Snapshot is immutable and complete for one scheduling cycle; `decide`
reads nothing else. It is indexed, so a decision costs O(models x heads + decisions),
never O(queued jobs) or O(workers):

- `queued` holds, per model with eligible work, only the heads that can matter this
  cycle (free slots of the model's workers + a few), in (priority, order);
  `queued_total`/`waiting_backoff` count the rest.
- Workers run up to `slots` jobs at once. A READY worker has at least one free slot
  (it may already run jobs); BUSY means every slot is taken; *idle* means READY with
  no job running. `open_workers[m]` lists the model's READY workers in dispatch order
  with `free_slots[m]` their free slots summed; only idle workers are evicted.
- `open_workers`, `idle` and `idle_lru` are pre-sorted; `pools_by_room` ranks pools for
  placement and `pools_by_evictable_room` bounds what eviction could free, so a model
  that cannot fit anywhere costs O(1) to rule out.

Build one with `build_snapshot` (from the loop's QueueIndex) or `Snapshot.of` (small
lists, for tests). Decisions name ids that exist in the snapshot; the validator
(orchestrator.validator) checks every one before the loop carries it out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from orchestrator.estimates import ModelEstimate
from orchestrator.types import Priority, WorkerPhase

if TYPE_CHECKING:
    from orchestrator.queue_index import QueueIndex

DeviceKey = tuple[str, str]  # (pool_id, device_id): device ids are unique per pool only
EXTRA_HEADS = 3  # heads per model beyond its idle workers: the first waiting job and spares
_EMPTY: Mapping = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class JobView:
    job_id: str
    model_ref: str
    priority: Priority
    order: int  # admission order; FIFO within a priority class
    memory_estimate: int  # bytes on every device of the mask
    device_count: int = 1  # tensor parallelism: devices in the worker's mask
    engine: str = "hf"
    not_before: float = 0.0  # retry backoff: not eligible before this time
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class WorkerView:
    worker_id: str
    pool_id: str
    model_ref: str
    phase: WorkerPhase
    device_ids: tuple[str, ...]
    last_used: float = 0.0
    memory_bytes: int = 0  # held on each device of its mask (reported, else the estimate)
    slots: int = 1  # jobs it runs at once (continuous batching)
    active: int = 0  # jobs in its slots now

    @property
    def free_slots(self) -> int:
        """Jobs a dispatch may still add: only a READY worker offers slots."""
        return max(0, self.slots - self.active) if self.phase is WorkerPhase.READY else 0


@dataclass(frozen=True, slots=True)
class DeviceView:
    device_id: str
    total_bytes: int
    # free = total - external - max(held, seen), so each of our workers counts once:
    #   used     the pool's inventory: everything on the device, our workers included
    #            (NVML for GPUs; RAM in use for the CPU; for a simulated device, what the
    #            pool's own workers hold, as nothing else can be on it)
    #   seen     the part of `used` the pool attributes to our workers: its per-process
    #            entries for their pids, else (no entry) the bytes a worker reported
    #   external used - seen: memory held outside llama-orch
    #   held     what our non-gone workers hold or will hold: reported bytes, else the
    #            estimate while starting (a worker may not have allocated it yet)
    free_bytes: int
    kind: str = "gpu"  # gpu | cpu | simulated


@dataclass(frozen=True, slots=True)
class PoolView:
    pool_id: str
    available: bool
    devices: tuple[DeviceView, ...]
    engines: tuple[str, ...] = ("hf",)


# ---- the optimizer's advice (orchestrator.optimizer produces it; decide reads it) ------

@dataclass(frozen=True, slots=True)
class PreloadAdvice:
    """Keep the model's files in RAM on this pool so a later start is fast."""
    pool_id: str
    model_ref: str


@dataclass(frozen=True, slots=True)
class StartAdvice:
    """Devices that host no worker and fit the model: worth a worker for its backlog."""
    model_ref: str
    pool_id: str
    device_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UnservableAdvice:
    """No available pool can ever run the model (engine or memory): its jobs wait."""
    model_ref: str
    reason: str


Advice = PreloadAdvice | StartAdvice | UnservableAdvice


@dataclass(frozen=True)
class Snapshot:
    """Everything one scheduling cycle may read. Invariants (kept by build_snapshot):
    every JobView in `queued` has not_before <= now; every worker in `open_workers` is
    READY with free_slots > 0, fewest running jobs first, then longest idle (ties: id);
    every worker in `idle` is READY with no job running and appears in `workers` and in
    `open_workers`; `idle[m]` and `idle_lru` are longest idle first; models are
    keyed in sorted order (`queued`: in the order of each model's head job, the order the
    policy serves models in), so iteration is deterministic."""
    now: float
    queued: Mapping[str, tuple[JobView, ...]]  # eligible heads per model, (priority, order)
    queued_total: Mapping[str, int]  # every queued job per model, eligible or not
    waiting_backoff: Mapping[str, int]  # jobs with not_before > now, per model
    next_retry: Mapping[str, JobView]  # per model in backoff: the job eligible soonest
    workers: Mapping[str, WorkerView]  # every non-gone worker, by id
    open_workers: Mapping[str, tuple[WorkerView, ...]]  # READY per model, in dispatch order
    free_slots: Mapping[str, int]  # per model: free slots of its open workers, summed
    idle: Mapping[str, tuple[WorkerView, ...]]  # READY, no job running, per model, longest
    #   idle first
    idle_lru: tuple[WorkerView, ...]  # every idle worker, least recently used first
    busy_by_model: Mapping[str, int]  # workers with every slot taken
    serving_by_model: Mapping[str, int]  # READY or BUSY workers
    lanes_by_model: Mapping[str, int]  # slots of the serving workers, summed
    starting_by_model: Mapping[str, int]
    pools: Mapping[str, PoolView]
    devices: Mapping[DeviceKey, DeviceView]
    devices_by_free: Mapping[str, tuple[str, ...]]  # pool -> device ids, most free first
    pools_by_room: Mapping[int, tuple[tuple[int, str], ...]]  # device count k -> (k-th most
    #   free bytes in the pool, pool id) over available pools, most room first
    pools_by_evictable_room: Mapping[int, tuple[tuple[int, str], ...]]  # the same over
    #   free + freeing + evictable bytes: an upper bound of the room eviction can make
    occupied: frozenset[DeviceKey]  # devices with a non-gone worker on them
    devices_of_model: Mapping[str, frozenset[DeviceKey]]  # devices hosting the model's workers
    freeing: Mapping[DeviceKey, int]  # bytes STOPPING workers will release
    evictable: Mapping[DeviceKey, int]  # bytes held by READY, unpinned workers beyond
    #   those their model's eligible jobs will take this cycle (longest idle go first)
    start_backoff_until: Mapping[str, float]  # model -> no new start before this time
    estimates: Mapping[str, ModelEstimate]  # learned; models never observed are absent
    advice: tuple[Advice, ...]  # the optimizer's latest advice, as given
    start_advice: Mapping[str, tuple[StartAdvice, ...]]  # the StartAdvice, by model
    unservable: Mapping[str, UnservableAdvice]  # the UnservableAdvice, by model
    pins: Mapping[str, frozenset[DeviceKey]]  # model -> devices where its workers are never
    #   evicted (a worker is pinned when any device of its mask is pinned for its model)

    def eligible(self, model_ref: str) -> int:
        """Queued jobs for the model that may be dispatched now."""
        return self.queued_total.get(model_ref, 0) - self.waiting_backoff.get(model_ref, 0)

    def is_pinned(self, w: WorkerView) -> bool:
        devs = self.pins.get(w.model_ref)
        return bool(devs) and any((w.pool_id, d) in devs for d in w.device_ids)

    def rooms(self, k: int) -> tuple[tuple[int, str], ...]:
        """Available pools ranked by room for a k-device mask (precomputed for the device
        counts of queued models; computed here otherwise)."""
        got = self.pools_by_room.get(k)
        return got if got is not None else _rank_pools(self, k, ())

    def evictable_rooms(self, k: int) -> tuple[tuple[int, str], ...]:
        """Available pools ranked by the room a k-device mask could have if every
        STOPPING worker were gone and every unpinned idle worker stopped."""
        got = self.pools_by_evictable_room.get(k)
        return got if got is not None else _rank_pools(self, k, (self.freeing, self.evictable))

    @classmethod
    def of(cls, jobs: Iterable[JobView] = (), workers: Iterable[WorkerView] = (),
           pools: Iterable[PoolView] = (), now: float = 0.0, **kw) -> "Snapshot":
        """Index small lists (table tests, dry runs); keywords as for build_snapshot."""
        from orchestrator.queue_index import QueueIndex
        index = QueueIndex()
        for j in jobs:
            index.add(j)
        return build_snapshot(index, workers, pools, now, **kw)


def _freeze(d: dict) -> Mapping:
    return MappingProxyType(d)


def _rank_pools(snap: Snapshot, k: int,
                extra: tuple[Mapping[DeviceKey, int], ...]) -> tuple[tuple[int, str], ...]:
    desc = {pid: sorted((snap.devices[(pid, d)].free_bytes
                         + sum(e.get((pid, d), 0) for e in extra) for d in order), reverse=True)
            for pid, order in snap.devices_by_free.items() if snap.pools[pid].available}
    return _ranked(desc, k)


def _pool_id(p: PoolView) -> str:
    return p.pool_id


def _most_free(d: DeviceView) -> tuple[int, str]:
    return (-d.free_bytes, d.device_id)


def _ranked(desc: dict[str, list[int]], k: int) -> tuple[tuple[int, str], ...]:
    """(k-th largest value, pool) for pools with >= k devices, largest first, ties by id."""
    ranked = [(-vals[k - 1], pid) for pid, vals in desc.items() if len(vals) >= k]
    ranked.sort()
    return tuple([(-neg, pid) for neg, pid in ranked])


def build_snapshot(index: "QueueIndex", workers: Iterable[WorkerView],
                   pools: Iterable[PoolView], now: float, *,
                   start_backoff_until: Mapping[str, float] = _EMPTY,
                   estimates: Mapping[str, ModelEstimate] = _EMPTY,
                   advice: Iterable[Advice] = (),
                   pins: Mapping[str, Iterable[DeviceKey]] = _EMPTY,
                   extra_heads: int = EXTRA_HEADS) -> Snapshot:
    """Freeze one cycle's facts. Cost O(workers + devices + models x heads + pools x
    distinct device counts x log pools); never touches the queue beyond the heads.
    `index` is only read (plus its promotions of jobs whose backoff has expired)."""
    all_workers = {w.worker_id: w for w in workers if w.phase is not WorkerPhase.GONE}
    hosting: dict[str, set[DeviceKey]] = {}
    for w in all_workers.values():
        hosting.setdefault(w.model_ref, set()).update([(w.pool_id, d) for d in w.device_ids])
    occupied = frozenset().union(*hosting.values())
    idle_by: dict[str, list[WorkerView]] = {}
    open_by: dict[str, list[WorkerView]] = {}
    free_slots: dict[str, int] = {}
    busy: dict[str, int] = {}
    serving: dict[str, int] = {}
    lanes: dict[str, int] = {}
    starting: dict[str, int] = {}
    freeing: dict[DeviceKey, int] = {}
    ready, busy_, starting_ = WorkerPhase.READY, WorkerPhase.BUSY, WorkerPhase.STARTING
    for w in all_workers.values():
        phase = w.phase
        if phase is ready or phase is busy_:
            m = w.model_ref
            serving[m] = serving.get(m, 0) + 1
            lanes[m] = lanes.get(m, 0) + w.slots
            free = w.slots - w.active if phase is ready else 0
            if free <= 0:
                busy[m] = busy.get(m, 0) + 1
                continue
            open_by.setdefault(m, []).append(w)
            free_slots[m] = free_slots.get(m, 0) + free
            if not w.active:
                idle_by.setdefault(m, []).append(w)
        elif phase is starting_:
            starting[w.model_ref] = starting.get(w.model_ref, 0) + 1
        elif w.memory_bytes:  # STOPPING
            for d in w.device_ids:
                freeing[(w.pool_id, d)] = freeing.get((w.pool_id, d), 0) + w.memory_bytes

    def lru(w: WorkerView) -> tuple[float, str]:
        return (w.last_used, w.worker_id)

    idle_lru: list[WorkerView] = []
    idle: dict[str, tuple[WorkerView, ...]] = {}
    for m in sorted(idle_by):
        ws = idle_by[m]
        ws.sort(key=lru)
        idle[m] = tuple(ws)
        idle_lru.extend(ws)
    idle_lru.sort(key=lru)

    def least_loaded(w: WorkerView) -> tuple[int, float, str]:
        return (w.active, w.last_used, w.worker_id)

    open_workers: dict[str, tuple[WorkerView, ...]] = {}
    for m in sorted(open_by):
        ws = open_by[m]
        ws.sort(key=least_loaded)
        open_workers[m] = tuple(ws)

    queued: dict[str, tuple[JobView, ...]] = {}
    total: dict[str, int] = {}
    backoff: dict[str, int] = {}
    next_retry: dict[str, JobView] = {}
    counts: set[int] = {1}
    for m in index.models():
        eligible, delayed = index.count(m, now)
        total[m] = eligible + delayed
        if eligible:
            heads = index.heads(m, free_slots.get(m, 0) + extra_heads, now)
            queued[m] = heads
            counts.add(heads[0].device_count)
        if delayed:
            backoff[m] = delayed
            job = index.next_eligible(m, now)
            if job is not None:
                next_retry[m] = job
    head_order = sorted(queued.items(), key=lambda mh: (mh[1][0].priority, mh[1][0].order))
    queued = dict(head_order)

    pin_sets = {m: frozenset(v) for m, v in sorted(pins.items())}
    evictable: dict[DeviceKey, int] = {}
    for m, ws in idle.items():
        pinned = pin_sets.get(m)
        # The first `eligible` idle workers of a model take its jobs this cycle (the
        # scheduler gives each idle worker one before any worker a second).
        for w in ws[total.get(m, 0) - backoff.get(m, 0):]:
            if not w.memory_bytes or pinned and any((w.pool_id, d) in pinned
                                                    for d in w.device_ids):
                continue
            for d in w.device_ids:
                evictable[(w.pool_id, d)] = evictable.get((w.pool_id, d), 0) + w.memory_bytes

    pool_map: dict[str, PoolView] = {}
    devices: dict[DeviceKey, DeviceView] = {}
    by_free: dict[str, tuple[str, ...]] = {}
    free_desc: dict[str, list[int]] = {}  # available pool -> free bytes, descending
    most: dict[str, list[int]] = {}  # available pool -> free + freeing + evictable, descending
    extra_pools = {pid for pid, _ in freeing} | {pid for pid, _ in evictable}
    for p in sorted(pools, key=_pool_id):
        pid = p.pool_id
        pool_map[pid] = p
        devices.update([((pid, d.device_id), d) for d in p.devices])
        order = sorted(p.devices, key=_most_free)
        by_free[pid] = tuple([d.device_id for d in order])
        if p.available:
            free_desc[pid] = values = [d.free_bytes for d in order]
            most[pid] = values if pid not in extra_pools else sorted(
                (d.free_bytes + freeing.get((pid, d.device_id), 0)
                 + evictable.get((pid, d.device_id), 0) for d in order), reverse=True)
    rooms: dict[int, tuple[tuple[int, str], ...]] = {}
    evictable_rooms: dict[int, tuple[tuple[int, str], ...]] = {}
    for k in sorted(counts):
        rooms[k] = _ranked(free_desc, k)
        evictable_rooms[k] = _ranked(most, k)

    start_advice: dict[str, list[StartAdvice]] = {}
    unservable: dict[str, UnservableAdvice] = {}
    advice = tuple(advice)
    for a in advice:
        if isinstance(a, StartAdvice):
            start_advice.setdefault(a.model_ref, []).append(a)
        elif isinstance(a, UnservableAdvice):
            unservable.setdefault(a.model_ref, a)

    return Snapshot(
        now=now, queued=_freeze(queued), queued_total=_freeze(total),
        waiting_backoff=_freeze(backoff), next_retry=_freeze(next_retry),
        workers=_freeze(all_workers), open_workers=_freeze(open_workers),
        free_slots=_freeze(free_slots), idle=_freeze(idle), idle_lru=tuple(idle_lru),
        busy_by_model=_freeze(busy), serving_by_model=_freeze(serving),
        lanes_by_model=_freeze(lanes), starting_by_model=_freeze(starting),
        pools=_freeze(pool_map), devices=_freeze(devices), devices_by_free=_freeze(by_free),
        pools_by_room=_freeze(rooms), pools_by_evictable_room=_freeze(evictable_rooms),
        occupied=occupied,
        devices_of_model=_freeze({m: frozenset(v) for m, v in sorted(hosting.items())}),
        freeing=_freeze(freeing), evictable=_freeze(evictable),
        start_backoff_until=_freeze(dict(start_backoff_until)),
        estimates=(estimates if isinstance(estimates, MappingProxyType)
                   else _freeze(dict(estimates))),
        advice=advice,
        start_advice=_freeze({m: tuple(v) for m, v in sorted(start_advice.items())}),
        unservable=_freeze(dict(sorted(unservable.items()))),
        pins=_freeze(pin_sets))


# ---- decisions ---------------------------------------------------------------------------
# Each names ids from the snapshot it was decided over and carries a human reason (it
# becomes the fact's message). The loop carries accepted decisions out in list order.
# Treat them as values: never changed after decide() returns. They are not frozen only
# because a frozen dataclass costs ~1 us more to build, and a cycle builds ~100.

@dataclass(slots=True)
class Dispatch:
    """Run the job in a free slot of this worker (which serves the job's model). One job
    per Dispatch; a cycle may send a worker as many as it has free slots."""
    job_id: str
    worker_id: str
    reason: str


@dataclass(slots=True)
class StartWorker:
    """Start a worker for the model on these devices of one pool (one process, one mask)."""
    model_ref: str
    pool_id: str
    device_ids: tuple[str, ...]
    memory_estimate: int  # bytes reserved on every device of the mask
    reason: str


@dataclass(slots=True)
class StopWorker:
    """Stop an idle worker, one running no job (LRU eviction to make room). Its memory is
    free only once the pool reports it stopped; until then it shows as STOPPING in
    `freeing`."""
    worker_id: str
    reason: str


@dataclass(slots=True)
class Preload:
    """Load the model's files into RAM on the pool (no worker). Not emitted yet."""
    pool_id: str
    model_ref: str
    reason: str


@dataclass(slots=True)
class EvictModel:
    """Drop the model's files from the pool's RAM / cache. Not emitted yet."""
    pool_id: str
    model_ref: str
    reason: str


@dataclass(slots=True)
class Wait:
    """Queued jobs of one model wait this cycle, for one reason. One Wait per (model,
    reason) per cycle: job_id is the first waiting job, `jobs` how many wait with it,
    `until` (retry backoff only) when the next one becomes eligible."""
    job_id: str
    reason: str
    model_ref: str = ""
    jobs: int = 1
    until: float = 0.0


Decision = Dispatch | StartWorker | StopWorker | Preload | EvictModel | Wait
