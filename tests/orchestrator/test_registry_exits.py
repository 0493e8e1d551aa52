"""A worker that exited holds nothing, though the pool's last inventory still counts it.

The pool reports a worker's exit at once but its memory only with its next heartbeat
(every 2 s by default). Until then that memory is neither another worker's nor someone
else's: the device's free memory must show it free, so one eviction that makes room is
enough (no second one), while memory that is still in use (a process outside
llama-orch, a worker still running, an inventory taken after the exit) still counts.
"""

import asyncio
import shutil

import pytest

from common.config import Config, ModelConfig
from llama_orch.v1 import common_pb2 as C
from orchestrator.catalog import TINY_PATH
from orchestrator.core import Orchestrator
from orchestrator.queue_index import QueueIndex
from orchestrator.registry import PoolRecord, Registry, WorkerRecord
from orchestrator.scheduler import Reason, decide
from orchestrator.snapshot import JobView, StartWorker, StopWorker, Wait, assemble
from orchestrator.types import Priority, WorkerPhase
from tests.orchestrator.scripted_pool import ScriptedPool

GIB = 1 << 30
READY, STARTING, STOPPING, GONE = (WorkerPhase.READY, WorkerPhase.STARTING,
                                   WorkerPhase.STOPPING, WorkerPhase.GONE)
SIM, GPU = C.DEVICE_KIND_SIMULATED, C.DEVICE_KIND_GPU


def inv(used=0, procs=(), kind=SIM, total=8):
    return C.Inventory(engines=["sim"], devices=[C.Device(
        id="d0", kind=kind, memory_total_bytes=total * GIB, memory_used_bytes=used * GIB,
        memory_free_bytes=(total - used) * GIB,
        processes=[C.DeviceProcess(pid=p, used_memory_bytes=b * GIB) for p, b in procs])])


def worker(i, pid, reported=None, phase=READY, estimate=5):
    w = WorkerRecord(f"w{i}", "p1", "m", ("d0",), estimate * GIB, phase=phase, pid=pid)
    if reported is not None:
        w.device_bytes = {"d0": reported * GIB}
    return w


def exit_(reg, i):
    reg.workers.pop(f"w{i}").phase = GONE  # as Orchestrator.worker_gone


# Each case: the inventory at the start, our workers, then steps: ("exit", i) is worker
# w{i}'s exit report; ("beat", inventory) a heartbeat; ("start", worker) a new worker
# record; ("rejoin", inventory) the pool's registration on a new link. Then the device's
# free GiB.
CASES = [
    pytest.param(inv(5, [(11, 5)]), [worker(1, 11, 5)], [("exit", 1)], 8,
                 id="exited-worker-frees-what-the-inventory-lists-for-its-pid"),
    pytest.param(inv(7, [(11, 5), (99, 2)]), [worker(1, 11, 5)], [("exit", 1)], 6,
                 id="a-foreign-process-still-counts-after-our-worker-exits"),
    pytest.param(inv(7, [(11, 5), (99, 2)], GPU), [worker(1, 11, 4)], [("exit", 1)], 6,
                 id="gpu-exited-worker-at-what-the-driver-listed-not-its-report"),
    pytest.param(inv(7, [(99, 2)], GPU), [worker(1, 11, 5)], [("exit", 1)], 6,
                 id="gpu-without-its-process-entry-its-report-is-freed"),
    pytest.param(inv(5, [(11, 5)]), [worker(1, 11, 5, phase=STOPPING)], [("exit", 1)], 8,
                 id="an-evicted-worker-stopping-then-exited"),
    pytest.param(inv(5, [(11, 5)]), [worker(1, 11, 5)],
                 [("exit", 1), ("start", worker(2, 0, phase=STARTING))], 3,
                 id="a-start-after-the-exit-takes-the-freed-memory-once"),
    pytest.param(inv(5, [(11, 5)]), [worker(1, 11, 5)],
                 [("exit", 1), ("beat", inv(0))], 8,
                 id="the-next-heartbeat-without-it-is-not-counted-twice"),
    pytest.param(inv(5, [(11, 5)]), [worker(1, 11, 5)],
                 [("exit", 1), ("start", worker(2, 12, phase=STARTING)),
                  ("beat", inv(5, [(12, 5)]))], 3,
                 id="a-heartbeat-with-the-new-worker-only-counts-the-new-worker"),
    pytest.param(inv(5, [(11, 5)]), [worker(1, 11, 5)],
                 [("exit", 1), ("beat", inv(5, [(11, 5)]))], 8,
                 id="a-heartbeat-taken-before-the-exit-still-lists-it"),
    pytest.param(inv(5, [(11, 5)]), [worker(1, 11, 5)],
                 [("exit", 1), ("beat", inv(5, [(11, 5)])), ("beat", inv(5, [(11, 5)]))], 3,
                 id="listed-in-two-heartbeats-after-its-exit-the-memory-is-in-use"),
    pytest.param(inv(7, [(99, 2)], GPU), [worker(1, 11, 5)],
                 [("exit", 1), ("beat", inv(7, [(99, 2)], GPU))], 1,
                 id="gpu-no-process-entry-a-heartbeat-after-the-exit-is-believed"),
    pytest.param(inv(7, [(7, 2), (7, 5)]), [worker(1, 7, 2), worker(2, 7, 5)],
                 [("exit", 2)], 6,
                 id="a-pid-shared-with-a-running-worker-frees-the-exited-ones-report"),
    pytest.param(inv(2, [(55, 2)]), [worker(1, 0, phase=STARTING)], [("exit", 1)], 6,
                 id="a-start-that-never-held-memory-frees-nothing"),
    pytest.param(inv(5, [(11, 5)]), [worker(1, 11, 5)],
                 [("exit", 1), ("rejoin", inv(5, [(11, 5)]))], 3,
                 id="a-new-link-forgets-exits-reported-on-the-old-one"),
]


