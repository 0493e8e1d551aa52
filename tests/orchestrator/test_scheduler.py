"""Table tests of the built-in policy: the same snapshot gives the same decisions."""

import pytest

from orchestrator.scheduler import decide
from orchestrator.snapshot import (DeviceView, Dispatch, JobView, PoolView, Snapshot,
                                   StartWorker, Wait, WorkerView)
from orchestrator.types import Priority, WorkerPhase

GB = 1 << 30
M1, M2 = "file:/m1", "file:/m2"


def job(i, model=M1, prio=Priority.INTERACTIVE, mem=GB, devices=1):
    return JobView(f"j{i}", model, prio, i, mem, devices)


def worker(i, model=M1, phase=WorkerPhase.READY, last_used=0.0, pool="p1", devs=("g0",)):
    return WorkerView(f"w{i}", pool, model, phase, devs, last_used)


def pool(pid="p1", free=(8 * GB,), available=True):
    return PoolView(pid, available, tuple(DeviceView(f"g{i}", 8 * GB, f) for i, f in enumerate(free)))


CASES = [
    pytest.param(Snapshot((job(1),), (worker(1),), (pool(),)),
                 [Dispatch("j1", "w1", "idle worker with the model")], id="dispatch-to-idle"),
    pytest.param(Snapshot((job(2, prio=Priority.BATCH), job(1)), (worker(1),), (pool(),)),
                 [Dispatch("j1", "w1", "idle worker with the model"),
                  Wait("j2", "all workers for the model are busy or starting")],
                 id="interactive-before-batch"),
    pytest.param(Snapshot((job(1), job(2)), (worker(1),), (pool(),)),
                 [Dispatch("j1", "w1", "idle worker with the model"),
                  Wait("j2", "all workers for the model are busy or starting")], id="fifo-in-class"),
    pytest.param(Snapshot((job(1),), (worker(1, model=M2),), (pool(free=(8 * GB, 2 * GB)),)),
                 [StartWorker(M1, "p1", ("g0",), GB, f"no worker for {M1}; most free memory on p1"),
                  Wait("j1", "worker starting")], id="affinity-start-on-most-free"),
    pytest.param(Snapshot((job(1),), (worker(1, phase=WorkerPhase.STARTING),), (pool(),)),
                 [Wait("j1", "all workers for the model are busy or starting")], id="wait-for-starting"),
    pytest.param(Snapshot((job(1, mem=9 * GB),), (), (pool(),)),
                 [Wait("j1", "no device has room for the model")], id="no-fit"),
    pytest.param(Snapshot((job(1, mem=3 * GB, devices=2),), (), (pool(free=(4 * GB, 1 * GB, 5 * GB)),)),
                 [StartWorker(M1, "p1", ("g2", "g0"), 3 * GB, f"no worker for {M1}; most free memory on p1"),
                  Wait("j1", "worker starting")], id="two-device-mask-fits-every-device"),
    pytest.param(Snapshot((job(1),), (), (pool(available=False),)),
                 [Wait("j1", "no pool available")], id="no-pool"),
    pytest.param(Snapshot((job(1),), (), (pool(),), now=10.0, start_backoff_until=((M1, 20.0),)),
                 [Wait("j1", "worker start failed recently; backing off")], id="start-backoff"),
    pytest.param(Snapshot((job(1),), (worker(1, last_used=5.0), worker(2, last_used=1.0)), (pool(),)),
                 [Dispatch("j1", "w2", "idle worker with the model")], id="longest-idle-worker"),
]


@pytest.mark.parametrize("snap,expected", CASES)
def test_decide(snap, expected):
    assert decide(snap) == expected
    assert decide(snap) == expected  # deterministic: same snapshot, same decisions


def test_one_wait_per_model_and_reason_for_deep_queues():
    snap = Snapshot(tuple(job(i) for i in range(1000)), (worker(1, phase=WorkerPhase.BUSY),), (pool(),))
    assert decide(snap) == [Wait("j0", "all workers for the model are busy or starting")]
