"""Tenant quotas (platform mode): the ledger and its reasons, the per-tenant queue index,
the registry's per-tenant counts (incremental = from scratch), credit drawn as jobs
finish (in memory and in the store), and the decision loop holding over-quota work in
the queue and running it once capacity frees — never rejecting it."""

import asyncio
import random
import time

import pytest

from common.config import Config
from llama_orch.v1 import common_pb2 as C, events_pb2 as E
from orchestrator import quota, quota_store
from orchestrator.core import Orchestrator
from orchestrator.queue_index import QueueIndex
from orchestrator.quota import Ledger, TenantLimits
from orchestrator.registry import PoolRecord, Registry, WorkerRecord
from orchestrator.snapshot import JobView, assemble, build_snapshot
from orchestrator.store import Store
from orchestrator.store.store import TenantRow
from orchestrator.types import JobState, Priority, WorkerPhase
from tests.orchestrator.scripted_pool import ScriptedPool
from tests.orchestrator.test_slots import FakeWorker, until
from tests.orchestrator.test_snapshot_incremental import World, assert_same

GB = 1 << 30
I, B = Priority.INTERACTIVE, Priority.BATCH


# ---- limits, ledger, reasons --------------------------------------------------------------

def test_limits_from_a_store_row_treat_none_as_unlimited():
    row = TenantRow(id="t", name="t", created_at=0.0, max_concurrent_jobs=None,
                    vram_ceiling_bytes=5, token_budget=None, credit_tokens=7, auto_refill=True)
    assert TenantLimits.of(row) == TenantLimits(0, 5, 0, 7, True)


@pytest.mark.parametrize("limits,on_budget", [
    pytest.param(TenantLimits(), False, id="no-budget"),
    pytest.param(TenantLimits(token_budget=10), True, id="budget"),
    pytest.param(TenantLimits(token_budget=10, auto_refill=True), False, id="auto-refill"),
])
def test_a_budget_applies_unless_auto_refill(limits, on_budget):
    assert limits.on_budget is on_budget


@pytest.mark.parametrize("limits,running,vram,blocked,room,over_vram", [
    pytest.param(None, 0, 0, "", 9, "", id="unknown-tenant-unlimited"),
    pytest.param(TenantLimits(max_concurrent_jobs=4), 4, 0,
                 "tenant quota: 4 of 4 concurrent jobs", 0, "", id="concurrency-full"),
    pytest.param(TenantLimits(max_concurrent_jobs=4), 1, 0, "", 3, "", id="concurrency-room"),
    pytest.param(TenantLimits(token_budget=100, credit_tokens=0), 0, 0,
                 "tenant token budget exhausted: credit 0", 9, "", id="budget-exhausted"),
    pytest.param(TenantLimits(token_budget=100, credit_tokens=0, auto_refill=True), 0, 0,
                 "", 9, "", id="auto-refill"),
    pytest.param(TenantLimits(vram_ceiling_bytes=2 * GB), 1, 2 * GB, "", 9,
                 "tenant VRAM ceiling: 2.0 GiB held + 1.0 GiB for a worker > 2.0 GiB",
                 id="vram-ceiling"),
])
def test_ledger(limits, running, vram, blocked, room, over_vram):
    led = Ledger({"t": limits} if limits else {}, {"t": running}, {"t": vram})
    assert led.blocked("t") == blocked
    assert led.room("t", 9) == room
    assert led.over_vram("t", GB) == over_vram


def test_the_ledger_counts_this_cycles_claims():
    led = Ledger({"t": TenantLimits(max_concurrent_jobs=2, vram_ceiling_bytes=2 * GB)}, {}, {})
    led.take("t", GB)
    assert (led.blocked("t"), led.room("t", 9), led.over_vram("t", GB)) == ("", 1, "")
    led.take("t", GB)
    assert led.blocked("t") == "tenant quota: 2 of 2 concurrent jobs"
    assert led.over_vram("t", 1) != ""
    assert all(quota.is_quota_reason(r) for r in (led.blocked("t"), led.over_vram("t", 1)))


# ---- the queue index per tenant ------------------------------------------------------------

