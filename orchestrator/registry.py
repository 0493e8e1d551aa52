"""Live state of pools and workers, as the pool links report it.

Owned by the orchestrator's event loop (one writer). Pools are known by id; a pool
that reconnects replaces its old link. Workers are announced by their pool manager;
the orchestrator dials a worker only after its pool announced it READY.

A worker runs up to `slots` jobs at once (continuous batching; 1 unless its ready
report says more). Its slots are claimed in pairs: `reserve(job_id)` when a dispatch is
carried out, `unreserve(job_id)` when the job's relay ends (idempotent, and safe for a
job that never reserved). Phase follows the count while the worker serves: READY while
a slot is free, BUSY when every slot is taken. A worker is *idle* when it is READY and
runs no job; only idle workers are evicted.

The registry keeps the scheduler's view of workers and pools up to date as they change,
so a scheduling cycle costs O(what changed), not O(workers): every change to a record
in `workers` or `pools` (an entry set or removed, or a field the views read assigned)
marks it dirty, and `facts` folds the dirty records into a FleetIndex
(orchestrator.fleet), which hands out an immutable snapshot.Fleet for `snapshot.assemble`.
Assign the fields, never change them in place: `device_bytes` is replaced whole, and
`jobs` (and, in platform mode, `tenant_id`: whose jobs the worker runs) change only
through `reserve` / `unreserve`. From those the FleetIndex keeps each tenant's jobs in
slots and the memory its workers hold (orchestrator.quota), so quotas cost nothing per
cycle.

A record leaves `workers` when its worker is gone (Orchestrator.worker_gone). Its pool
reports the exit at once but the memory only with its next heartbeat, so until then the
registry remembers the exit (`Exited`) and the pool's view counts that memory free, not
as someone else's (pool_view): one eviction makes room, and a second is not needed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from common import tls
from common.timestamps import to_timestamp
from llama_orch.v1 import common_pb2, pool_link_pb2, worker_pb2_grpc
from orchestrator.fleet import FleetIndex
from orchestrator.snapshot import DeviceKey, DeviceView, Fleet, PoolView, WorkerView
from orchestrator.types import WorkerPhase

_KINDS = {common_pb2.DEVICE_KIND_GPU: "gpu", common_pb2.DEVICE_KIND_CPU: "cpu",
          common_pb2.DEVICE_KIND_SIMULATED: "simulated"}
# Fields the views read: assigning one marks the record dirty in its registry.
_WORKER_VIEWED = frozenset({"pool_id", "model_ref", "device_ids", "memory_estimate", "phase",
                            "device_bytes", "pid", "last_used", "slots", "jobs", "tenant_id"})
_WORKER_POOL_VIEWED = frozenset({"device_ids", "memory_estimate", "device_bytes", "pid"})
_POOL_VIEWED = frozenset({"inventory", "available", "draining"})


@dataclass(eq=False)
class WorkerRecord:
    worker_id: str
    pool_id: str
    model_ref: str
    device_ids: tuple[str, ...]
    memory_estimate: int
    phase: WorkerPhase = WorkerPhase.STARTING
    endpoint: str = ""
    device_bytes: dict[str, int] = field(default_factory=dict)
    pid: int = 0
    engine: str = "hf"
    engine_version: str = ""
    model_digest: str = ""
    started_at: float = field(default_factory=time.time)
    last_used: float = 0.0
    slots: int = 1  # jobs it runs at once, from its ready report (WorkerInfo.slots)
    jobs: set[str] = field(default_factory=set)  # ids of the jobs in its slots
    tenant_id: str = ""  # platform mode: the tenant whose jobs are in its slots ("" when
    #   none are); set and cleared by reserve / unreserve only
    _stub: worker_pb2_grpc.WorkerServiceStub | None = None
    _channel: object = None
    _registry = None  # the Registry whose `workers` holds it (not a field)

    def __setattr__(self, name: str, value: object) -> None:
        reg = self._registry
        if reg is None or name not in _WORKER_VIEWED:
            object.__setattr__(self, name, value)
            return
        old = getattr(self, name)
        object.__setattr__(self, name, value)
        reg._worker_changed(self, name, old)

    def stub(self) -> worker_pb2_grpc.WorkerServiceStub:
        if self._stub is None:
            # With TLS the worker must prove it belongs to the pool that announced it.
            self._channel = tls.worker_channel(self.endpoint, self.pool_id)
            self._stub = worker_pb2_grpc.WorkerServiceStub(self._channel)
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None

    @property
    def free_slots(self) -> int:
        return max(0, self.slots - len(self.jobs)) if self.phase is WorkerPhase.READY else 0

    @property
    def idle(self) -> bool:
        return self.phase is WorkerPhase.READY and not self.jobs

    def reserve(self, job_id: str, tenant_id: str = "") -> None:
        """Put the job in a free slot (the caller checked there is one, and, in platform
        mode, that the worker runs no other tenant's jobs); BUSY when full. The first job
        in its slots makes the worker its tenant's until the last one leaves."""
        if not self.jobs and tenant_id != self.tenant_id:
            self.tenant_id = tenant_id
        self.jobs.add(job_id)
        if self._registry is not None:
            self._registry._worker_changed(self, "jobs", None)
        if self.phase is WorkerPhase.READY and len(self.jobs) >= self.slots:
            self.phase = WorkerPhase.BUSY

    def unreserve(self, job_id: str) -> None:
        """Free the job's slot: a full worker is READY again. Idempotent; a worker that
        is STOPPING or GONE keeps its phase."""
        if job_id not in self.jobs:
            return
        self.jobs.discard(job_id)
        self.last_used = time.time()  # marks it dirty for the job's slot too
        if not self.jobs and self.tenant_id:
            self.tenant_id = ""
        if self.phase is WorkerPhase.BUSY and len(self.jobs) < self.slots:
            self.phase = WorkerPhase.READY

    def bytes_on(self, device_id: str) -> int:
        return self.device_bytes.get(device_id, self.memory_estimate)

    def to_proto(self) -> common_pb2.WorkerInfo:
        state = {WorkerPhase.STARTING: common_pb2.WORKER_STATE_STARTING,
                 WorkerPhase.READY: common_pb2.WORKER_STATE_READY,
                 WorkerPhase.BUSY: common_pb2.WORKER_STATE_BUSY,
                 WorkerPhase.STOPPING: common_pb2.WORKER_STATE_STOPPING,
                 WorkerPhase.GONE: common_pb2.WORKER_STATE_STOPPED}[self.phase]
        return common_pb2.WorkerInfo(
            worker_id=self.worker_id, pool_id=self.pool_id, model_ref=self.model_ref,
            engine=self.engine, device_ids=list(self.device_ids), state=state,
            endpoint=self.endpoint, device_bytes=self.device_bytes, pid=self.pid,
            active_jobs=len(self.jobs), slots=self.slots, engine_version=self.engine_version,
            model_digest=self.model_digest)


@dataclass(eq=False)
class PoolRecord:
    pool_id: str
    inventory: common_pb2.Inventory
    address: str = ""
    available: bool = True
    draining: bool = False
    last_heartbeat: float = field(default_factory=time.monotonic)  # for the liveness check
    # Wall-clock time of the last message on the link, for people (GetClusterSnapshot).
    heard_at: float = field(default_factory=time.time)
    # What the pool last said it holds (registration, then every heartbeat): cached on
    # disk, preloaded in RAM. Shown by GetClusterSnapshot; the scheduler does not read it.
    models: list[common_pb2.ModelResidency] = field(default_factory=list)
    version: str = ""
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    pending: dict[str, asyncio.Future] = field(default_factory=dict)
    link_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    _registry = None  # the Registry whose `pools` holds it (not a field)

    def __setattr__(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)
        if self._registry is not None and name in _POOL_VIEWED:
            self._registry._pool_changed(self, name)

    async def command(self, **command: object) -> pool_link_pb2.CommandResult:
        """Send one command down the link and wait for its result."""
        cid = "cmd-" + uuid.uuid4().hex[:16]
        fut = asyncio.get_running_loop().create_future()
        self.pending[cid] = fut
        await self.outbox.put(pool_link_pb2.PoolCommand(command_id=cid, **command))
        try:
            return await fut
        finally:
            self.pending.pop(cid, None)

    def fail_pending(self, reason: str) -> None:
        from common.errors import OrchError
        for fut in self.pending.values():
            if not fut.done():
                fut.set_result(pool_link_pb2.CommandResult(
                    ok=False, error=OrchError("POOL_UNAVAILABLE", reason).to_detail()))
        self.pending.clear()

    def to_proto(self, workers: Iterable[WorkerRecord]) -> common_pb2.PoolInfo:
        """The pool as GetClusterSnapshot and DrainPool show it, with `workers` (its
        records in the registry: Registry.workers_of)."""
        return common_pb2.PoolInfo(
            pool_id=self.pool_id, inventory=self.inventory, address=self.address,
            state=(common_pb2.POOL_STATE_DRAINING if self.draining
                   else common_pb2.POOL_STATE_AVAILABLE),
            workers=[w.to_proto() for w in workers], last_heartbeat=to_timestamp(self.heard_at),
            models=self.models, version=self.version)


@dataclass(frozen=True, slots=True)
class Exited:
    """A worker gone since its pool's inventory was taken: what that inventory may still
    count for it. Kept until a heartbeat no longer does (Registry._heard)."""
    pid: int  # 0: never known (its memory cannot be told apart by process)
    device_ids: tuple[str, ...]
    device_bytes: Mapping[str, int]  # what it reported holding, per device
    listed_again: bool = False  # a heartbeat since the exit report still listed its pid


class _Members(dict):
    """A dict that reports every entry set or removed, however it is changed, so its
    owner can keep its indexes in step (admin and test code write `workers[id] = w`)."""
    __slots__ = ("_added", "_removed")

    def __init__(self, added: Callable[[str, object], None],
                 removed: Callable[[str, object], None]) -> None:
        super().__init__()
        self._added, self._removed = added, removed

    def __setitem__(self, key, value) -> None:
        old = self.get(key)
        if old is value:
            return
        super().__setitem__(key, value)
        if old is not None:
            self._removed(key, old)
        self._added(key, value)

    def __delitem__(self, key) -> None:
        old = self[key]
        super().__delitem__(key)
        self._removed(key, old)

    def pop(self, key, *default):
        if key not in self:
            if default:
                return default[0]
            raise KeyError(key)
        old = super().pop(key)
        self._removed(key, old)
        return old

    def popitem(self):
        key, old = super().popitem()
        self._removed(key, old)
        return key, old

    def clear(self) -> None:
        for key in list(self):
            del self[key]

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args, **kwargs) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __ior__(self, other):
        self.update(other)
        return self


