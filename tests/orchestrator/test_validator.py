import dataclasses
from types import MappingProxyType

import pytest

from orchestrator.scheduler import decide
from orchestrator.snapshot import (DeviceView, Dispatch, EvictModel, JobView, PoolView, Preload,
                                   Snapshot, StartWorker, StopWorker, Wait, WorkerView)
from orchestrator.types import Priority, WorkerPhase
from orchestrator.validator import validate

GB = 1 << 30
I = Priority.INTERACTIVE
SNAP = Snapshot.of(
    [JobView("j1", "m1", I, 1, GB), JobView("j2", "m1", I, 2, GB),
     JobView("j3", "m1", I, 3, GB, not_before=50.0)],
    [WorkerView("w1", "p1", "m1", WorkerPhase.READY, ("g0",), memory_bytes=GB),
     WorkerView("w2", "p1", "m1", WorkerPhase.BUSY, ("g1",), memory_bytes=GB),
     WorkerView("w3", "p1", "m2", WorkerPhase.READY, ("g1",), memory_bytes=2 * GB),
     WorkerView("w4", "p1", "m3", WorkerPhase.READY, ("g0",), memory_bytes=GB),
     WorkerView("w5", "p1", "m1", WorkerPhase.STARTING, ("g0",), memory_bytes=GB)],
    [PoolView("p1", True, (DeviceView("g0", 8 * GB, 4 * GB), DeviceView("g1", 8 * GB, 2 * GB))),
     PoolView("p2", False, (DeviceView("g0", 8 * GB, 8 * GB),)),
     PoolView("p3", True, (DeviceView("g0", 8 * GB, 8 * GB),), engines=("trtllm",))],
    now=10.0, pins={"m3": {("p1", "g0")}})


@pytest.mark.parametrize("decisions,refusal", [
    pytest.param([Dispatch("j1", "w1", "")], "", id="ok-dispatch"),
    pytest.param([Dispatch("jX", "w1", "")], "job is not queued", id="unknown-job"),
    pytest.param([Dispatch("j3", "w1", "")], "job is not queued", id="job-in-backoff-not-a-head"),
    pytest.param([Dispatch("j1", "wX", "")], "worker does not exist", id="missing-worker"),
    pytest.param([Dispatch("j1", "w2", "")], "worker is busy", id="busy-worker"),
    pytest.param([Dispatch("j1", "w5", "")], "worker is starting", id="starting-worker"),
    pytest.param([Dispatch("j1", "w3", "")], "different model", id="wrong-model"),
    pytest.param([StartWorker("m1", "p1", ("g0",), 3 * GB, "")], "", id="ok-start"),
    pytest.param([StartWorker("m1", "p1", ("g1",), 3 * GB, "")], "overcommit", id="overcommit"),
    pytest.param([StartWorker("m1", "p1", ("g0", "g1"), 3 * GB, "")], "overcommit device memory on g1",
                 id="overcommit-any-device-of-mask"),
    pytest.param([StartWorker("m1", "p1", ("g0", "g1"), 2 * GB, "")], "", id="ok-two-device-mask"),
    pytest.param([StartWorker("m1", "p2", ("g0",), GB, "")], "unavailable", id="unavailable-pool"),
    pytest.param([StartWorker("m1", "p9", ("g0",), GB, "")], "missing", id="missing-pool"),
    pytest.param([StartWorker("m1", "p3", ("g0",), GB, "")], "engine 'hf'", id="engine-not-offered"),
    pytest.param([StartWorker("m1", "p1", ("g9",), GB, "")], "unknown device", id="unknown-device"),
    pytest.param([StartWorker("m1", "p1", ("g0", "g0"), GB, "")], "repeats", id="repeated-device"),
    pytest.param([StartWorker("m1", "p1", (), GB, "")], "empty", id="empty-mask"),
    pytest.param([StartWorker("m1", "p1", ("g0",), 0, "")], "positive", id="no-memory-estimate"),
    pytest.param([StopWorker("w3", "")], "", id="ok-stop"),
    pytest.param([StopWorker("wX", "")], "does not exist", id="stop-missing"),
    pytest.param([StopWorker("w2", "")], "busy", id="stop-busy"),
    pytest.param([StopWorker("w4", "")], "pinned", id="stop-pinned"),
    pytest.param([Wait("j1", "x")], "", id="wait"),
    pytest.param([Preload("p1", "m2", "")], "", id="ok-preload"),
    pytest.param([Preload("p2", "m2", "")], "unavailable", id="preload-unavailable-pool"),
    pytest.param([EvictModel("p1", "m3", "")], "pinned", id="evict-pinned-model"),
    pytest.param([EvictModel("p1", "m2", "")], "", id="ok-evict-model"),
    pytest.param(["nonsense"], "unknown decision", id="unknown-decision"),
])
def test_single_decision(decisions, refusal):
    [(_, why)] = validate(SNAP, decisions)
    assert (refusal in why) if refusal else why == ""


