import pytest

from orchestrator.snapshot import (DeviceView, Dispatch, JobView, PoolView, Snapshot,
                                   StartWorker, Wait, WorkerView)
from orchestrator.types import Priority, WorkerPhase
from orchestrator.validator import validate

GB = 1 << 30
SNAP = Snapshot(
    (JobView("j1", "m1", Priority.INTERACTIVE, 1, GB), JobView("j2", "m1", Priority.INTERACTIVE, 2, GB)),
    (WorkerView("w1", "p1", "m1", WorkerPhase.READY, ("g0",)),
     WorkerView("w2", "p1", "m1", WorkerPhase.BUSY, ("g1",)),
     WorkerView("w3", "p1", "m2", WorkerPhase.READY, ("g1",))),
    (PoolView("p1", True, (DeviceView("g0", 8 * GB, 4 * GB), DeviceView("g1", 8 * GB, 2 * GB))),
     PoolView("p2", False, (DeviceView("g0", 8 * GB, 8 * GB),))))


@pytest.mark.parametrize("decisions,refusal", [
    pytest.param([Dispatch("j1", "w1", "")], "", id="ok-dispatch"),
    pytest.param([Dispatch("jX", "w1", "")], "job is not queued", id="unknown-job"),
    pytest.param([Dispatch("j1", "wX", "")], "worker does not exist", id="missing-worker"),
    pytest.param([Dispatch("j1", "w2", "")], "worker is busy", id="busy-worker"),
    pytest.param([Dispatch("j1", "w3", "")], "different model", id="wrong-model"),
    pytest.param([StartWorker("m1", "p1", ("g0",), 3 * GB, "")], "", id="ok-start"),
    pytest.param([StartWorker("m1", "p1", ("g1",), 3 * GB, "")], "overcommit", id="overcommit"),
    pytest.param([StartWorker("m1", "p2", ("g0",), GB, "")], "unavailable", id="unavailable-pool"),
    pytest.param([StartWorker("m1", "p1", ("g9",), GB, "")], "unknown device", id="unknown-device"),
    pytest.param([StartWorker("m1", "p1", ("g0", "g0"), GB, "")], "repeats", id="repeated-device"),
    pytest.param([Wait("j1", "x")], "", id="wait"),
])
def test_single_decision(decisions, refusal):
    [(_, why)] = validate(SNAP, decisions)
    assert (refusal in why) if refusal else why == ""


def test_worker_claimed_twice_in_one_cycle_is_refused():
    out = validate(SNAP, [Dispatch("j1", "w1", ""), Dispatch("j2", "w1", "")])
    assert [why for _, why in out][0] == "" and "not idle" in out[1][1]


def test_memory_is_reserved_across_decisions_in_a_cycle():
    out = validate(SNAP, [StartWorker("m1", "p1", ("g0",), 3 * GB, ""),
                          StartWorker("m2", "p1", ("g0",), 3 * GB, "")])
    assert out[0][1] == "" and "overcommit" in out[1][1]