@pytest.mark.parametrize("first, workers, steps, free_gib", CASES)
def test_an_exited_workers_memory_is_free_until_a_later_inventory(first, workers, steps,
                                                                    free_gib):
    reg = Registry()
    pool = reg.pools["p1"] = PoolRecord("p1", first)
    reg.workers.update({w.worker_id: w for w in workers})
    reg.facts()  # the incremental view is kept from here on
    for kind, arg in steps:
        if kind == "exit":
            exit_(reg, arg)
        elif kind == "beat":
            pool.inventory = arg
        elif kind == "start":
            reg.workers[arg.worker_id] = arg
        else:  # "rejoin": the pool registers again on a new link
            pool = reg.pools["p1"] = PoolRecord("p1", arg)
    [view] = reg.pool_view(pool).devices
    assert view.free_bytes == free_gib * GIB
    assert reg.facts().pool_facts.devices[("p1", "d0")] == view  # incremental agrees
    assert reg.pool_views()[0].devices == (view,)  # from scratch agrees


# ---- the scheduler over the registry: one eviction, then a start ---------------------------

TIB = 1 << 40


def two_devices(procs: dict[str, list[tuple[int, int]]]) -> C.Inventory:
    """sim-0 (8 TiB) and sim-1 (9 TiB); `procs` per device: (pid, TiB)."""
    devices = []
    for d, total in (("sim-0", 8), ("sim-1", 9)):
        used = int(sum(b for _, b in procs.get(d, ())) * TIB)
        devices.append(C.Device(
            id=d, kind=SIM, memory_total_bytes=total * TIB, memory_used_bytes=used,
            memory_free_bytes=total * TIB - used,
            processes=[C.DeviceProcess(pid=p, used_memory_bytes=int(b * TIB))
                       for p, b in procs.get(d, ())]))
    return C.Inventory(engines=["sim"], devices=devices)


def cycle(reg: Registry, index: QueueIndex, now: float):
    return decide(assemble(index, reg.facts(), now))


def test_one_eviction_makes_room_and_the_next_cycle_starts_instead_of_evicting_again():
    # As tests/ui/test_ui_policy_pin.py's control step: each device fits one 5 TiB
    # worker; alpha (sim-1) and charlie (sim-0) are idle, alpha the least recently used;
    # bravo needs a device.
    reg = Registry()
    pool = reg.pools["p"] = PoolRecord("p", two_devices({"sim-1": [(101, 5)],
                                                          "sim-0": [(102, 5)]}))
    for wid, dev, pid, used in (("alpha", "sim-1", 101, 1.0), ("charlie", "sim-0", 102, 2.0)):
        reg.workers[wid] = w = WorkerRecord(wid, "p", wid, (dev,), 5 * TIB, phase=READY,
                                            pid=pid, device_bytes={dev: 5 * TIB})
        w.last_used = used
    index = QueueIndex()
    index.add(JobView("j1", "bravo", Priority.INTERACTIVE, 1, 5 * TIB, engine="sim"))

    [stop, wait] = cycle(reg, index, 10.0)
    assert stop == StopWorker("alpha", stop.reason) and wait.reason == Reason.EVICTING
    reg.workers["alpha"].phase = STOPPING  # carried out
    assert [d.reason for d in cycle(reg, index, 10.1)] == [Reason.EVICTING]

    reg.workers.pop("alpha").phase = GONE  # its exit report, before the next heartbeat
    decisions = cycle(reg, index, 10.2)
    assert not [d for d in decisions if isinstance(d, StopWorker)], decisions  # charlie stays
    [start] = [d for d in decisions if isinstance(d, StartWorker)]
    assert (start.pool_id, start.device_ids) == ("p", ("sim-1",))
    assert [d.reason for d in decisions if isinstance(d, Wait)] == [Reason.STARTING]

    # The start is carried out: bravo's worker takes what alpha freed, once (4 TiB left),
    # before the next heartbeat and after it (which shows bravo's claim, not alpha).
    reg.workers["w-bravo"] = WorkerRecord("w-bravo", "p", "bravo", ("sim-1",), 5 * TIB, pid=103)
    assert reg.facts().pool_facts.devices[("p", "sim-1")].free_bytes == 4 * TIB
    pool.inventory = two_devices({"sim-1": [(103, 5)], "sim-0": [(102, 5)]})
    devices = reg.facts().pool_facts.devices
    assert devices[("p", "sim-1")].free_bytes == 4 * TIB
    assert devices[("p", "sim-0")].free_bytes == 3 * TIB


