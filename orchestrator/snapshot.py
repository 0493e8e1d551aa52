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
- Platform mode (`tenancy`): jobs and busy workers carry their tenant; `tenants`,
  `tenant_running` and `tenant_vram` are what quotas need (orchestrator.quota), kept as
  slots are reserved (fleet.FleetIndex), never by scanning jobs; `owned_slots` says
  which free slots only one tenant may fill; `queued` holds per model only heads of
  tenants that may have another job dispatched, found per (model, tenant) in the queue
  index, and `tenant_queues` every tenant's first job and count, held back or not, so a
  tenant over its quota costs O(1) whatever its backlog. Outside platform mode these are
  False / empty, and assembly and decide take the same steps as without tenants.

A snapshot is assembled (`assemble`) from the loop's QueueIndex and a Fleet: the
immutable worker half (WorkerFacts), pool half (PoolFacts) and what depends on both.
The orchestrator's registry keeps its Fleet up to date change by change
(fleet.FleetIndex), so taking a snapshot costs O(changes + models x heads) in Python,
not O(workers) (what stays proportional to the workers is C-level copying of the
containers that changed); `build_snapshot` (and `Snapshot.of`, small lists for tests) builds the Fleet
from scratch, and is the reference the incremental one is tested against. Decisions name
ids that exist in the snapshot; the validator (orchestrator.validator) checks every one
before the loop carries it out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from orchestrator.estimates import ModelEstimate
from orchestrator.quota import Ledger, TenantLimits, worker_bytes
from orchestrator.types import Priority, WorkerPhase

if TYPE_CHECKING:
    from orchestrator.queue_index import QueueIndex

DeviceKey = tuple[str, str]  # (pool_id, device_id): device ids are unique per pool only
EXTRA_HEADS = 3  # heads per model beyond its idle workers: the first waiting job and spares
_EMPTY: Mapping = MappingProxyType({})


def _empty() -> Mapping:
    return _EMPTY


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
    tenant_id: str = ""  # the submitter's tenant; "" outside platform mode (no quotas)


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
    tenant_id: str = ""  # platform mode: the tenant whose jobs it runs ("" while it runs
    #   none; a worker never runs two tenants' jobs at once). "" outside platform mode.

    @property
    def free_slots(self) -> int:
        """Jobs a dispatch may still add: only a READY worker offers slots."""
        return max(0, self.slots - self.active) if self.phase is WorkerPhase.READY else 0


@dataclass(frozen=True, slots=True)
class DeviceView:
    device_id: str
    total_bytes: int
    # free = total - external - max(held, seen - freed): each of our workers counts once,
    # and one gone since the inventory was taken counts as holding nothing:
    #   used     the pool's inventory: everything on the device, our workers included
    #            (NVML for GPUs; RAM in use for the CPU; for a simulated device, what the
    #            pool's own workers hold, as nothing else can be on it)
    #   seen     the part of `used` the pool attributes to our workers (and to those
    #            gone since): its per-process entries for their pids, else (no entry)
    #            the bytes a worker reported
    #   external used - seen: memory held outside llama-orch
    #   held     what our non-gone workers hold or will hold: reported bytes, else the
    #            estimate while starting (a worker may not have allocated it yet)
    #   freed    the part of `seen` of workers gone since the inventory was taken
    #            (exit reported, inventory not yet updated: registry.Exited): free, not
    #            external, so one eviction is seen to make room
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


@dataclass(slots=True)
class TenantQueue:
    """One tenant's eligible jobs of one model (platform mode): the first, and how many.
    A value: never changed once in a snapshot (not frozen only because a cycle builds one
    per model and tenant, and a frozen dataclass costs ~1 us more to build)."""
    tenant_id: str
    first: JobView
    eligible: int