class Registry:
    def __init__(self) -> None:
        self.pools: dict[str, PoolRecord] = _Members(self._pool_added, self._pool_removed)
        self.workers: dict[str, WorkerRecord] = _Members(self._worker_added,
                                                         self._worker_removed)
        self.fleet = FleetIndex()
        # Records in `workers` by phase, kept as they change (the orchd_workers gauge).
        self.phase_counts: dict[WorkerPhase, int] = {p: 0 for p in WorkerPhase}
        self._by_pool: dict[str, dict[str, WorkerRecord]] = {}  # records in `workers`
        self._dirty_workers: set[str] = set()  # ids whose view may have changed
        self._dirty_pools: set[str] = set()  # ids whose view may have changed
        # pool -> worker id -> workers gone since the pool's inventory was taken
        self._exited: dict[str, dict[str, Exited]] = {}

    # ---- the scheduler's halves of a snapshot, kept up to date -------------------------

    def facts(self, pins: Mapping[str, Iterable[DeviceKey]] = MappingProxyType({})) -> Fleet:
        """The workers and pools as a snapshot needs them, as of now (immutable). Costs
        O(workers changed since the last call), plus O(workers + devices) of each pool
        whose view changed (a heartbeat changes its pool), plus O(idle workers) when the
        pins changed."""
        self._sync()
        return self.fleet.facts(pins)

    def _sync(self) -> None:
        fleet = self.fleet
        if self._dirty_workers:
            for wid in self._dirty_workers:
                view = self._view(self.workers.get(wid))
                if view is None:
                    fleet.drop_worker(wid)
                else:
                    fleet.put_worker(view)
            self._dirty_workers.clear()
        if self._dirty_pools:
            for pid in self._dirty_pools:
                pool = self.pools.get(pid)
                if pool is None:
                    fleet.drop_pool(pid)
                else:
                    fleet.put_pool(self.pool_view(pool, list(self._by_pool.get(pid, {}).values())))
            self._dirty_pools.clear()

    # ---- change tracking (called by _Members and the records' __setattr__) ---------------

    def _worker_added(self, wid: str, w: WorkerRecord) -> None:
        object.__setattr__(w, "_registry", self)
        self._forget_exit(wid)  # a record replaced: not an exit
        self._by_pool.setdefault(w.pool_id, {})[wid] = w
        self.phase_counts[w.phase] += 1
        self._dirty_workers.add(wid)
        self._dirty_pools.add(w.pool_id)

    def _worker_removed(self, wid: str, w: WorkerRecord) -> None:
        if w._registry is self:
            object.__setattr__(w, "_registry", None)
        members = self._by_pool.get(w.pool_id)
        if members is not None:
            members.pop(wid, None)
            if not members:
                del self._by_pool[w.pool_id]
        self.phase_counts[w.phase] -= 1
        self._dirty_workers.add(wid)
        self._dirty_pools.add(w.pool_id)
        if w.phase is not WorkerPhase.GONE:  # worker_gone: out of `workers`, then GONE
            self._note_exit(w)

    def _note_exit(self, w: WorkerRecord) -> None:
        """The worker is gone: its pool's inventory may count its memory until the next
        heartbeat (pool_view, _heard)."""
        if w.pool_id in self.pools:
            self._exited.setdefault(w.pool_id, {})[w.worker_id] = Exited(
                w.pid, w.device_ids, MappingProxyType(dict(w.device_bytes)))

    def _forget_exit(self, wid: str) -> None:
        for pid, exits in list(self._exited.items()):
            if exits.pop(wid, None) is not None:
                self._dirty_pools.add(pid)
                if not exits:
                    del self._exited[pid]

    def _worker_changed(self, w: WorkerRecord, name: str, old: object) -> None:
        self._dirty_workers.add(w.worker_id)
        if name == "phase":
            self.phase_counts[old] -= 1
            self.phase_counts[w.phase] += 1
            if (old is WorkerPhase.GONE) is not (w.phase is WorkerPhase.GONE):
                self._dirty_pools.add(w.pool_id)  # a pool's view leaves gone workers out
                if w.phase is WorkerPhase.GONE:  # marked GONE while still in `workers`
                    self._note_exit(w)
                else:
                    self._forget_exit(w.worker_id)
        elif name == "pool_id":
            members = self._by_pool.get(old)
            if members is not None:
                members.pop(w.worker_id, None)
                if not members:
                    del self._by_pool[old]
            self._by_pool.setdefault(w.pool_id, {})[w.worker_id] = w
            self._dirty_pools.update((old, w.pool_id))
        elif name in _WORKER_POOL_VIEWED:
            self._dirty_pools.add(w.pool_id)

    def _pool_added(self, pid: str, pool: PoolRecord) -> None:
        object.__setattr__(pool, "_registry", self)
        self._exited.pop(pid, None)  # a new link: its inventory is newer than any exit
        self._dirty_pools.add(pid)
        self._dirty_workers.update(self._by_pool.get(pid, ()))  # views need the pool

    def _pool_removed(self, pid: str, pool: PoolRecord) -> None:
        if pool._registry is self:
            object.__setattr__(pool, "_registry", None)
        self._exited.pop(pid, None)
        self._dirty_pools.add(pid)
        self._dirty_workers.update(self._by_pool.get(pid, ()))

    def _pool_changed(self, pool: PoolRecord, name: str) -> None:
        self._dirty_pools.add(pool.pool_id)
        if name in ("available", "draining"):  # worker views depend on both
            self._dirty_workers.update(self._by_pool.get(pool.pool_id, ()))
        elif name == "inventory" and pool.pool_id in self._exited:
            self._heard(pool)

    def _heard(self, pool: PoolRecord) -> None:
        """A heartbeat came after these exit reports: it is believed, unless it still
        lists an exited worker's process. The pool samples its inventory off its event
        loop, so a heartbeat sent just after an exit report may have been taken just
        before the exit; it is given one such heartbeat, no more (memory listed again
        after that is in use, whoever holds it)."""
        exits, kept = self._exited.pop(pool.pool_id), {}
        running = {(dev, w.pid) for w in self.workers_of(pool.pool_id)
                   if w.phase is not WorkerPhase.GONE for dev in w.device_ids}
        listed = {(d.id, p.pid) for d in pool.inventory.devices for p in d.processes}
        for wid, e in exits.items():
            if not e.listed_again and e.pid and any(
                    (dev, e.pid) in listed and (dev, e.pid) not in running
                    for dev in e.device_ids):
                kept[wid] = Exited(e.pid, e.device_ids, e.device_bytes, listed_again=True)
        if kept:
            self._exited[pool.pool_id] = kept

    # ---- views -------------------------------------------------------------------------

    def workers_of(self, pool_id: str) -> list[WorkerRecord]:
        return list(self._by_pool.get(pool_id, {}).values())

    def pool_views(self) -> list[PoolView]:
        """Every pool's view, built from scratch (the reference for the incremental
        pool_facts), grouping workers by pool in one pass (not pools x workers)."""
        by_pool: dict[str, list[WorkerRecord]] = {}
        for w in self.workers.values():
            by_pool.setdefault(w.pool_id, []).append(w)
        return [self.pool_view(p, by_pool.get(p.pool_id, [])) for p in self.pools.values()]

    def pool_view(self, pool: PoolRecord, workers: list[WorkerRecord] | None = None) -> PoolView:
        """The pool's devices with free memory by the one accounting rule (DeviceView):
        the inventory's `used` includes our workers, so what the pool attributes to them
        is taken out of it, and each worker then counts once, at what it holds or will.
        Workers gone since the inventory was taken (`Exited`) count as ours, holding
        nothing: what the inventory attributes to them (`freed`: their processes'
        entries, else their reports) is free, so free = total - external - max(held,
        seen - freed)."""
        on: dict[str, list[WorkerRecord]] = {}  # device -> our workers with it in their mask
        pids: set[int] = set()
        for w in self.workers_of(pool.pool_id) if workers is None else workers:
            if w.phase is WorkerPhase.GONE:
                continue
            pids.add(w.pid)
            for dev in w.device_ids:
                on.setdefault(dev, []).append(w)
        gone: dict[str, list[Exited]] = {}  # device -> exited workers with it in their mask
        for e in self._exited.get(pool.pool_id, {}).values():
            pids.add(e.pid)
            for dev in e.device_ids:
                gone.setdefault(dev, []).append(e)
        pids.discard(0)
        devices = []
        inv = pool.inventory
        for d in inv.devices:
            if d.kind == common_pb2.DEVICE_KIND_CPU:
                total = d.memory_total_bytes
                used = total - (inv.ram_available_bytes or d.memory_free_bytes)
            else:
                total, used = d.memory_total_bytes, d.memory_used_bytes
            ours, exited = on.get(d.id, ()), gone.get(d.id, ())
            seen = held = freed = 0
            if ours or exited:
                listed = {p.pid for p in d.processes}
                seen = sum(p.used_memory_bytes for p in d.processes if p.pid in pids)
                for w in ours:
                    held += w.bytes_on(d.id)
                    if w.pid not in listed:  # no per-process figure: take its own report
                        seen += w.device_bytes.get(d.id, 0)
                running = {w.pid for w in ours}
                counted = set()
                for e in exited:
                    if e.pid and e.pid in listed and e.pid not in running:  # its own entries
                        if e.pid not in counted:
                            counted.add(e.pid)
                            freed += sum(p.used_memory_bytes for p in d.processes
                                         if p.pid == e.pid)
                        continue
                    mine = e.device_bytes.get(d.id, 0)  # no entry of its own: its report
                    freed += mine
                    if e.pid not in listed:
                        seen += mine
            external = max(0, used - seen)
            devices.append(DeviceView(d.id, total,
                                      total - external - max(held, seen - min(freed, seen)),
                                      _KINDS.get(d.kind, "gpu")))
        return PoolView(pool.pool_id, pool.available and not pool.draining, tuple(devices),
                        tuple(inv.engines) or ("hf",))

    def worker_views(self) -> tuple[WorkerView, ...]:
        """Every worker's view, built from scratch (the reference for the incremental
        worker_facts): non-gone workers of available pools."""
        return tuple([v for v in map(self._view, self.workers.values()) if v is not None])

    def _view(self, w: WorkerRecord | None) -> WorkerView | None:
        if w is None or w.phase is WorkerPhase.GONE:
            return None
        pool = self.pools.get(w.pool_id)
        if pool is None or not pool.available:
            return None
        phase = w.phase
        if pool.draining and phase in (WorkerPhase.READY, WorkerPhase.BUSY):
            # A draining pool's workers finish what they run and take nothing new: to the
            # scheduler they are on their way out (neither open nor evictable).
            phase = WorkerPhase.STOPPING
        return WorkerView(w.worker_id, w.pool_id, w.model_ref, phase, w.device_ids,
                          w.last_used, max((w.bytes_on(d) for d in w.device_ids), default=0),
                          w.slots, len(w.jobs), w.tenant_id)