def test_a_foreign_process_that_holds_the_memory_still_blocks_a_start():
    # alpha (4.5 TiB) exits, but something outside llama-orch holds 4.5 TiB of sim-1 too:
    # no start there, and charlie (the only idle worker left) is what eviction would take.
    reg = Registry()
    reg.pools["p"] = PoolRecord("p", two_devices({"sim-1": [(101, 4.5), (999, 4.5)],
                                                   "sim-0": [(102, 5)]}))
    reg.workers["charlie"] = WorkerRecord("charlie", "p", "charlie", ("sim-0",), 5 * TIB,
                                          phase=READY, pid=102,
                                          device_bytes={"sim-0": 5 * TIB})
    reg.workers["alpha"] = WorkerRecord("alpha", "p", "alpha", ("sim-1",), 5 * TIB,
                                        phase=STOPPING, pid=101,
                                        device_bytes={"sim-1": int(4.5 * TIB)})
    reg.facts()
    reg.workers.pop("alpha").phase = GONE
    assert reg.facts().pool_facts.devices[("p", "sim-1")].free_bytes == 4.5 * TIB
    index = QueueIndex()
    index.add(JobView("j1", "bravo", Priority.INTERACTIVE, 1, 5 * TIB, engine="sim"))
    decisions = cycle(reg, index, 10.0)
    assert not [d for d in decisions if isinstance(d, StartWorker)]
    assert [d.worker_id for d in decisions if isinstance(d, StopWorker)] == ["charlie"]


# ---- the decision loop, in-process: the exit report comes before the heartbeat -------------

@pytest.fixture
async def orch(tmp_path):
    cfg = Config()
    cfg.pool.heartbeat_ms = 2000  # the default; scripted pools send none
    cfg.orchestrator.missed_heartbeats = 1000
    for name in ("alpha", "bravo", "charlie"):
        path = tmp_path / name
        path.mkdir()
        for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            shutil.copy(TINY_PATH / f, path / f)
        cfg.models[name] = ModelConfig(ref=f"file:{path}", engine="sim", memory_bytes=5 * GIB)
    o = Orchestrator(cfg)
    await o.start()
    yield o
    await o.stop()


async def until(predicate, timeout: float = 5.0) -> None:
    async def wait():
        while not predicate():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(wait(), timeout)


async def test_the_loop_evicts_once_and_starts_on_the_freed_device(orch):
    pool = ScriptedPool(orch, "p", ["sim-0", "sim-1"])
    for d, gib, pid in ((pool.record.inventory.devices[0], 8, 102),
                        (pool.record.inventory.devices[1], 9, 101)):
        d.memory_total_bytes, d.memory_used_bytes = gib * GIB, 5 * GIB
        d.memory_free_bytes = (gib - 5) * GIB
        d.processes.add(pid=pid, used_memory_bytes=5 * GIB)
    for name, dev, pid in (("alpha", "sim-1", 101), ("charlie", "sim-0", 102)):
        orch.worker_ready("p", C.WorkerInfo(
            worker_id=name, model_ref=orch.catalog.resolve(name).ref, device_ids=[dev],
            state=C.WORKER_STATE_READY, endpoint=f"127.0.0.1:{pid}", pid=pid, slots=1,
            device_bytes={dev: 5 * GIB}), 0)
        await asyncio.sleep(0.01)  # alpha is the least recently used
    await orch.submit(C.JobSpec(model="bravo", prompt="the fox"))

    def stops():
        return [c.stop_worker.worker_id for c in pool.commands if c.HasField("stop_worker")]

    await until(lambda: stops())
    assert stops() == ["alpha"]
    orch.worker_gone("alpha", None)  # the pool's exit report; no heartbeat yet
    await until(lambda: any(c.HasField("start_worker") for c in pool.commands)
                or len(stops()) > 1)
    await asyncio.sleep(0.2)  # a few more cycles
    assert stops() == ["alpha"]  # charlie was not evicted too
    [start] = [c.start_worker for c in pool.commands if c.HasField("start_worker")]
    assert list(start.device_ids) == ["sim-1"]