@dataclass(frozen=True)
class Snapshot:
    """Everything one scheduling cycle may read. Invariants (kept by assemble):
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
    # ---- tenancy (platform mode; orchestrator.quota). Outside it: False and empty. ----
    tenancy: bool = False  # quotas hold jobs back; workers serve one tenant at a time
    tenants: Mapping[str, TenantLimits] = field(default_factory=_empty)
    #   each known tenant's limits and credit; a tenant absent here has no limits
    tenant_running: Mapping[str, int] = field(default_factory=_empty)
    #   jobs in worker slots (dispatched or running), per tenant
    tenant_vram: Mapping[str, int] = field(default_factory=_empty)
    #   bytes held by the workers running each tenant's jobs: memory_bytes x devices per
    #   worker (quota.py)
    owned_slots: Mapping[str, Mapping[str, int]] = field(default_factory=_empty)
    #   model -> tenant -> free slots of open workers already running that tenant's jobs
    #   (only it may fill them); the rest of free_slots[m] is on idle workers, anyone's
    tenant_queues: Mapping[str, tuple[TenantQueue, ...]] = field(default_factory=_empty)
    #   model -> each tenant with eligible jobs of it, held back or not, in the order of
    #   its first job

    def eligible(self, model_ref: str) -> int:
        """Queued jobs for the model that may be dispatched now."""
        return self.queued_total.get(model_ref, 0) - self.waiting_backoff.get(model_ref, 0)

    def is_pinned(self, w: WorkerView) -> bool:
        return pinned(self.pins, w)

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


def sorted_map(d: dict) -> Mapping:
    """A frozen copy of d in key order."""
    return MappingProxyType(dict(sorted(d.items())))


def pinned(pins: Mapping[str, frozenset[DeviceKey]], w: WorkerView) -> bool:
    """Is the worker on a device pinned for its model (never evicted)?"""
    devs = pins.get(w.model_ref)
    return bool(devs) and any((w.pool_id, d) in devs for d in w.device_ids)


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


def _ranked(desc: Mapping[str, Sequence[int]], k: int) -> tuple[tuple[int, str], ...]:
    """(k-th largest value, pool) for pools with >= k devices, largest first, ties by id."""
    ranked = [(-vals[k - 1], pid) for pid, vals in desc.items() if len(vals) >= k]
    ranked.sort()
    return tuple([(-neg, pid) for neg, pid in ranked])


# ---- the fleet a snapshot is assembled from -----------------------------------------------
# Workers and pools change a few at a time while a cycle needs all of them, indexed. So a
# Snapshot is assembled from an immutable Fleet that need not be rebuilt each cycle:
# fleet.FleetIndex keeps one up to date change by change, and `fleet_of` builds one
# from scratch (tests, dry runs, the reference the incremental one is checked against).
# Only `assemble` reads the queue and the clock.

@dataclass(frozen=True, slots=True)
class WorkerFacts:
    """The worker half of a Snapshot: the fields of the same names there, from the
    workers' views alone (and the pins), plus `idle_bytes`. Model-keyed maps are in
    sorted model order."""
    workers: Mapping[str, WorkerView]
    open_workers: Mapping[str, tuple[WorkerView, ...]]
    free_slots: Mapping[str, int]
    idle: Mapping[str, tuple[WorkerView, ...]]
    idle_lru: tuple[WorkerView, ...]
    busy_by_model: Mapping[str, int]
    serving_by_model: Mapping[str, int]
    lanes_by_model: Mapping[str, int]
    starting_by_model: Mapping[str, int]
    freeing: Mapping[DeviceKey, int]
    occupied: frozenset[DeviceKey]
    devices_of_model: Mapping[str, frozenset[DeviceKey]]
    pins: Mapping[str, frozenset[DeviceKey]]
    idle_bytes: Mapping[DeviceKey, int]  # bytes of every idle, unpinned worker: `evictable`
    #   before this cycle's jobs claim the longest idle workers of their models
    tenant_running: Mapping[str, int] = field(default_factory=_empty)  # empty unless
    #   workers carry tenants (platform mode)
    tenant_vram: Mapping[str, int] = field(default_factory=_empty)
    owned_slots: Mapping[str, Mapping[str, int]] = field(default_factory=_empty)


@dataclass(frozen=True, slots=True)
class PoolFacts:
    """The pool half of a Snapshot: the fields of the same names there, plus each
    available pool's free bytes in descending order. `rooms(k)` is ranked once per
    PoolFacts and k (pools change with heartbeats, not every cycle)."""
    pools: Mapping[str, PoolView]  # by id, in id order
    devices: Mapping[DeviceKey, DeviceView]
    devices_by_free: Mapping[str, tuple[str, ...]]
    free_desc: Mapping[str, tuple[int, ...]]  # available pools only
    _rooms: dict[int, tuple[tuple[int, str], ...]] = field(default_factory=dict, compare=False,
                                                           repr=False)  # memo

    def rooms(self, k: int) -> tuple[tuple[int, str], ...]:
        got = self._rooms.get(k)
        if got is None:
            got = self._rooms[k] = _ranked(self.free_desc, k)
        return got


@dataclass(frozen=True, slots=True)
class Fleet:
    """Everything a Snapshot says about workers and pools: the two halves, and what
    depends on both. Immutable; consecutive snapshots share it (or its unchanged parts)."""
    worker_facts: WorkerFacts
    pool_facts: PoolFacts
    room_if_evicted: Mapping[str, tuple[int, ...]]  # available pools with STOPPING or
    #   idle, unpinned workers: free + freeing + idle_bytes per device, descending


def room_if_evicted(pool: PoolView, freeing: Mapping[DeviceKey, int],
                    evictable: Mapping[DeviceKey, int]) -> tuple[int, ...]:
    """The pool's free bytes per device plus what stopping workers and evictable ones
    hold there, descending."""
    pid = pool.pool_id
    return tuple(sorted([d.free_bytes + freeing.get((pid, d.device_id), 0)
                         + evictable.get((pid, d.device_id), 0) for d in pool.devices],
                        reverse=True))


def fleet_of(workers: Iterable[WorkerView], pools: Iterable[PoolView],
             pins: Mapping[str, Iterable[DeviceKey]] = _EMPTY) -> Fleet:
    """Index worker and pool views from scratch."""
    wf, pf = worker_facts(workers, pins), pool_facts(pools)
    roomier = {pid for pid, _ in wf.freeing} | {pid for pid, _ in wf.idle_bytes}
    return Fleet(wf, pf, _freeze({
        pid: room_if_evicted(pf.pools[pid], wf.freeing, wf.idle_bytes)
        for pid in sorted(roomier) if pid in pf.free_desc}))


def rank_devices(p: PoolView) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """A pool's device ids, most free first (ties: id), and their free bytes."""
    order = sorted(p.devices, key=_most_free)
    return tuple([d.device_id for d in order]), tuple([d.free_bytes for d in order])


