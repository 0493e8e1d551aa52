"""The registry's incrementally kept snapshot halves equal a from-scratch build.

Random sequences (fixed seeds) of the changes the orchestrator makes to its records:
workers added, started, given and relieved of jobs, stopped, gone, replaced; pools
joining, heartbeating, draining, lost and rejoining; pins and queued jobs changing.
After every step the snapshot assembled from Registry.facts must equal build_snapshot
over Registry.worker_views / pool_views, field by field (and in order where the
Snapshot promises one), and every snapshot handed out earlier must still read as it did
when it was taken.
"""

import dataclasses
import random
from collections.abc import Mapping

import pytest

from llama_orch.v1 import common_pb2 as C
from orchestrator.queue_index import QueueIndex
from orchestrator.registry import PoolRecord, Registry, WorkerRecord
from orchestrator.snapshot import JobView, Snapshot, assemble, build_snapshot
from orchestrator.types import Priority, WorkerPhase

GIB = 1 << 30
MODELS = ("m0", "m1", "m2", "m3")
POOLS = ("p0", "p1", "p2")
# Mappings whose iteration order the Snapshot promises (models sorted, or head order).
ORDERED = {"queued", "open_workers", "idle", "free_slots", "busy_by_model", "serving_by_model",
           "lanes_by_model", "starting_by_model", "devices_of_model", "pools", "pins",
           "start_advice", "unservable", "pools_by_room", "pools_by_evictable_room"}


def plain(snap: Snapshot) -> dict:
    """The snapshot's content as plain values, to compare (and to keep for later)."""
    return {f.name: dict(v) if isinstance(v := getattr(snap, f.name), Mapping) else v
            for f in dataclasses.fields(Snapshot)}


def assert_same(incremental: Snapshot, scratch: Snapshot, step: str) -> None:
    for f in dataclasses.fields(Snapshot):
        a, b = getattr(incremental, f.name), getattr(scratch, f.name)
        if isinstance(a, Mapping):
            assert dict(a) == dict(b), f"{f.name} differs after {step}"
            if f.name in ORDERED:
                assert list(a) == list(b), f"{f.name} out of order after {step}"
        else:
            assert a == b, f"{f.name} differs after {step}"


