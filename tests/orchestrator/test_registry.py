"""Device memory accounting (snapshot.DeviceView): the inventory's `used` includes our
workers; what the pool attributes to them is taken out, and each one counts once."""

import pytest

from llama_orch.v1 import common_pb2 as C
from orchestrator.registry import PoolRecord, Registry, WorkerRecord
from orchestrator.types import WorkerPhase

GIB = 1 << 30
READY, STARTING, GONE = WorkerPhase.READY, WorkerPhase.STARTING, WorkerPhase.GONE
SIM, GPU, CPU = C.DEVICE_KIND_SIMULATED, C.DEVICE_KIND_GPU, C.DEVICE_KIND_CPU


def device(kind=SIM, total=8, used=0, procs=()):
    return C.Device(id="d0", kind=kind, memory_total_bytes=total * GIB,
                    memory_used_bytes=used * GIB, memory_free_bytes=(total - used) * GIB,
                    processes=[C.DeviceProcess(pid=p, used_memory_bytes=b * GIB) for p, b in procs])


def worker(i=1, phase=READY, pid=11, reported=None, estimate=2):
    w = WorkerRecord(f"w{i}", "p1", "m", ("d0",), estimate * GIB, phase=phase, pid=pid)
    if reported is not None:
        w.device_bytes = {"d0": reported * GIB}
    return w


CASES = [
    pytest.param(device(used=3, procs=[(11, 3)]), [worker(reported=3)], 5,
                 id="sim-ready-worker-counts-once-at-its-report"),
    pytest.param(device(used=2, procs=[(11, 2)]), [worker(phase=STARTING)], 6,
                 id="sim-starting-worker-counts-once-at-its-estimate"),
    pytest.param(device(used=3, procs=[(7, 1), (7, 2)]),
                 [worker(1, pid=7, reported=1), worker(2, pid=7, reported=2)], 5,
                 id="workers-sharing-a-pid-each-entry-once"),
    pytest.param(device(used=3, procs=[(55, 3)]), [], 5,
                 id="an-entry-of-no-worker-of-ours-is-external"),
    pytest.param(device(used=0), [worker(phase=GONE, reported=3)], 8,
                 id="gone-workers-hold-nothing"),
    pytest.param(device(used=2), [worker(phase=STARTING, pid=0)], 4,
                 id="pid-not-known-yet-counts-twice-until-the-next-heartbeat"),
    pytest.param(device(GPU, 80, used=30, procs=[(99, 10), (11, 20)]), [worker(reported=18)], 50,
                 id="gpu-foreign-process-is-external-ours-at-what-the-driver-sees"),
    pytest.param(device(GPU, 80, used=15, procs=[(99, 10), (11, 5)]),
                 [worker(phase=STARTING, estimate=20)], 50,
                 id="gpu-loading-worker-at-its-estimate-not-twice"),
    pytest.param(device(GPU, 80, used=30), [worker(reported=20)], 50,
                 id="gpu-without-process-list-uses-the-report"),
]


@pytest.mark.parametrize("dev, workers, free_gib", CASES)
def test_free_memory_counts_each_worker_once(dev, workers, free_gib):
    reg = Registry()
    pool = PoolRecord("p1", C.Inventory(devices=[dev], engines=["sim"]))
    reg.pools["p1"] = pool
    reg.workers.update({w.worker_id: w for w in workers})
    [view] = reg.pool_view(pool).devices
    assert view.free_bytes == free_gib * GIB
    assert reg.pool_views()[0].devices == (view,)  # the grouped path agrees


def test_cpu_memory_in_use_is_ram_not_available_minus_our_workers_reports():
    inv = C.Inventory(ram_total_bytes=64 * GIB, ram_available_bytes=40 * GIB, devices=[
        C.Device(id="d0", kind=CPU, memory_total_bytes=64 * GIB)])
    reg = Registry()
    pool = reg.pools["p1"] = PoolRecord("p1", inv)
    reg.workers["w1"] = worker(reported=4)
    # 24 GiB in use, 4 of them ours: 20 external; free = 64 - 20 - 4.
    assert reg.pool_view(pool).devices[0].free_bytes == 40 * GIB


