import pytest

from orchestrator.optimizer import OptimizerConfig, advise, should_run
from orchestrator.snapshot import (DeviceView, JobView, PoolView, PreloadAdvice, Snapshot,
                                   StartAdvice, UnservableAdvice, WorkerView)
from orchestrator.types import Priority, WorkerPhase

GB = 1 << 30
I = Priority.INTERACTIVE
BUSY = WorkerPhase.BUSY


def jobs(n, model="m1", mem=GB, devices=1, engine="hf", first=0):
    return [JobView(f"{model}-{first + i}", model, I, first + i, mem, devices, engine) for i in range(n)]


def worker(i, model="m1", devs=("g0",), pool="p1", phase=BUSY):
    return WorkerView(f"w{i}", pool, model, phase, devs, 0.0, GB)


def pool(pid="p1", free=(8 * GB, 8 * GB), total=8 * GB, available=True, engines=("hf",)):
    return PoolView(pid, available, tuple(DeviceView(f"g{i}", total, f) for i, f in enumerate(free)),
                    engines)


S = Snapshot.of
CASES = [
    pytest.param(S(jobs(1, mem=9 * GB), [], [pool()]),
                 [UnservableAdvice("m1", "needs 1 device(s) with 9.0 GiB each; the largest device has 8.0 GiB")],
                 id="unservable-bigger-than-every-device"),
    pytest.param(S(jobs(1, mem=5 * GB, devices=3), [], [pool(), pool("p2")]),
                 [UnservableAdvice("m1", "needs 3 device(s) with 5.0 GiB each; the largest device has 8.0 GiB")],
                 id="unservable-mask-larger-than-any-pool"),
    pytest.param(S(jobs(1, engine="trtllm"), [], [pool(), pool("p2", available=False, engines=("trtllm",))]),
                 [UnservableAdvice("m1", "engine 'trtllm' is not offered by any available pool")],
                 id="unservable-engine"),
    pytest.param(S(jobs(1, mem=9 * GB), [], [pool(available=False)]), [],
                 id="no-pool-available-is-transient"),
    pytest.param(S(jobs(1, mem=5 * GB), [worker(1, "m2"), worker(2, "m1", ("g1",))],
                   [pool(free=(1 * GB, 1 * GB))]), [], id="fits-by-total-memory-is-servable"),
    pytest.param(S(jobs(10), [worker(1)], [pool(free=(7 * GB, 6 * GB, 8 * GB))]),
                 [StartAdvice("m1", "p1", ("g2",)), StartAdvice("m1", "p1", ("g1",))],
                 id="start-on-idle-devices-while-backlog"),
    pytest.param(S(jobs(2), [worker(1)], [pool()]), [], id="small-backlog-no-start"),
    pytest.param(S(jobs(4, "m1") + jobs(12, "m2", first=100), [worker(1, "m1"), worker(2, "m2", ("g1",))],
                   [pool(free=(7 * GB, 7 * GB, 8 * GB))]),
                 [StartAdvice("m2", "p1", ("g2",))], id="most-pressured-model-gets-the-idle-device"),
    pytest.param(S(jobs(3, mem=2 * GB, devices=2), [], [pool(free=(8 * GB, 1 * GB, 5 * GB)), pool("p2", (3 * GB, 3 * GB))]),
                 [StartAdvice("m1", "p1", ("g0", "g2"))], id="mask-of-idle-devices-most-room"),
    pytest.param(S(jobs(1, mem=6 * GB), [worker(1, "m2"), worker(2, "m2", ("g1",))],
                   [pool(free=(2 * GB, 3 * GB)), pool("p2", (1 * GB,))]),
                 [PreloadAdvice("p1", "m1")], id="preload-when-it-needs-eviction"),
    pytest.param(S(jobs(1, mem=6 * GB), [worker(1, "m2")], [pool(free=(2 * GB, 7 * GB))]), [],
                 id="no-preload-when-it-can-start"),
]


@pytest.mark.parametrize("snap,expected", CASES)
def test_advise(snap, expected):
    assert advise(snap, 5.0) == expected
    assert advise(snap, 5.0) == expected


def test_out_of_budget_returns_what_it_found():
    snap = S(jobs(1, mem=9 * GB) + jobs(10, "m2"), [worker(1, "m2")], [pool()])
    assert advise(snap, 0.0) == [UnservableAdvice("m1", "needs 1 device(s) with 9.0 GiB each; "
                                                        "the largest device has 8.0 GiB")]


@pytest.mark.parametrize("queued,runs", [(10, False), (11, True)])
def test_runs_only_while_deeper_than_the_threshold(queued, runs):
    assert OptimizerConfig() == OptimizerConfig(threshold_queued=10, interval_s=30.0, budget_s=5.0)
    assert should_run(S(jobs(queued), [], [pool()])) is runs