@pytest.mark.parametrize("decisions,refusals", [
    pytest.param([Dispatch("j1", "w1", ""), Dispatch("j2", "w1", "")], ["", "already claimed"],
                 id="worker-claimed-twice"),
    pytest.param([Dispatch("j1", "w1", ""), Dispatch("j1", "w1", "")], ["", "already dispatched"],
                 id="job-dispatched-twice"),
    pytest.param([StartWorker("m1", "p1", ("g0",), 3 * GB, ""), StartWorker("m2", "p1", ("g0",), 3 * GB, "")],
                 ["", "overcommit"], id="memory-reserved-across-decisions"),
    pytest.param([StopWorker("w3", ""), StartWorker("m1", "p1", ("g1",), 4 * GB, "")], ["", ""],
                 id="stop-frees-memory-for-a-later-start"),
    pytest.param([StartWorker("m1", "p1", ("g1",), 4 * GB, ""), StopWorker("w3", "")], ["overcommit", ""],
                 id="stop-after-start-frees-nothing-for-it"),
    pytest.param([StopWorker("w1", ""), Dispatch("j1", "w1", "")], ["", "already claimed"],
                 id="dispatch-to-stopped-worker"),
    pytest.param([Dispatch("j1", "w1", ""), StopWorker("w1", "")], ["", "claimed this cycle"],
                 id="stop-a-dispatched-worker"),
])
def test_decisions_in_one_cycle(decisions, refusals):
    got = [why for _, why in validate(SNAP, decisions)]
    assert len(got) == len(refusals)
    for why, refusal in zip(got, refusals):
        assert (refusal in why) if refusal else why == ""


def test_job_not_yet_eligible_is_refused_even_among_heads():
    early = JobView("j3", "m1", I, 3, GB, not_before=50.0)
    snap = dataclasses.replace(SNAP, queued=MappingProxyType({"m1": (early,)}))
    [(_, why)] = validate(snap, [Dispatch("j3", "w1", "")])
    assert "not eligible" in why


def test_the_built_in_policy_passes_its_own_validator():
    out = validate(SNAP, decide(SNAP))
    assert out and all(why == "" for _, why in out)


# ---- multi-slot workers (continuous batching) -------------------------------------------

def batching(wid, slots, active, model="m1", devs=("g0",)):
    phase = WorkerPhase.BUSY if active >= slots else WorkerPhase.READY
    return WorkerView(wid, "p1", model, phase, devs, memory_bytes=GB, slots=slots, active=active)


SLOTS = Snapshot.of(
    [JobView(f"j{i}", "m1", I, i, GB) for i in range(1, 6)],
    [batching("w1", 4, 2), batching("w2", 4, 4, devs=("g1",)), batching("w3", 4, 0),
     batching("w4", 2, 1, model="m2")],
    [PoolView("p1", True, (DeviceView("g0", 8 * GB, 4 * GB), DeviceView("g1", 8 * GB, 2 * GB)))])


@pytest.mark.parametrize("decisions,refusals", [
    pytest.param([Dispatch("j1", "w1", ""), Dispatch("j2", "w1", "")], ["", ""],
                 id="dispatches-up-to-free-slots"),
    pytest.param([Dispatch("j1", "w1", ""), Dispatch("j2", "w1", ""), Dispatch("j3", "w1", "")],
                 ["", "", "2 free slot(s) are already claimed this cycle (2 of 4 running)"],
                 id="dispatch-beyond-free-slots"),
    pytest.param([Dispatch("j1", "w2", "")], ["worker is busy with no free slot"], id="full-worker"),
    pytest.param([Dispatch(f"j{i}", "w3", "") for i in range(1, 6)], ["", "", "", "", "already claimed"],
                 id="idle-worker-takes-its-slots-then-no-more"),
    pytest.param([StopWorker("w1", "")], ["running 2 job(s), not idle"], id="stop-partly-busy-worker"),
    pytest.param([StopWorker("w4", "")], ["running 1 job(s), not idle"], id="stop-other-models-partly-busy"),
    pytest.param([StopWorker("w3", "")], [""], id="stop-worker-running-no-job"),
    pytest.param([Dispatch("j1", "w3", ""), StopWorker("w3", "")], ["", "claimed this cycle"],
                 id="stop-worker-dispatched-to-this-cycle"),
    pytest.param([StopWorker("w3", ""), Dispatch("j1", "w3", "")], ["", "already claimed this cycle (stopped)"],
                 id="dispatch-to-worker-stopped-this-cycle"),
])
def test_slots(decisions, refusals):
    got = [why for _, why in validate(SLOTS, decisions)]
    assert len(got) == len(refusals)
    for why, refusal in zip(got, refusals):
        assert (refusal in why) if refusal else why == ""