def tj(i, tenant, model="m1", prio=I, not_before=0.0):
    return JobView(f"j{i}", model, prio, i, GB, not_before=not_before, tenant_id=tenant)


def index_of(*jobs):
    q = QueueIndex()
    for j in jobs:
        q.add(j)
    return q


def ids(jobs):
    return [j.job_id for j in jobs]


def test_heads_look_past_a_capped_tenant_without_walking_its_jobs():
    q = index_of(*[tj(i, "a") for i in range(50_000)], tj(99_999, "b"), tj(100_000, "c"))
    t0 = time.perf_counter()
    got = q.heads("m1", 5, 0.0, {"a": 0, "b": 5, "c": 5})
    assert time.perf_counter() - t0 < 0.01  # O(tenants + k), not O(a's 50,000 jobs)
    assert ids(got) == ["j99999", "j100000"]
    assert ids(q.heads("m1", 3, 0.0, {"a": 2, "b": 5, "c": 5})) == ["j0", "j1", "j99999"]
    assert ids(q.heads("m1", 3, 0.0)) == ["j0", "j1", "j2"]  # no caps: every tenant
    assert ids(q.tenant_heads("m1", "c", 3, 0.0)) == ["j100000"]
    assert sorted((t, f.job_id, n) for t, f, n in q.tenants("m1", 0.0)) == [
        ("a", "j0", 50_000), ("b", "j99999", 1), ("c", "j100000", 1)]


def test_random_operations_per_tenant_match_a_sorted_list():
    rng = random.Random(11)
    q, live, order = QueueIndex(), {}, 0
    tenants = ["", "a", "b", "c"]
    for step in range(4000):
        now = step / 10
        if live and rng.random() < 0.45:
            jid = rng.choice(sorted(live))
            q.remove(jid)
            del live[jid]
        else:
            order += 1
            j = JobView(f"j{order}", rng.choice(["m1", "m2"]), rng.choice([I, B]), order, GB,
                        not_before=rng.choice([0.0, 0.0, now + rng.random() * 5]),
                        tenant_id=rng.choice(tenants))
            q.add(j)
            live[j.job_id] = j
        if step % 50 == 0:
            caps = {t: rng.randint(0, 3) for t in tenants}
            for m in ("m1", "m2"):
                ready = sorted((j for j in live.values()
                                if j.model_ref == m and j.not_before <= now),
                               key=lambda j: (j.priority, j.order))
                assert ids(q.heads(m, 7, now)) == ids(ready[:7])
                capped, taken = [], {}
                for j in ready:
                    if taken.get(j.tenant_id, 0) < caps[j.tenant_id]:
                        taken[j.tenant_id] = taken.get(j.tenant_id, 0) + 1
                        capped.append(j)
                assert ids(q.heads(m, 7, now, caps)) == ids(capped[:7])
                per = {}
                for j in ready:
                    per.setdefault(j.tenant_id, []).append(j)
                assert {t: (f.job_id, n) for t, f, n in q.tenants(m, now)} == {
                    t: (js[0].job_id, len(js)) for t, js in per.items()}
                for t, js in per.items():
                    assert ids(q.tenant_heads(m, t, 3, now)) == ids(js[:3])
    assert len(q) == len(live)
    for mq in q._models.values():  # lazy deletion stays bounded
        assert sum(map(len, mq.heaps.values())) + len(mq.delayed) <= (
            2 * (mq.n_ready + mq.n_delayed) + 130)


# ---- the registry's per-tenant counts ---------------------------------------------------------

def test_a_worker_is_its_tenants_from_the_first_job_to_the_last():
    reg = Registry()
    reg.pools["p1"] = PoolRecord("p1", C.Inventory())
    w = WorkerRecord("w1", "p1", "m1", ("g0", "g1"), 2 * GB, phase=WorkerPhase.READY, slots=4)
    reg.workers["w1"] = w
    w.reserve("j1", "a")
    w.reserve("j2", "a")
    wf = reg.facts().worker_facts
    assert (w.tenant_id, wf.workers["w1"].tenant_id) == ("a", "a")
    assert (wf.tenant_running, wf.tenant_vram, wf.owned_slots) == (
        {"a": 2}, {"a": 4 * GB}, {"m1": {"a": 2}})  # 2 GiB x 2 devices, once per worker
    w.unreserve("j1")
    assert w.tenant_id == "a" and reg.facts().worker_facts.tenant_running == {"a": 1}
    w.unreserve("j2")
    wf = reg.facts().worker_facts
    assert w.tenant_id == "" and w.idle and wf.workers["w1"].tenant_id == ""
    assert (wf.tenant_running, wf.tenant_vram, wf.owned_slots) == ({}, {}, {})
    w.unreserve("j2")  # idempotent
    w.reserve("j3")  # outside platform mode: no tenant
    assert w.tenant_id == "" and reg.facts().worker_facts.tenant_running == {}