class World:
    """A registry changed the ways the orchestrator changes it, at random."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.reg = Registry()
        self.index = QueueIndex()
        self.pins: dict[str, set[tuple[str, str]]] = {}
        self.now = 1000.0
        self.serial = 0
        self.devices = {pid: [f"d{i}" for i in range(rng.randint(1, 3))] for pid in POOLS}
        self.kinds = {pid: rng.choice([C.DEVICE_KIND_SIMULATED, C.DEVICE_KIND_GPU,
                                       C.DEVICE_KIND_CPU]) for pid in POOLS}
        for pid in POOLS[:2]:
            self.join(pid)

    # ---- helpers ---------------------------------------------------------------------

    def inventory(self, pid: str) -> C.Inventory:
        rng, pids = self.rng, [w.pid for w in self.reg.workers_of(pid) if w.pid]
        devices = []
        for d in self.devices[pid]:
            procs = [C.DeviceProcess(pid=p, used_memory_bytes=rng.randint(0, 3) * GIB)
                     for p in rng.sample(pids, min(len(pids), rng.randint(0, 2)))]
            if rng.random() < 0.3:
                procs.append(C.DeviceProcess(pid=999, used_memory_bytes=GIB))  # not ours
            used = rng.randint(0, 12) * GIB
            devices.append(C.Device(id=d, kind=self.kinds[pid], memory_total_bytes=16 * GIB,
                                    memory_used_bytes=used, memory_free_bytes=16 * GIB - used,
                                    processes=procs))
        return C.Inventory(devices=devices, engines=["hf", "sim"],
                           ram_available_bytes=self.rng.randint(4, 16) * GIB)

    def join(self, pid: str) -> None:
        self.reg.pools[pid] = PoolRecord(pid, self.inventory(pid))

    def record(self, wid: str = "") -> WorkerRecord:
        rng = self.rng
        pid = rng.choice(list(self.reg.pools) or list(POOLS))
        if not wid:
            self.serial += 1
            wid = f"w{self.serial}"
        devs = tuple(sorted(rng.sample(self.devices[pid], rng.randint(1, len(self.devices[pid])))))
        return WorkerRecord(wid, pid, rng.choice(MODELS), devs, rng.choice([1, 2, 3]) * GIB,
                            pid=rng.choice([0, 0, 100 + self.serial, 7]))

    def some_worker(self) -> WorkerRecord | None:
        ws = list(self.reg.workers.values())
        return self.rng.choice(ws) if ws else None

    def some_pool(self) -> PoolRecord | None:
        ps = list(self.reg.pools.values())
        return self.rng.choice(ps) if ps else None

    # ---- the changes -------------------------------------------------------------------

    def add_worker(self) -> None:
        w = self.record()
        if self.rng.random() < 0.2:
            self.reg.workers.update({w.worker_id: w})
        else:
            self.reg.workers[w.worker_id] = w

    def ready(self) -> None:  # as Orchestrator.worker_ready
        w = self.some_worker()
        if w is None or w.phase is WorkerPhase.GONE:
            return
        w.phase, w.pid = WorkerPhase.READY, self.rng.choice([w.pid, 7, 200 + self.serial])
        w.slots = self.rng.choice([1, 1, 2, 4])
        if len(w.jobs) >= w.slots:
            w.phase = WorkerPhase.BUSY
        w.device_bytes = {d: self.rng.randint(1, 4) * GIB for d in w.device_ids
                          if self.rng.random() < 0.8}
        w.last_used = self.now

    def reserve(self) -> None:
        ws = [w for w in self.reg.workers.values() if w.free_slots]
        if ws:
            self.serial += 1
            self.rng.choice(ws).reserve(f"j{self.serial}")

    def unreserve(self) -> None:
        ws = [w for w in self.reg.workers.values() if w.jobs]
        if ws:
            w = self.rng.choice(ws)
            w.unreserve(self.rng.choice(sorted(w.jobs)))
            w.last_used = self.now  # unreserve stamps the wall clock; keep the test's clock
        else:
            w = self.some_worker()
            if w is not None:
                w.unreserve("never-reserved")

    def stop(self) -> None:
        w = self.some_worker()
        if w is not None and w.phase is not WorkerPhase.GONE:
            w.phase = WorkerPhase.STOPPING

    def gone(self) -> None:  # as Orchestrator.worker_gone; sometimes left in the registry
        w = self.some_worker()
        if w is None:
            return
        if self.rng.random() < 0.8:
            self.reg.workers.pop(w.worker_id)
        w.phase = WorkerPhase.GONE

    def replace_worker(self) -> None:
        w = self.some_worker()
        if w is not None:
            self.reg.workers[w.worker_id] = self.record(w.worker_id)

    def touch_worker(self) -> None:
        w = self.some_worker()
        if w is None:
            return
        what = self.rng.randrange(4)
        if what == 0:
            w.last_used = self.now - self.rng.random()
        elif what == 1:
            w.device_bytes = {d: self.rng.randint(0, 5) * GIB for d in w.device_ids}
        elif what == 2:
            w.pid = self.rng.choice([0, 7, 300 + self.serial])
        else:
            w.memory_estimate = self.rng.choice([1, 2, 3]) * GIB

    def heartbeat(self) -> None:
        p = self.some_pool()
        if p is not None:
            p.inventory = self.inventory(p.pool_id)

    def drain(self) -> None:
        p = self.some_pool()
        if p is not None:
            p.draining = not p.draining

    def availability(self) -> None:
        p = self.some_pool()
        if p is not None:
            p.available = not p.available

    def lose_pool(self) -> None:  # as Orchestrator.pool_lost; its workers sometimes linger
        p = self.some_pool()
        if p is None:
            return
        p.available = False
        how = self.rng.randrange(3)
        if how == 0:
            del self.reg.pools[p.pool_id]
        elif how == 1:
            self.reg.pools.pop(p.pool_id)
        else:
            self.reg.pools.popitem() if len(self.reg.pools) == 1 else self.reg.pools.pop(p.pool_id)
        if self.rng.random() < 0.7:
            for w in self.reg.workers_of(p.pool_id):
                self.reg.workers.pop(w.worker_id)
                w.phase = WorkerPhase.GONE

    def join_pool(self) -> None:
        pid = self.rng.choice(POOLS)
        if self.rng.random() < 0.5 or pid not in self.reg.pools:
            self.join(pid)  # a new link, or a reconnect replacing the old record
        else:
            self.reg.pools.setdefault(pid, PoolRecord(pid, self.inventory(pid)))

    def pin(self) -> None:
        m = self.rng.choice(MODELS)
        if self.rng.random() < 0.5 and self.reg.pools:
            pid = self.rng.choice(list(self.reg.pools))
            self.pins.setdefault(m, set()).add((pid, self.rng.choice(self.devices[pid])))
        elif m in self.pins:
            self.pins[m].clear() if self.rng.random() < 0.5 else self.pins.pop(m)

    def queue(self) -> None:
        rng = self.rng
        if rng.random() < 0.6 or not len(self.index):
            for _ in range(rng.randint(1, 4)):
                self.serial += 1
                nb = self.now + rng.uniform(0.5, 5) if rng.random() < 0.2 else 0.0
                m = rng.choice(MODELS)
                self.index.add(JobView(f"q{self.serial}", m, rng.choice(list(Priority)),
                                       self.serial, GIB * (1 + MODELS.index(m) % 2),
                                       1 + (m == "m3"), "hf", nb))
        else:
            for job in rng.sample(list(self.index), min(len(self.index), rng.randint(1, 4))):
                self.index.remove(job.job_id)

    CHANGES = {add_worker: 8, ready: 8, reserve: 10, unreserve: 8, stop: 3, gone: 3,
               replace_worker: 1, touch_worker: 4, heartbeat: 4, drain: 1, availability: 1,
               lose_pool: 1, join_pool: 2, pin: 2, queue: 6}

    def step(self) -> str:
        change = self.rng.choices(list(self.CHANGES), weights=list(self.CHANGES.values()))[0]
        change(self)
        self.now += self.rng.choice([0.0, 0.1, 1.0])
        return change.__name__

    # ---- the two ways to a snapshot ------------------------------------------------------

    def incremental(self) -> Snapshot:
        return assemble(self.index, self.reg.facts(self.pins), self.now)

    def scratch(self) -> Snapshot:
        return build_snapshot(self.index, self.reg.worker_views(), self.reg.pool_views(),
                              self.now, pins=self.pins)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
def test_incremental_snapshot_equals_a_from_scratch_build(seed):
    world = World(random.Random(seed))
    kept: list[tuple[Snapshot, dict]] = []
    most = 0
    for i in range(400):
        # Several changes between snapshots now and then: dirty sets fold many at once.
        steps = [world.step() for _ in range(world.rng.choice([1, 1, 1, 5]))]
        snap = world.incremental()
        assert_same(snap, world.scratch(), f"step {i}: {steps}")
        if i % 20 == 0:
            kept.append((snap, plain(snap)))
        counts = {p: 0 for p in WorkerPhase}
        for w in world.reg.workers.values():
            counts[w.phase] += 1
        assert world.reg.phase_counts == counts
        most = max(most, len(snap.workers))
    assert most > 5  # the walk did get somewhere
    for snap, then in kept:  # a snapshot handed out never changes afterwards
        assert plain(snap) == then


def test_the_fleet_is_shared_until_something_changes():
    world = World(random.Random(7))
    for _ in range(60):
        world.add_worker()
        world.ready()
    reg = world.reg
    fleet = reg.facts(world.pins)
    assert reg.facts(world.pins) is fleet
    w = next(w for w in reg.workers.values() if w.free_slots and w.model_ref == "m0")
    w.reserve("job")
    after = reg.facts(world.pins)
    wf, was = after.worker_facts, fleet.worker_facts
    assert after is not fleet and wf.workers[w.worker_id].active == 1
    # A job in a slot touches its model's indexes only, and no pool.
    others = [m for m in wf.open_workers if m != "m0"]
    assert others and all(wf.open_workers[m] is was.open_workers[m] for m in others)
    assert after.pool_facts is fleet.pool_facts
    reg.pools[w.pool_id].draining = True
    pf = reg.facts(world.pins).pool_facts
    assert pf is not fleet.pool_facts and not pf.pools[w.pool_id].available


def test_members_dict_keeps_the_index_in_step_however_it_is_changed():
    reg = Registry()
    reg.pools["p1"] = PoolRecord("p1", C.Inventory(devices=[
        C.Device(id="d0", kind=C.DEVICE_KIND_SIMULATED, memory_total_bytes=8 * GIB)]))
    a, b, c = (WorkerRecord(f"w{i}", "p1", "m", ("d0",), GIB, phase=WorkerPhase.READY)
               for i in (1, 2, 3))
    reg.workers.update(w1=a)
    reg.workers |= {"w2": b}
    reg.workers.setdefault("w3", c)
    assert set(reg.facts().worker_facts.workers) == {"w1", "w2", "w3"}
    reg.workers.popitem()
    del reg.workers["w1"]
    assert set(reg.facts().worker_facts.workers) == {"w2"}
    reg.workers.clear()
    a.phase = WorkerPhase.STOPPING  # no longer in the registry: not tracked
    assert dict(reg.facts().worker_facts.workers) == {}
    assert reg.phase_counts[WorkerPhase.READY] == 0