def worker_facts(workers: Iterable[WorkerView],
                 pins: Mapping[str, Iterable[DeviceKey]] = _EMPTY) -> WorkerFacts:
    """Index worker views from scratch: O(workers log workers)."""
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
    t_running: dict[str, int] = {}
    t_vram: dict[str, int] = {}
    owned: dict[str, dict[str, int]] = {}
    ready, busy_, starting_ = WorkerPhase.READY, WorkerPhase.BUSY, WorkerPhase.STARTING
    for w in all_workers.values():
        phase = w.phase
        tenant = w.tenant_id
        if tenant and w.active:
            t_running[tenant] = t_running.get(tenant, 0) + w.active
            held = worker_bytes(w.memory_bytes, len(w.device_ids))
            if held:
                t_vram[tenant] = t_vram.get(tenant, 0) + held
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
            if tenant:
                mine = owned.setdefault(m, {})
                mine[tenant] = mine.get(tenant, 0) + free
            if not w.active:
                idle_by.setdefault(m, []).append(w)
        elif phase is starting_:
            starting[w.model_ref] = starting.get(w.model_ref, 0) + 1
        elif w.memory_bytes:  # STOPPING
            for d in w.device_ids:
                freeing[(w.pool_id, d)] = freeing.get((w.pool_id, d), 0) + w.memory_bytes

    idle_lru: list[WorkerView] = []
    idle: dict[str, tuple[WorkerView, ...]] = {}
    for m in sorted(idle_by):
        ws = idle_by[m]
        ws.sort(key=lru_key)
        idle[m] = tuple(ws)
        idle_lru.extend(ws)
    idle_lru.sort(key=lru_key)
    open_workers: dict[str, tuple[WorkerView, ...]] = {}
    for m in sorted(open_by):
        ws = open_by[m]
        ws.sort(key=dispatch_key)
        open_workers[m] = tuple(ws)

    pin_sets = {m: frozenset(v) for m, v in sorted(pins.items())}
    idle_bytes: dict[DeviceKey, int] = {}
    for w in idle_lru:
        if w.memory_bytes and not pinned(pin_sets, w):
            for d in w.device_ids:
                idle_bytes[(w.pool_id, d)] = idle_bytes.get((w.pool_id, d), 0) + w.memory_bytes
    return WorkerFacts(
        workers=_freeze(all_workers), open_workers=_freeze(open_workers),
        free_slots=sorted_map(free_slots), idle=_freeze(idle), idle_lru=tuple(idle_lru),
        busy_by_model=sorted_map(busy), serving_by_model=sorted_map(serving),
        lanes_by_model=sorted_map(lanes), starting_by_model=sorted_map(starting),
        freeing=_freeze(freeing), occupied=occupied,
        devices_of_model=_freeze({m: frozenset(v) for m, v in sorted(hosting.items())}),
        pins=_freeze(pin_sets), idle_bytes=_freeze(idle_bytes),
        tenant_running=sorted_map(t_running), tenant_vram=sorted_map(t_vram),
        owned_slots=_freeze({m: sorted_map(owned[m]) for m in sorted(owned)}))