class TenantWorld(World):
    """The incremental-snapshot walk, with tenants on jobs and workers."""

    TENANTS = ("a", "b", "c")

    def reserve(self) -> None:
        ws = [w for w in self.reg.workers.values() if w.free_slots]
        if ws:
            self.serial += 1
            w = self.rng.choice(ws)
            w.reserve(f"j{self.serial}", w.tenant_id if w.jobs else self.rng.choice(self.TENANTS))

    def queue(self) -> None:
        super().queue()
        for job in list(self.index):
            if not job.tenant_id:
                self.index.add(JobView(**{**{f: getattr(job, f) for f in job.__slots__},
                                          "tenant_id": self.rng.choice(self.TENANTS)}))

    LIMITS = {"a": TenantLimits(max_concurrent_jobs=2),
              "b": TenantLimits(vram_ceiling_bytes=4 * GB)}

    def incremental(self):
        return assemble(self.index, self.reg.facts(self.pins), self.now, tenancy=True,
                        tenants=self.LIMITS)

    def scratch(self):
        return build_snapshot(self.index, self.reg.worker_views(), self.reg.pool_views(),
                              self.now, pins=self.pins, tenancy=True, tenants=self.LIMITS)


TenantWorld.CHANGES = {getattr(TenantWorld, f.__name__): n for f, n in World.CHANGES.items()}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_incremental_tenant_counts_equal_a_from_scratch_build(seed):
    world = TenantWorld(random.Random(seed))
    seen = 0
    for i in range(300):
        steps = [world.step() for _ in range(world.rng.choice([1, 1, 5]))]
        snap = world.incremental()
        assert_same(snap, world.scratch(), f"step {i}: {steps}")
        seen += bool(snap.tenant_running) + bool(snap.owned_slots)
    assert seen > 20  # the walk did hold tenants' jobs


# ---- credit ---------------------------------------------------------------------------------

class _Usage:
    def __init__(self, p, c):
        self.prompt_tokens, self.completion_tokens = p, c


class _Job:
    def __init__(self, tenant, p=3, c=4):
        self.tenant_id, self.usage, self.job_id = tenant, _Usage(p, c), "j1"


async def test_charge_draws_prompt_and_completion_tokens_from_credit(tmp_path):
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'q.db'}")
    try:
        await store.create_tenant(TenantRow(id="t1", name="one", created_at=1.0,
                                            token_budget=100, credit_tokens=10))
        cfg = Config(mode="platform")
        orch = Orchestrator(cfg, store=store)
        orch.tenant_limits_changed("t1", await store.get_tenant("t1"))
        assert quota.charge(orch, _Job("t1")) == 7
        assert orch.tenant_limits["t1"].credit_tokens == 3  # at once, for the next cycle
        assert (await orch.reload_tenant("t1")).credit_tokens == 3  # and in the store
        quota.charge(orch, _Job("t1"))
        assert orch.tenant_limits["t1"].credit_tokens == -4  # a finished job is never cut short
        assert Ledger(orch.tenant_limits, {}, {}).blocked("t1") == (
            "tenant token budget exhausted: credit -4")
        await store.add_credit("t1", 100)  # AddCredit, then the admin API's reload
        assert (await orch.reload_tenant("t1")).credit_tokens == 96
        assert quota.charge(orch, _Job("")) == 0  # no tenant, nothing to draw
        orch.cfg = Config(mode="lab")
        assert quota.charge(orch, _Job("t1")) == 0  # no quotas outside platform mode
        assert await quota_store.load(store) == {"t1": TenantLimits(0, 0, 100, 96, False)}
    finally:
        await store.close()