def test_the_built_in_policy_fills_slots_within_the_validator():
    out = validate(SLOTS, decide(SLOTS))
    dispatched = [d.worker_id for d, why in out if isinstance(d, Dispatch)]
    assert all(why == "" for _, why in out) and sorted(dispatched) == ["w1", "w1", "w3", "w3", "w3"]


# ---- tenancy (platform mode): workers never shared between tenants, quotas held ---------

from orchestrator.quota import TenantLimits  # noqa: E402


def tenant_worker(wid, tenant, slots, active, devs=("g0",)):
    phase = WorkerPhase.BUSY if active >= slots else WorkerPhase.READY
    return WorkerView(wid, "p1", "m1", phase, devs, memory_bytes=GB, slots=slots, active=active,
                      tenant_id=tenant)


TENANTS = Snapshot.of(
    [JobView("a1", "m1", I, 1, GB, tenant_id="A"), JobView("a2", "m1", I, 2, GB, tenant_id="A"),
     JobView("b1", "m1", I, 3, GB, tenant_id="B"), JobView("d1", "m1", I, 4, GB, tenant_id="D"),
     JobView("e1", "m1", I, 5, GB, tenant_id="E"), JobView("e2", "m1", I, 6, GB, tenant_id="E")],
    [tenant_worker("wa", "A", 4, 1), tenant_worker("idle", "", 4, 0, devs=("g1",)),
     tenant_worker("we", "E", 4, 1, devs=("g1",))],
    [PoolView("p1", True, (DeviceView("g0", 8 * GB, 4 * GB), DeviceView("g1", 8 * GB, 2 * GB)))],
    tenancy=True, tenants={"B": TenantLimits(vram_ceiling_bytes=GB // 2),
                           "E": TenantLimits(max_concurrent_jobs=2)})


@pytest.mark.parametrize("decisions,refusals", [
    pytest.param([Dispatch("a1", "wa", ""), Dispatch("a2", "idle", "")], ["", ""],
                 id="a-tenant-fills-its-own-worker-and-takes-an-idle-one"),
    pytest.param([Dispatch("b1", "wa", "")], ["worker runs another tenant's jobs"],
                 id="mixing-with-a-running-tenant"),
    pytest.param([Dispatch("a1", "idle", ""), Dispatch("d1", "idle", "")],
                 ["", "worker runs another tenant's jobs"], id="mixing-within-one-cycle"),
    pytest.param([Dispatch("e1", "we", ""), Dispatch("e2", "we", "")],
                 ["", "over the tenant's quota: tenant quota: 2 of 2 concurrent jobs"],
                 id="over-concurrent-quota"),
    pytest.param([Dispatch("b1", "idle", "")],
                 ["over the tenant's quota: tenant VRAM ceiling: 0.0 GiB held + 1.0 GiB"],
                 id="over-vram-ceiling"),
])
def test_tenancy(decisions, refusals):
    got = [why for _, why in validate(TENANTS, decisions)]
    assert len(got) == len(refusals)
    for why, refusal in zip(got, refusals):
        assert (refusal in why) if refusal else why == ""


def test_outside_platform_mode_workers_take_any_tenants_jobs():
    plain = dataclasses.replace(TENANTS, tenancy=False)
    assert [why for _, why in validate(plain, [Dispatch("b1", "wa", "")])] == [""]


def test_the_built_in_policy_keeps_tenants_apart_within_the_validator():
    out = validate(TENANTS, decide(TENANTS))
    assert all(why == "" for _, why in out)
    assert [(d.job_id, d.worker_id) for d, _ in out if isinstance(d, Dispatch)] == [
        ("a1", "wa"), ("a2", "wa"), ("d1", "idle"), ("e1", "we")]