def lru_key(w: WorkerView) -> tuple[float, str]:
    """Order of `idle` and `idle_lru`: longest idle first (ties: id)."""
    return (w.last_used, w.worker_id)


def dispatch_key(w: WorkerView) -> tuple[int, float, str]:
    """Order of `open_workers`: fewest running jobs, then longest idle (ties: id)."""
    return (w.active, w.last_used, w.worker_id)


def pool_facts(pools: Iterable[PoolView]) -> PoolFacts:
    """Index pool views from scratch: O(devices log devices)."""
    pool_map: dict[str, PoolView] = {}
    devices: dict[DeviceKey, DeviceView] = {}
    by_free: dict[str, tuple[str, ...]] = {}
    free_desc: dict[str, tuple[int, ...]] = {}
    for p in sorted(pools, key=_pool_id):
        pid = p.pool_id
        pool_map[pid] = p
        devices.update([((pid, d.device_id), d) for d in p.devices])
        by_free[pid], free = rank_devices(p)
        if p.available:
            free_desc[pid] = free
    return PoolFacts(_freeze(pool_map), _freeze(devices), _freeze(by_free), _freeze(free_desc))


def build_snapshot(index: "QueueIndex", workers: Iterable[WorkerView],
                   pools: Iterable[PoolView], now: float, *,
                   start_backoff_until: Mapping[str, float] = _EMPTY,
                   estimates: Mapping[str, ModelEstimate] = _EMPTY,
                   advice: Iterable[Advice] = (),
                   pins: Mapping[str, Iterable[DeviceKey]] = _EMPTY,
                   extra_heads: int = EXTRA_HEADS, tenancy: bool = False,
                   tenants: Mapping[str, TenantLimits] = _EMPTY) -> Snapshot:
    """Freeze one cycle's facts from scratch: `assemble` over `fleet_of(workers, pools,
    pins)`. Cost O(workers log workers + devices log devices) on top of assembly's."""
    return assemble(index, fleet_of(workers, pools, pins), now,
                    start_backoff_until=start_backoff_until, estimates=estimates,
                    advice=advice, extra_heads=extra_heads, tenancy=tenancy, tenants=tenants)


