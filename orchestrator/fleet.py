"""The scheduler's halves of a snapshot, kept as worker and pool views change.

The Registry (orchestrator.registry) marks a record dirty whenever a field its view
reads is assigned, and feeds each dirty record's view to a FleetIndex once per cycle
(`put_worker` / `drop_worker` / `put_pool` / `drop_pool`); `facts` then hands out an
immutable snapshot.Fleet for `snapshot.assemble`. So a scheduling cycle costs O(what
changed), not O(workers). Tenants' jobs in slots and the memory their workers hold
(orchestrator.quota) are kept here the same way, so quotas cost nothing per cycle.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

from orchestrator.quota import worker_bytes
from orchestrator.snapshot import (DeviceKey, Fleet, PoolFacts, PoolView, WorkerFacts,
                                   WorkerView, dispatch_key, lru_key, pinned, pool_facts,
                                   rank_devices, room_if_evicted, sorted_map, worker_facts)
from orchestrator.types import WorkerPhase


def _bump(d: dict, key, delta: int) -> bool:
    """Add delta to d[key], keeping only non-zero entries; True when the key came or went."""
    old = d.get(key, 0)
    new = old + delta
    if new:
        d[key] = new
    else:
        d.pop(key, None)
    return (not old) is not (not new)


class _Ordered:
    """Views in key order: keys to bisect, and the views in a parallel list (so a tuple of
    them is one C-level copy)."""
    __slots__ = ("keys", "views")

    def __init__(self) -> None:
        self.keys: list[tuple] = []
        self.views: list[WorkerView] = []

    def add(self, key: tuple, view: WorkerView) -> None:
        i = bisect_left(self.keys, key)
        self.keys.insert(i, key)
        self.views.insert(i, view)

    def remove(self, key: tuple) -> None:
        i = bisect_left(self.keys, key)  # keys end with the worker id: unique
        if i == len(self.keys) or self.keys[i] != key:
            raise KeyError(key)  # an index out of step: fail loudly, never drop another
        del self.keys[i]
        del self.views[i]


class FleetIndex:
    """Worker and pool views, indexed as they change: the live counterpart of
    snapshot.fleet_of, handing out an equal Fleet (the property test in
    tests/orchestrator/test_snapshot_incremental.py checks it against a from-scratch one).

    `put_worker` / `drop_worker` / `put_pool` / `drop_pool` apply one change at once, in
    O(log n) plus a C-level move within a sorted list. `facts` publishes: the previous
    Fleet itself when nothing changed, else a new one that shares every unchanged part and
    copies each changed container. What it hands out is never changed afterwards, so a
    snapshot stays valid while the loop goes on (the optimizer reads one on another
    thread). Those copies are the only per-cycle work proportional to the workers, and
    they are C-level (a dict or tuple copy: about 13 us for the `workers` map at 1,000
    workers); the Python-level work is proportional to the changes."""

    def __init__(self) -> None:
        self._views: dict[str, WorkerView] = {}
        self._open: dict[str, _Ordered] = {}  # model -> READY with a free slot, dispatch order
        self._idle: dict[str, _Ordered] = {}  # model -> idle, longest idle first
        self._lru = _Ordered()  # every idle worker, longest idle first
        self._free_slots: dict[str, int] = {}
        self._busy: dict[str, int] = {}
        self._serving: dict[str, int] = {}
        self._lanes: dict[str, int] = {}  # keyed while the model has serving workers
        self._starting: dict[str, int] = {}
        self._freeing: dict[DeviceKey, int] = {}
        self._idle_bytes: dict[DeviceKey, int] = {}
        self._roomier: dict[str, int] = {}  # pool -> its entries in freeing and idle_bytes
        self._room: dict[str, tuple[int, ...]] = {}  # Fleet.room_if_evicted, live
        self._room_dirty: set[str] = set()  # pools whose entry there may have changed
        self._hosting: dict[str, dict[DeviceKey, int]] = {}  # model -> device -> workers
        self._occupied: dict[DeviceKey, int] = {}  # device -> workers
        self._pins: dict[str, frozenset[DeviceKey]] = {}  # replaced whole, never changed
        self._tenant_jobs: dict[str, int] = {}  # tenant -> jobs in slots (platform mode)
        self._tenant_vram: dict[str, int] = {}  # tenant -> bytes its workers hold
        self._owned: dict[str, dict[str, int]] = {}  # model -> tenant -> free slots on
        #   open workers running that tenant's jobs
        self._changed: set[str] = set()  # WorkerFacts fields to publish anew
        self._models_changed: dict[str, set[str]] = {"open_workers": set(), "idle": set(),
                                                      "devices_of_model": set(),
                                                      "owned_slots": set()}
        self._wf = worker_facts(())
        self._pool_views: dict[str, PoolView] = {}
        self._pools_changed: set[str] = set()
        self._pf = pool_facts(())
        self._fleet = Fleet(self._wf, self._pf, MappingProxyType({}))

    def facts(self, pins: Mapping[str, Iterable[DeviceKey]] = MappingProxyType({})) -> Fleet:
        """The fleet as of now (`pins` as for snapshot.fleet_of): the previous one itself
        when nothing changed."""
        wf, pf = self._worker_half(pins), self._pool_half()
        old = self._fleet
        room = old.room_if_evicted
        if self._room_dirty:
            live, views = self._room, self._pool_views
            for pid in self._room_dirty:
                p = views.get(pid)
                if p is not None and p.available and pid in self._roomier:
                    live[pid] = room_if_evicted(p, self._freeing, self._idle_bytes)
                else:
                    live.pop(pid, None)
            self._room_dirty.clear()
            room = MappingProxyType(live.copy())
        if (wf is not old.worker_facts or pf is not old.pool_facts
                or room is not old.room_if_evicted):  # identity: never compare contents
            self._fleet = Fleet(wf, pf, room)
        return self._fleet

    # ---- workers -----------------------------------------------------------------------

    def put_worker(self, w: WorkerView) -> None:
        """Add or replace a worker's view (a GONE one is dropped)."""
        if w.phase is WorkerPhase.GONE:
            self.drop_worker(w.worker_id)
            return
        old = self._views.get(w.worker_id)
        if old == w:
            return
        if old is not None:
            self._account(old, -1)
        self._views[w.worker_id] = w
        self._account(w, 1)
        self._changed.add("workers")

    def drop_worker(self, worker_id: str) -> None:
        old = self._views.pop(worker_id, None)
        if old is not None:
            self._account(old, -1)
            self._changed.add("workers")

    def _account(self, w: WorkerView, sign: int) -> None:
        """Add (sign 1) or take out (sign -1) one view's part of every index, by the rules
        of snapshot.worker_facts."""
        m, changed, models = w.model_ref, self._changed, self._models_changed
        keys = [(w.pool_id, d) for d in w.device_ids]
        hosting = self._hosting.setdefault(m, {})
        for key in keys:
            if _bump(hosting, key, sign):
                models["devices_of_model"].add(m)
            if _bump(self._occupied, key, sign):
                changed.add("occupied")
        if not hosting:
            del self._hosting[m]
        tenant = w.tenant_id
        if tenant and w.active:  # platform mode: the tenant's jobs and held memory
            _bump(self._tenant_jobs, tenant, sign * w.active)
            _bump(self._tenant_vram, tenant, sign * worker_bytes(w.memory_bytes,
                                                                 len(w.device_ids)))
            changed.update(("tenant_running", "tenant_vram"))
        phase = w.phase
        if phase is WorkerPhase.READY or phase is WorkerPhase.BUSY:
            _bump(self._serving, m, sign)
            if m in self._serving:
                self._lanes[m] = self._lanes.get(m, 0) + sign * w.slots
            else:
                self._lanes.pop(m, None)
            changed.update(("serving_by_model", "lanes_by_model"))
            free = w.slots - w.active if phase is WorkerPhase.READY else 0
            if free <= 0:
                _bump(self._busy, m, sign)
                changed.add("busy_by_model")
                return
            _bump(self._free_slots, m, sign * free)
            changed.add("free_slots")
            if tenant:
                mine = self._owned.setdefault(m, {})
                _bump(mine, tenant, sign * free)
                if not mine:
                    del self._owned[m]
                models["owned_slots"].add(m)
            self._order(self._open, m, dispatch_key(w), w, sign)
            models["open_workers"].add(m)
            if w.active:
                return
            key = lru_key(w)
            self._order(self._idle, m, key, w, sign)
            models["idle"].add(m)
            if sign > 0:
                self._lru.add(key, w)
            else:
                self._lru.remove(key)
            changed.add("idle_lru")
            if w.memory_bytes and not pinned(self._pins, w):
                for key in keys:
                    self._bump_device(self._idle_bytes, key, sign * w.memory_bytes)
                changed.add("idle_bytes")
        elif phase is WorkerPhase.STARTING:
            _bump(self._starting, m, sign)
            changed.add("starting_by_model")
        elif w.memory_bytes:  # STOPPING
            for key in keys:
                self._bump_device(self._freeing, key, sign * w.memory_bytes)
            changed.add("freeing")

    @staticmethod
    def _order(table: dict[str, _Ordered], m: str, key: tuple, w: WorkerView, sign: int) -> None:
        if sign > 0:
            table.setdefault(m, _Ordered()).add(key, w)
            return
        o = table[m]
        o.remove(key)
        if not o.keys:
            del table[m]

    def _bump_device(self, d: dict[DeviceKey, int], key: DeviceKey, delta: int) -> None:
        if _bump(d, key, delta):
            _bump(self._roomier, key[0], 1 if key in d else -1)
        self._room_dirty.add(key[0])

    def _repin(self, pins: dict[str, frozenset[DeviceKey]]) -> None:
        """New pins: recount idle_bytes, O(idle workers)."""
        self._pins = pins
        for key, n in list(self._idle_bytes.items()):
            self._bump_device(self._idle_bytes, key, -n)
        for w in self._lru.views:
            if w.memory_bytes and not pinned(pins, w):
                for d in w.device_ids:
                    self._bump_device(self._idle_bytes, (w.pool_id, d), w.memory_bytes)
        self._changed.update(("pins", "idle_bytes"))

    def _worker_half(self, pins: Mapping[str, Iterable[DeviceKey]]) -> WorkerFacts:
        frozen = {m: frozenset(v) for m, v in sorted(pins.items())}
        if frozen != self._pins:
            self._repin(frozen)
        old, changed, models = self._wf, self._changed, self._models_changed
        if not changed and not any(models.values()):
            return old

        def counts(name: str, d: dict) -> Mapping:
            return sorted_map(d) if name in changed else getattr(old, name)

        def per_model(name: str, build: Callable[[str], object], table: dict) -> Mapping:
            todo = models[name]
            if not todo:
                return getattr(old, name)
            was = getattr(old, name)
            out = {m: build(m) if m in todo else was[m] for m in sorted(table)}
            todo.clear()
            return MappingProxyType(out)

        self._wf = WorkerFacts(
            workers=(MappingProxyType(self._views.copy()) if "workers" in changed
                     else old.workers),
            open_workers=per_model("open_workers", lambda m: tuple(self._open[m].views),
                                   self._open),
            free_slots=counts("free_slots", self._free_slots),
            idle=per_model("idle", lambda m: tuple(self._idle[m].views), self._idle),
            idle_lru=tuple(self._lru.views) if "idle_lru" in changed else old.idle_lru,
            busy_by_model=counts("busy_by_model", self._busy),
            serving_by_model=counts("serving_by_model", self._serving),
            lanes_by_model=counts("lanes_by_model", self._lanes),
            starting_by_model=counts("starting_by_model", self._starting),
            freeing=(MappingProxyType(self._freeing.copy()) if "freeing" in changed
                     else old.freeing),
            occupied=frozenset(self._occupied) if "occupied" in changed else old.occupied,
            devices_of_model=per_model("devices_of_model", lambda m: frozenset(self._hosting[m]),
                                       self._hosting),
            pins=MappingProxyType(self._pins) if "pins" in changed else old.pins,
            idle_bytes=(MappingProxyType(self._idle_bytes.copy()) if "idle_bytes" in changed
                        else old.idle_bytes),
            tenant_running=counts("tenant_running", self._tenant_jobs),
            tenant_vram=counts("tenant_vram", self._tenant_vram),
            owned_slots=per_model("owned_slots", lambda m: sorted_map(self._owned[m]),
                                  self._owned))
        changed.clear()
        return self._wf

    # ---- pools -------------------------------------------------------------------------

    def put_pool(self, p: PoolView) -> None:
        if self._pool_views.get(p.pool_id) != p:
            self._pool_views[p.pool_id] = p
            self._pools_changed.add(p.pool_id)
            self._room_dirty.add(p.pool_id)

    def drop_pool(self, pool_id: str) -> None:
        if self._pool_views.pop(pool_id, None) is not None:
            self._pools_changed.add(pool_id)
            self._room_dirty.add(pool_id)

    def _pool_half(self) -> PoolFacts:
        # O(devices of the pools changed since the last call) plus C-level map copies.
        if not self._pools_changed:
            return self._pf
        old = self._pf
        pools, devices = dict(old.pools), dict(old.devices)
        by_free, free_desc = dict(old.devices_by_free), dict(old.free_desc)
        new_ids = False
        for pid in self._pools_changed:
            prev, cur = old.pools.get(pid), self._pool_views.get(pid)
            if prev is not None:
                for d in prev.devices:
                    del devices[(pid, d.device_id)]
            if cur is None:
                pools.pop(pid, None)
                by_free.pop(pid, None)
                free_desc.pop(pid, None)
                continue
            new_ids |= prev is None
            pools[pid] = cur
            devices.update([((pid, d.device_id), d) for d in cur.devices])
            by_free[pid], free = rank_devices(cur)
            if cur.available:
                free_desc[pid] = free
            else:
                free_desc.pop(pid, None)
        if new_ids:
            pools = dict(sorted(pools.items()))
        self._pools_changed.clear()
        self._pf = PoolFacts(MappingProxyType(pools), MappingProxyType(devices),
                             MappingProxyType(by_free), MappingProxyType(free_desc))
        return self._pf