# ---- slots: reserve/unreserve pairs and the phase they imply -----------------------------

BUSY, STOPPING = WorkerPhase.BUSY, WorkerPhase.STOPPING


def test_a_worker_is_busy_only_when_every_slot_is_taken():
    w = worker()
    w.slots = 3
    w.reserve("a")
    w.reserve("b")
    assert (w.phase, w.free_slots, w.idle) == (READY, 1, False)
    w.reserve("c")
    assert (w.phase, w.free_slots) == (BUSY, 0)
    w.unreserve("b")
    assert (w.phase, w.free_slots, w.jobs) == (READY, 1, {"a", "c"})
    w.unreserve("a")
    w.unreserve("c")
    assert (w.phase, w.free_slots, w.idle) == (READY, 3, True)


def test_unreserve_is_idempotent_and_safe_without_a_reserve():
    w = worker()
    w.reserve("a")  # one slot: full
    last_used = w.last_used
    w.unreserve("never-reserved")
    assert (w.phase, w.jobs, w.last_used) == (BUSY, {"a"}, last_used)
    w.unreserve("a")
    w.unreserve("a")
    assert (w.phase, w.jobs) == (READY, set()) and w.last_used > last_used


def test_a_stopping_worker_keeps_its_phase_as_its_jobs_end():
    w = worker()
    w.slots = 2
    w.reserve("a")
    w.reserve("b")
    w.phase = STOPPING  # a job of it crashed
    w.unreserve("a")
    assert (w.phase, w.free_slots, w.idle) == (STOPPING, 0, False)


def test_slots_and_running_jobs_reach_the_proto_and_the_snapshot_view():
    reg = Registry()
    reg.pools["p1"] = PoolRecord("p1", C.Inventory(devices=[device()], engines=["sim"]))
    w = reg.workers["w1"] = worker()
    w.slots = 4
    w.reserve("a")
    w.reserve("b")
    info = w.to_proto()
    assert (info.slots, info.active_jobs, info.state) == (4, 2, C.WORKER_STATE_READY)
    [view] = reg.worker_views()
    assert (view.slots, view.active, view.free_slots) == (4, 2, 2)
    assert reg.facts().worker_facts.workers["w1"] == view  # the incremental path agrees


# ---- phase counts: kept as records change, read by the gauges on scrape --------------------

class _Orch:  # what metrics.watch reads of an Orchestrator
    def __init__(self, registry):
        from orchestrator.queue_index import QueueIndex
        self.registry, self.index = registry, QueueIndex()


def test_worker_gauges_read_phase_counts_kept_as_records_change():
    from orchestrator import metrics

    def gauge(phase):
        return metrics.REGISTRY.get_sample_value(
            "orchd_workers", {"component": "orchestrator", "phase": phase.value})

    reg = Registry()
    orch = _Orch(reg)
    metrics.watch(orch)
    reg.pools["p1"] = PoolRecord("p1", C.Inventory(devices=[device()], engines=["sim"]))
    a = reg.workers["w1"] = worker(1)
    b = reg.workers["w2"] = worker(2, phase=STARTING)
    a.reserve("j")  # one slot: BUSY
    assert (gauge(READY), gauge(BUSY), gauge(STARTING)) == (0, 1, 1)
    b.phase = READY
    reg.workers.pop("w1").phase = GONE  # as worker_gone: out of the registry, then GONE
    assert (gauge(READY), gauge(BUSY), gauge(STARTING), gauge(GONE)) == (1, 0, 0, 0)
    assert metrics.REGISTRY.get_sample_value("orchd_pools", {"component": "orchestrator"}) == 1
    del orch  # a collected orchestrator reads as nothing
    assert gauge(READY) == 0