def assemble(index: "QueueIndex", fleet: Fleet, now: float, *,
             start_backoff_until: Mapping[str, float] = _EMPTY,
             estimates: Mapping[str, ModelEstimate] = _EMPTY,
             advice: Iterable[Advice] = (),
             extra_heads: int = EXTRA_HEADS, tenancy: bool = False,
             tenants: Mapping[str, TenantLimits] = _EMPTY) -> Snapshot:
    """Freeze one cycle's facts from the fleet, the queue and the clock. Cost
    O(models x heads + idle workers this cycle's jobs take (and the devices of their
    pools) + distinct device counts x pools); it never touches the queue beyond the
    heads, nor a worker or pool that this cycle does not involve. `index` is only read
    (plus its promotions of jobs whose backoff has expired).

    With `tenancy` (platform mode) a model's heads are chosen per tenant
    (`_tenant_heads`), which adds O(T log T) per model with eligible jobs, T the tenants
    with eligible jobs of it; `tenants` is each tenant's limits."""
    wf, pf = fleet.worker_facts, fleet.pool_facts
    free_slots = wf.free_slots
    queued: dict[str, tuple[JobView, ...]] = {}
    total: dict[str, int] = {}
    backoff: dict[str, int] = {}
    next_retry: dict[str, JobView] = {}
    counts: set[int] = {1}
    by_tenant: dict[str, tuple[TenantQueue, ...]] = {}
    runnable: dict[str, int] = {}  # tenancy: jobs per model its tenants' quotas let run
    ledger = Ledger(tenants, wf.tenant_running, wf.tenant_vram) if tenancy else None
    for m in index.models():
        eligible, delayed = index.count(m, now)
        total[m] = eligible + delayed
        if eligible and ledger is not None:
            tq = sorted((TenantQueue(t, first, n) for t, first, n in index.tenants(m, now)),
                        key=_first_job)
            by_tenant[m] = tuple(tq)
            heads, runnable[m] = _tenant_heads(index, m, now, tq, wf, ledger,
                                               free_slots.get(m, 0) + extra_heads, extra_heads)
            if heads:
                queued[m] = heads
                counts.add(heads[0].device_count)
        elif eligible:
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

    # evictable = idle_bytes less the idle workers that take jobs this cycle: the first
    # `eligible` idle workers of each queued model (the scheduler gives each idle worker
    # one before any worker a second).
    evictable, pins, taken = wf.idle_bytes, wf.pins, None
    touched: set[str] = set()  # pools where such workers are
    for m in queued:
        for w in wf.idle.get(m, ())[:runnable.get(m, total[m] - backoff.get(m, 0))]:
            if not w.memory_bytes or pinned(pins, w):
                continue
            if taken is None:
                taken = dict(evictable)
            touched.add(w.pool_id)
            for d in w.device_ids:
                left = taken[(w.pool_id, d)] - w.memory_bytes
                if left:
                    taken[(w.pool_id, d)] = left
                else:
                    del taken[(w.pool_id, d)]
    if taken is not None:
        evictable = _freeze(taken)

    ks = sorted(counts)
    rooms = {k: pf.rooms(k) for k in ks}
    evictable_rooms = rooms
    if fleet.room_if_evicted:
        most = dict(pf.free_desc)  # free + freeing + evictable, descending
        most.update(fleet.room_if_evicted)
        for pid in touched:
            if pid in most:
                most[pid] = room_if_evicted(pf.pools[pid], wf.freeing, evictable)
        evictable_rooms = {k: _ranked(most, k) for k in ks}

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
        workers=wf.workers, open_workers=wf.open_workers, free_slots=free_slots,
        idle=wf.idle, idle_lru=wf.idle_lru, busy_by_model=wf.busy_by_model,
        serving_by_model=wf.serving_by_model, lanes_by_model=wf.lanes_by_model,
        starting_by_model=wf.starting_by_model, pools=pf.pools, devices=pf.devices,
        devices_by_free=pf.devices_by_free, pools_by_room=_freeze(rooms),
        pools_by_evictable_room=_freeze(evictable_rooms), occupied=wf.occupied,
        devices_of_model=wf.devices_of_model, freeing=wf.freeing, evictable=evictable,
        start_backoff_until=_freeze(dict(start_backoff_until)),
        estimates=(estimates if isinstance(estimates, MappingProxyType)
                   else _freeze(dict(estimates))),
        advice=advice,
        start_advice=_freeze({m: tuple(v) for m, v in sorted(start_advice.items())}),
        unservable=_freeze(dict(sorted(unservable.items()))),
        pins=wf.pins, **({} if ledger is None else dict(
            tenancy=True, tenants=(tenants if isinstance(tenants, MappingProxyType)
                                   else _freeze(dict(tenants))),
            tenant_running=wf.tenant_running, tenant_vram=wf.tenant_vram,
            owned_slots=wf.owned_slots, tenant_queues=_freeze(by_tenant))))