# ---- the decision loop: over-quota work waits, then runs; nothing is rejected ------------------

@pytest.fixture
async def platform():
    cfg = Config(mode="platform")
    cfg.pool.heartbeat_ms = 200
    cfg.orchestrator.missed_heartbeats = 1000
    o = Orchestrator(cfg)
    o.tenant_limits_changed("t-a", TenantLimits(max_concurrent_jobs=2))
    await o.start()
    ScriptedPool(o, "p", ["sim-0", "sim-1"])
    fakes: list[FakeWorker] = []

    async def announce(worker_id, slots, device="sim-0"):
        fake = await FakeWorker(slots).start()
        fakes.append(fake)
        o.worker_ready("p", C.WorkerInfo(
            worker_id=worker_id, model_ref=o.catalog.resolve("tiny").ref, device_ids=[device],
            endpoint=f"127.0.0.1:{fake.port}", state=C.WORKER_STATE_READY, slots=slots), 0)
        return fake
    o.announce = announce
    yield o
    await o.stop()
    for fake in fakes:
        await fake.stop()


async def submit(orch, tenant, n):
    return [(await orch.submit(C.JobSpec(model="tiny", prompt=f"the fox {i}"),
                               tenant_id=tenant))[0] for i in range(n)]


async def test_over_quota_jobs_wait_with_the_reason_then_run(platform):
    orch = platform
    fake = await orch.announce("w1", slots=8)
    jobs = await submit(orch, "t-a", 5)
    await until(lambda: len(fake.gates) == 2)
    await asyncio.sleep(0.2)
    assert len(fake.gates) == 2  # 8 free slots, but the tenant's quota is 2
    queued = [j for j in jobs if j.state is JobState.QUEUED]
    assert len(queued) == 3 and queued[0].waiting_reason == "tenant quota: 2 of 2 concurrent jobs"
    waiting = [f for f in orch.facts._ring if f.kind == E.FACT_KIND_JOB_WAITING]
    assert any(f.job_id == queued[0].job_id and f.message == queued[0].waiting_reason
               for f in waiting)  # the fact stream says why
    assert not any(f.kind == E.FACT_KIND_JOB_FAILED for f in orch.facts._ring)
    # Another tenant is not held by A's quota, and does not share A's worker.
    other = await submit(orch, "t-b", 1)
    await asyncio.sleep(0.2)
    assert other[0].state is JobState.QUEUED and len(fake.gates) == 2
    fake2 = await orch.announce("w2", slots=1, device="sim-1")
    await until(lambda: len(fake2.gates) == 1)
    # Capacity frees: the waiting jobs run, two at a time, and every one succeeds.
    while any(not j.done for j in jobs):
        for job_id in list(fake.gates):
            fake.end(job_id)
        await asyncio.sleep(0.02)
        assert len(fake.gates) <= 2
    assert all(j.state is JobState.SUCCEEDED and j.error is None for j in jobs)
    assert fake.most == 2 and fake.refused == []
    assert orch.registry.workers["w1"].tenant_id == ""
    fake2.end(next(iter(fake2.gates)))
    await until(lambda: other[0].done)


async def test_raising_the_quota_lets_waiting_jobs_run_at_once(platform):
    orch = platform
    fake = await orch.announce("w1", slots=8)
    jobs = await submit(orch, "t-a", 4)
    await until(lambda: len(fake.gates) == 2)
    orch.tenant_limits_changed("t-a", TenantLimits(max_concurrent_jobs=4))  # SetQuota
    await until(lambda: len(fake.gates) == 4)
    for job_id in list(fake.gates):
        fake.end(job_id)
    await until(lambda: all(j.done for j in jobs))


async def test_a_tenant_unknown_at_start_waits_for_its_limits(platform):
    orch = platform
    fake = await orch.announce("w1", slots=8)
    jobs = await submit(orch, "t-new", 2)  # no store: its limits load as unlimited
    await until(lambda: len(fake.gates) == 2)
    assert "t-new" in orch.tenant_limits
    for job_id in list(fake.gates):
        fake.end(job_id)
    await until(lambda: all(j.done for j in jobs))