def _first_job(q: TenantQueue) -> tuple[int, int, str]:
    return (q.first.priority, q.first.order, q.tenant_id)


def _tenant_heads(index: "QueueIndex", m: str, now: float, tq: Sequence[TenantQueue],
                  wf: WorkerFacts, ledger: Ledger, k: int, extra: int
                  ) -> tuple[tuple[JobView, ...], int]:
    """Platform mode: the model's heads, and how many of its jobs quotas let run now.

    Each tenant with eligible jobs gets a cap: 0 when it may not have another job
    dispatched (its concurrent-job quota is full or its token budget exhausted: its
    jobs are not walked at all), else its quota's room + 1 (the +1 names the job that
    waits on the quota), and no more than its owned slots + 1 when taking another worker
    would pass its VRAM ceiling. The heads are the first `k - owned` jobs of the capped
    tenants merged in (priority, order) (k = the model's free slots + extra, owned = the
    free slots of workers already serving a tenant), plus, for each tenant holding such
    slots, its next jobs up to those slots (its workers serve no one else). So at most
    k heads, O((T + k) log(T + k)) (QueueIndex.heads)."""
    owned = wf.owned_slots.get(m, _EMPTY)
    idle = wf.idle.get(m)
    caps: dict[str, int] = {}
    for q in tq:
        t = q.tenant_id
        if ledger.blocked(t):
            continue
        cap = ledger.room(t, q.eligible)
        if cap < q.eligible:
            cap += 1
        need = (worker_bytes(idle[0].memory_bytes, len(idle[0].device_ids)) if idle
                else worker_bytes(q.first.memory_estimate, q.first.device_count))
        if ledger.over_vram(t, need):
            cap = min(cap, owned.get(t, 0) + 1)
        caps[t] = cap
    if not caps:
        return (), 0
    mine = sum(owned.values())
    heads = index.heads(m, k - mine, now, caps)
    if mine:
        have: dict[str, int] = {}
        for j in heads:
            have[j.tenant_id] = have.get(j.tenant_id, 0) + 1
        more: list[JobView] = []
        for t, slots in owned.items():
            got = have.get(t, 0)
            want = min(caps.get(t, 0), slots + got)
            if want > got:  # the walk took the tenant's first `got`: these come next
                more.extend(index.tenant_heads(m, t, want, now)[got:])
        if more:
            heads = tuple(sorted(heads + tuple(more), key=_job_order))
    return heads, sum(caps.values())


def _job_order(j: JobView) -> tuple[int, int]:
    return (j.priority, j.order)


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
    reason) per cycle (platform mode: a quota's Wait is per (model, tenant), its reason
    starting "tenant "): job_id is the first waiting job, `jobs` how many wait with it,
    `until` (retry backoff only) when the next one becomes eligible."""
    job_id: str
    reason: str
    model_ref: str = ""
    jobs: int = 1
    until: float = 0.0


Decision = Dispatch | StartWorker | StopWorker | Preload | EvictModel | Wait
