"""Table tests of the built-in policy: the same snapshot gives the same decisions."""

import pytest

from orchestrator.estimates import ModelEstimate
from orchestrator.scheduler import Reason, decide
from orchestrator.snapshot import (DeviceView, Dispatch, JobView, PoolView, Snapshot,
                                   StartAdvice, StartWorker, StopWorker, UnservableAdvice,
                                   Wait, WorkerView)
from orchestrator.types import Priority, WorkerPhase

GB = 1 << 30
M1, M2, M3 = "file:/m1", "file:/m2", "file:/m3"
READY, BUSY, STARTING, STOPPING = (WorkerPhase.READY, WorkerPhase.BUSY, WorkerPhase.STARTING,
                                   WorkerPhase.STOPPING)
BATCH = Priority.BATCH
S = Snapshot.of


def job(i, model=M1, prio=Priority.INTERACTIVE, mem=GB, devices=1, not_before=0.0, engine="hf"):
    return JobView(f"j{i}", model, prio, i, mem, devices, engine, not_before)


def worker(i, model=M1, phase=READY, last_used=0.0, pool="p1", devs=("g0",), mem=GB):
    return WorkerView(f"w{i}", pool, model, phase, devs, last_used, mem)


def batching(i, slots, active=0, model=M1, last_used=0.0, pool="p1", devs=("g0",), mem=GB):
    """A worker with `slots` slots, `active` of them running jobs (BUSY when all are)."""
    phase = BUSY if active >= slots else READY
    return WorkerView(f"w{i}", pool, model, phase, devs, last_used, mem, slots, active)


def pool(pid="p1", free=(8 * GB,), available=True, engines=("hf",)):
    return PoolView(pid, available, tuple(DeviceView(f"g{i}", 8 * GB, f) for i, f in enumerate(free)),
                    engines)


def start(model, pool_id, devs, mem=GB, why=None):
    return StartWorker(model, pool_id, devs, mem, why or f"no worker for {model}; most free memory on {pool_id}")


def stop(wid, model, pool_id="p1"):
    return StopWorker(wid, f"least recently used idle worker; making room for {model} on {pool_id}")


def go(j, w):
    return Dispatch(j, w, Reason.DISPATCH)


EST = {M1: ModelEstimate(start_s=30.0, job_s=10.0)}
ADVICE_WHY = "optimizer advice: idle devices on p1"

CASES = [
    # --- priorities, FIFO, affinity
    pytest.param(S([job(1)], [worker(1)], [pool()]), [go("j1", "w1")], id="dispatch-to-idle"),
    pytest.param(S([job(2, prio=BATCH), job(1)], [worker(1)], [pool()]),
                 [go("j1", "w1"), Wait("j2", Reason.BUSY, M1, 1)], id="interactive-before-batch"),
    pytest.param(S([job(1), job(2)], [worker(1)], [pool()]),
                 [go("j1", "w1"), Wait("j2", Reason.BUSY, M1, 1)], id="fifo-in-class"),
    pytest.param(S([job(1, prio=BATCH), job(2, model=M2)], [worker(1), worker(2, model=M2)], [pool()]),
                 [go("j2", "w2"), go("j1", "w1")], id="models-in-head-job-order"),
    pytest.param(S([job(1)], [worker(1, model=M2), worker(2, last_used=9.0)], [pool()]),
                 [go("j1", "w2")], id="affinity-only-to-the-model"),
    pytest.param(S([job(1)], [worker(1, last_used=5.0), worker(2, last_used=1.0)], [pool()]),
                 [go("j1", "w2")], id="longest-idle-worker"),
    # --- starts and placement
    pytest.param(S([job(1)], [worker(1, model=M2)], [pool(free=(8 * GB, 2 * GB))]),
                 [start(M1, "p1", ("g0",)), Wait("j1", Reason.STARTING, M1, 1)],
                 id="start-on-most-free"),
    pytest.param(S([job(1), job(2), job(3)], [], [pool()]),
                 [start(M1, "p1", ("g0",)), Wait("j1", Reason.STARTING, M1, 3)],
                 id="one-start-and-one-wait-per-model"),
    pytest.param(S([job(1)], [worker(1, phase=STARTING)], [pool()]),
                 [Wait("j1", Reason.STARTING, M1, 1)], id="wait-for-starting"),
    pytest.param(S([job(1, mem=3 * GB, devices=2)], [], [pool(free=(4 * GB, 1 * GB, 5 * GB))]),
                 [start(M1, "p1", ("g2", "g0"), 3 * GB), Wait("j1", Reason.STARTING, M1, 1)],
                 id="two-device-mask-fits-every-device"),
    pytest.param(S([job(1, mem=2 * GB, devices=2)], [],
                   [pool("p1", (3 * GB, 3 * GB)), pool("p2", (7 * GB, 1 * GB)), pool("p3", (5 * GB, 6 * GB))]),
                 [start(M1, "p3", ("g1", "g0"), 2 * GB), Wait("j1", Reason.STARTING, M1, 1)],
                 id="least-loaded-pool-by-mask-room"),
    pytest.param(S([job(1)], [], [pool("p2", (4 * GB,)), pool("p1", (4 * GB,))]),
                 [start(M1, "p1", ("g0",)), Wait("j1", Reason.STARTING, M1, 1)], id="tie-lowest-pool-id"),
    pytest.param(S([job(1)], [], [pool("p1", (8 * GB,), engines=("trtllm",)), pool("p2", (2 * GB,))]),
                 [start(M1, "p2", ("g0",)), Wait("j1", Reason.STARTING, M1, 1)], id="pool-must-offer-engine"),
    pytest.param(S([job(1, mem=6 * GB), job(2, model=M2, mem=6 * GB)], [], [pool()]),
                 [start(M1, "p1", ("g0",), 6 * GB), Wait("j1", Reason.STARTING, M1, 1),
                  Wait("j2", Reason.NO_ROOM, M2, 1)], id="reservations-within-a-cycle"),
    pytest.param(S([job(2, mem=6 * GB), job(1, model=M2, mem=6 * GB, prio=BATCH)], [], [pool()]),
                 [start(M1, "p1", ("g0",), 6 * GB), Wait("j2", Reason.STARTING, M1, 1),
                  Wait("j1", Reason.NO_ROOM, M2, 1)], id="interactive-first-for-scarce-memory"),
    pytest.param(S([job(1, mem=9 * GB)], [], [pool()]), [Wait("j1", Reason.NO_ROOM, M1, 1)], id="no-fit"),
    pytest.param(S([job(1)], [], [pool(available=False)]), [Wait("j1", Reason.NO_POOL, M1, 1)], id="no-pool"),
    pytest.param(S([job(1)], [], [pool()], now=10.0, start_backoff_until={M1: 20.0}),
                 [Wait("j1", Reason.START_BACKOFF, M1, 1)], id="start-backoff"),
    # --- retries
    pytest.param(S([job(1, not_before=20.0)], [worker(1)], [pool()], now=10.0),
                 [Wait("j1", Reason.RETRY_BACKOFF, M1, 1, 20.0)], id="retry-backoff-not-dispatched"),
    pytest.param(S([job(1, not_before=5.0)], [worker(1)], [pool()], now=10.0),
                 [go("j1", "w1")], id="retry-backoff-expired"),
    pytest.param(S([job(1, not_before=30.0), job(2, not_before=20.0), job(3)], [worker(1)], [pool()], now=10.0),
                 [go("j3", "w1"), Wait("j2", Reason.RETRY_BACKOFF, M1, 2, 20.0)],
                 id="eligible-jobs-pass-jobs-in-backoff"),
    # --- LRU eviction and pins
    pytest.param(S([job(1, mem=6 * GB)],
                   [worker(1, M2, last_used=5.0, mem=3 * GB), worker(2, M3, last_used=1.0, mem=4 * GB)],
                   [pool(free=(1 * GB,))]),
                 [stop("w2", M1), stop("w1", M1), Wait("j1", Reason.EVICTING, M1, 1)],
                 id="lru-evicts-until-room"),
    pytest.param(S([job(1, mem=6 * GB)],
                   [worker(1, M2, last_used=5.0, mem=2 * GB), worker(2, M3, last_used=1.0, mem=5 * GB)],
                   [pool(free=(1 * GB,))]),
                 [stop("w2", M1), Wait("j1", Reason.EVICTING, M1, 1)], id="lru-evicts-least-recently-used"),
    pytest.param(S([job(1, mem=5 * GB)],
                   [worker(1, M2, last_used=5.0, devs=("g1",), mem=6 * GB),
                    worker(2, M3, last_used=1.0, devs=("g0",), mem=6 * GB)],
                   [pool(free=(2 * GB, 2 * GB))], pins={M3: {("p1", "g0")}}),
                 [stop("w1", M1), Wait("j1", Reason.EVICTING, M1, 1)], id="pinned-never-evicted"),
    pytest.param(S([job(1, mem=5 * GB)],
                   [worker(1, M2, last_used=5.0, devs=("g1",), mem=6 * GB),
                    worker(2, M3, last_used=1.0, devs=("g0",), mem=6 * GB)],
                   [pool(free=(2 * GB, 2 * GB))], pins={M3: {("p1", "g1")}}),
                 [stop("w2", M1), Wait("j1", Reason.EVICTING, M1, 1)], id="pin-covers-its-devices-only"),
    pytest.param(S([job(1, mem=5 * GB)], [worker(1, M2, phase=BUSY, mem=6 * GB)], [pool(free=(2 * GB,))]),
                 [Wait("j1", Reason.NO_ROOM, M1, 1)], id="busy-workers-not-evicted"),
    pytest.param(S([job(1, mem=5 * GB)], [worker(1, M2, phase=STOPPING, mem=6 * GB),
                                          worker(2, M3, mem=1 * GB)], [pool(free=(1 * GB,))]),
                 [Wait("j1", Reason.EVICTING, M1, 1)], id="stopping-worker-frees-enough"),
    pytest.param(S([job(1, mem=6 * GB)],
                   [worker(1, M2, last_used=1.0, mem=3 * GB), worker(2, M2, last_used=2.0, pool="p2", mem=4 * GB)],
                   [pool("p1", (2 * GB,)), pool("p2", (2 * GB,))]),
                 [stop("w2", M1, "p2"), Wait("j1", Reason.EVICTING, M1, 1)], id="evicts-on-one-pool"),
    pytest.param(S([job(1, mem=6 * GB), job(2, model=M2)], [worker(1, M2, mem=7 * GB)], [pool(free=(1 * GB,))]),
                 [go("j2", "w1"), Wait("j1", Reason.NO_ROOM, M1, 1)], id="dispatched-worker-not-evicted"),
    # --- learned estimates: start another only when waiting is slower
    pytest.param(S([job(i) for i in range(3)], [worker(1, phase=BUSY)], [pool()], estimates=EST),
                 [Wait("j0", Reason.WAIT_FASTER, M1, 3)], id="busy-waiting-is-faster"),
    pytest.param(S([job(i) for i in range(10)], [worker(1, phase=BUSY)], [pool(free=(2 * GB, 7 * GB))],
                   estimates=EST),
                 [start(M1, "p1", ("g1",), why="10 queued for 1 workers: expected wait 100 s > start 30 s; "
                                               "most free memory on p1"),
                  Wait("j0", Reason.START_ANOTHER, M1, 10)], id="busy-start-another"),
    pytest.param(S([job(i) for i in range(10)], [worker(1, phase=BUSY), worker(2, M2, mem=7 * GB)],
                   [pool(free=(0,))], estimates=EST),
                 [Wait("j0", Reason.BUSY_NO_ROOM, M1, 10)], id="busy-start-never-evicts"),
    pytest.param(S([job(i) for i in range(10)], [worker(1, phase=BUSY)], [pool()],
                   now=5.0, start_backoff_until={M1: 9.0}, estimates=EST),
                 [Wait("j0", Reason.START_BACKOFF, M1, 10)], id="busy-start-backoff"),
    pytest.param(S([job(i) for i in range(10)], [worker(1, phase=BUSY)], [pool()]),
                 [Wait("j0", Reason.BUSY, M1, 10)], id="busy-without-estimate-waits"),
    pytest.param(S([job(i) for i in range(4)], [worker(1)], [pool()], estimates=EST),
                 [go("j0", "w1"), Wait("j1", Reason.WAIT_FASTER, M1, 3)], id="dispatched-this-cycle-count-as-busy"),
    # --- the optimizer's advice
    pytest.param(S([job(1), job(2)], [worker(1, phase=BUSY)], [pool(free=(7 * GB, 8 * GB, 3 * GB))],
                   advice=[StartAdvice(M1, "p1", ("g2",))]),
                 [start(M1, "p1", ("g2",), why=ADVICE_WHY), Wait("j1", Reason.START_ANOTHER, M1, 2)],
                 id="start-advice-on-idle-device"),
    pytest.param(S([job(1), job(2)], [worker(1, phase=BUSY)], [pool(free=(7 * GB,))],
                   advice=[StartAdvice(M1, "p1", ("g0",))]),
                 [Wait("j1", Reason.BUSY, M1, 2)], id="stale-start-advice-ignored"),
    pytest.param(S([job(1)], [], [pool(free=(8 * GB, 2 * GB))], advice=[StartAdvice(M1, "p1", ("g1",))]),
                 [start(M1, "p1", ("g1",), why=f"no worker for {M1}; optimizer advice: idle devices on p1"),
                  Wait("j1", Reason.STARTING, M1, 1)], id="start-advice-places-a-first-worker"),
    pytest.param(S([job(i) for i in range(10)], [worker(1, phase=BUSY), worker(2, phase=STARTING, devs=("g1",))],
                   [pool(free=(7 * GB, 7 * GB, 7 * GB))], estimates=EST),
                 [Wait("j0", Reason.STARTING, M1, 10)], id="one-extra-start-in-flight-at-a-time"),
    pytest.param(S([job(i) for i in range(10)], [worker(1, phase=BUSY)], [pool(free=(7 * GB, 2 * GB))],
                   estimates=EST),
                 [start(M1, "p1", ("g1",), why="10 queued for 1 workers: expected wait 100 s > start 30 s; "
                                               "most free memory on p1"),
                  Wait("j0", Reason.START_ANOTHER, M1, 10)], id="another-worker-on-a-device-without-the-model"),
    pytest.param(S([job(i) for i in range(10)], [worker(1, phase=BUSY)], [pool(free=(7 * GB,))], estimates=EST),
                 [Wait("j0", Reason.BUSY_NO_ROOM, M1, 10)], id="no-second-replica-on-the-same-device"),
    pytest.param(S([job(i) for i in range(2)], [worker(1, phase=STARTING)], [pool()], estimates=EST),
                 [Wait("j0", Reason.STARTING, M1, 2)], id="starting-only-short-queue-waits"),
    pytest.param(S([job(1)], [], [pool()], advice=[UnservableAdvice(M1, "too big")]),
                 [Wait("j1", Reason.UNSERVABLE, M1, 1)], id="unservable-advice"),
]


SLOT_CASES = [
    pytest.param(S([job(i) for i in range(3)], [batching(1, 4, active=1)], [pool()], estimates=EST),
                 [go("j0", "w1"), go("j1", "w1"), go("j2", "w1")], id="fill-free-slots-no-start"),
    pytest.param(S([job(i) for i in range(5)], [batching(1, 4, active=1)], [pool()]),
                 [go("j0", "w1"), go("j1", "w1"), go("j2", "w1"), Wait("j3", Reason.BUSY, M1, 2)],
                 id="never-more-than-free-slots"),
    pytest.param(S([job(i) for i in range(3)], [batching(1, 4, active=4)], [pool()]),
                 [Wait("j0", Reason.BUSY, M1, 3)], id="full-worker-takes-nothing"),
    pytest.param(S([job(i) for i in range(3)], [batching(1, 4, active=1), batching(2, 4, last_used=1.0)],
                   [pool()]),
                 [go("j0", "w2"), go("j1", "w1"), go("j2", "w2")],
                 id="fewest-running-first-ties-longest-idle"),
    pytest.param(S([job(i) for i in range(4)], [batching(1, 2, last_used=5.0), batching(2, 2, last_used=1.0)],
                   [pool()]),
                 [go("j0", "w2"), go("j1", "w1"), go("j2", "w2"), go("j3", "w1")],
                 id="every-idle-worker-one-before-any-a-second"),
    pytest.param(S([job(1, prio=BATCH), job(2), job(3, prio=BATCH), job(4, model=M2)],
                   [batching(1, 2), batching(2, 8, model=M2, devs=("g1",))], [pool(free=(8 * GB, 8 * GB))]),
                 [go("j2", "w1"), go("j1", "w1"), go("j4", "w2"), Wait("j3", Reason.BUSY, M1, 1)],
                 id="slots-go-interactive-first-then-fifo"),
    pytest.param(S([job(1), job(2)], [batching(1, 4, model=M2, active=3)], [pool()]),
                 [start(M1, "p1", ("g0",)), Wait("j1", Reason.STARTING, M1, 2)],
                 id="slots-serve-their-own-model-only"),
    pytest.param(S([job(1, mem=5 * GB)],
                   [batching(1, 4, model=M2, active=1, last_used=1.0, mem=6 * GB),
                    batching(2, 4, model=M3, last_used=5.0, devs=("g1",), mem=6 * GB)],
                   [pool(free=(2 * GB, 2 * GB))]),
                 [stop("w2", M1), Wait("j1", Reason.EVICTING, M1, 1)],
                 id="evict-only-workers-running-no-job"),
    pytest.param(S([job(1, mem=5 * GB)], [batching(1, 4, model=M2, active=1, mem=6 * GB)],
                   [pool(free=(2 * GB,))]),
                 [Wait("j1", Reason.NO_ROOM, M1, 1)], id="partly-busy-worker-never-evicted"),
    pytest.param(S([job(1, mem=5 * GB), job(2, model=M2)], [batching(1, 4, model=M2, mem=6 * GB)],
                   [pool(free=(2 * GB,))]),
                 [go("j2", "w1"), Wait("j1", Reason.NO_ROOM, M1, 1)],
                 id="idle-worker-dispatched-to-is-not-evicted"),
    pytest.param(S([job(i) for i in range(10)], [batching(1, 4, active=4)], [pool(free=(2 * GB, 7 * GB))],
                   estimates=EST),
                 [Wait("j0", Reason.WAIT_FASTER, M1, 10)], id="slots-make-waiting-faster"),
    pytest.param(S([job(i) for i in range(20)], [batching(1, 4, active=4)], [pool(free=(2 * GB, 7 * GB))],
                   estimates=EST),
                 [start(M1, "p1", ("g1",), why="20 queued for 1 workers (4 slots): expected wait 50 s "
                                               "> start 30 s; most free memory on p1"),
                  Wait("j0", Reason.START_ANOTHER, M1, 20)], id="start-another-when-slots-are-not-enough"),
    pytest.param(S([job(i) for i in range(20)], [batching(1, 4, active=2)], [pool(free=(2 * GB, 7 * GB))],
                   estimates=EST),
                 [go("j0", "w1"), go("j1", "w1"),
                  start(M1, "p1", ("g1",), why="18 queued for 1 workers (4 slots): expected wait 45 s "
                                               "> start 30 s; most free memory on p1"),
                  Wait("j2", Reason.START_ANOTHER, M1, 18)], id="slots-filled-before-a-start"),
    pytest.param(S([job(1, not_before=20.0), job(2)], [batching(1, 4)], [pool()], now=10.0),
                 [go("j2", "w1"), Wait("j1", Reason.RETRY_BACKOFF, M1, 1, 20.0)],
                 id="slots-never-take-jobs-in-backoff"),
    pytest.param(S([job(1)], [batching(1, 4)], [pool()], now=10.0, start_backoff_until={M1: 20.0}),
                 [go("j1", "w1")], id="start-backoff-does-not-block-slots"),
]


@pytest.mark.parametrize("snap,expected", CASES + SLOT_CASES)
def test_decide(snap, expected):
    assert decide(snap) == expected
    assert decide(snap) == expected  # deterministic: same snapshot, same decisions


def test_one_wait_per_model_and_reason_for_deep_queues():
    snap = S([job(i) for i in range(1000)] + [job(2000 + i, not_before=9.0) for i in range(50)],
             [worker(1, phase=BUSY)], [pool()], now=1.0)
    assert decide(snap) == [Wait("j0", Reason.BUSY, M1, 1000),
                            Wait("j2000", Reason.RETRY_BACKOFF, M1, 50, 9.0)]


def test_only_heads_reach_the_snapshot():
    snap = S([job(i) for i in range(1000)], [worker(1), worker(2)], [pool()])
    assert len(snap.queued[M1]) < 10 and snap.queued_total[M1] == 1000
    assert decide(snap)[:2] == [go("j0", "w1"), go("j1", "w2")]


def test_heads_are_bounded_by_free_slots_not_the_queue():
    snap = S([job(i) for i in range(1000)], [batching(1, 8, active=2), batching(2, 4, devs=("g1",))],
             [pool(free=(8 * GB, 8 * GB))])
    assert snap.free_slots[M1] == 10 and len(snap.queued[M1]) < 20
    got = decide(snap)
    assert [d.worker_id for d in got if isinstance(d, Dispatch)].count("w1") == 6
    assert [d.worker_id for d in got if isinstance(d, Dispatch)].count("w2") == 4
    assert got[-1] == Wait("j10", Reason.BUSY, M1, 990)


@pytest.mark.parametrize("seed", range(20))
def test_random_multi_slot_snapshots_never_overfill_and_pass_the_validator(seed):
    import random

    from orchestrator.validator import validate
    rng = random.Random(seed)
    workers = []
    for i in range(rng.randint(1, 8)):
        slots = rng.choice([1, 2, 4, 8])
        workers.append(batching(i, slots, active=rng.randint(0, slots), model=rng.choice([M1, M2]),
                                last_used=rng.random(), devs=(f"g{i % 4}",)))
    jobs = [job(i, model=rng.choice([M1, M2, M3]), prio=rng.choice(list(Priority)))
            for i in range(rng.randint(0, 60))]
    snap = S(jobs, workers, [pool(free=(2 * GB,) * 4)])
    out = decide(snap)
    assert all(why == "" for _, why in validate(snap, out))
    taken: dict[str, int] = {}
    for d in out:
        if isinstance(d, Dispatch):
            taken[d.worker_id] = taken.get(d.worker_id, 0) + 1
    for w in workers:
        assert taken.get(w.worker_id, 0) <= w.free_slots
    # No slot left free while jobs of its model wait.
    for m, n in snap.free_slots.items():
        used = sum(v for wid, v in taken.items() if snap.workers[wid].model_ref == m)
        assert used == min(n, snap.eligible(m))


# ---- tenancy (platform mode): quotas at scheduling time, tenant-exclusive workers ----------

from orchestrator.quota import TenantLimits  # noqa: E402

A, B = "t-a", "t-b"


def tjob(i, tenant, model=M1, prio=Priority.INTERACTIVE, mem=GB):
    return JobView(f"j{i}", model, prio, i, mem, tenant_id=tenant)


def tworker(i, tenant="", slots=1, active=0, model=M1, mem=GB, devs=("g0",), last_used=0.0):
    """A worker running `active` jobs of `tenant` ("" and 0: idle)."""
    phase = BUSY if active >= slots else READY
    return WorkerView(f"w{i}", "p1", model, phase, devs, last_used, mem, slots, active, tenant)


def T(jobs, workers=(), pools=(), limits=None, **kw):
    """A platform-mode snapshot; `limits` maps tenants to their TenantLimits."""
    return Snapshot.of(jobs, workers, pools or [pool(free=(8 * GB,) * 4)], tenancy=True,
                       tenants=limits or {}, **kw)


def quota_wait(job_id, running, limit, n=1):
    return Wait(job_id, f"tenant quota: {running} of {limit} concurrent jobs", M1, n)


CONC2 = {A: TenantLimits(max_concurrent_jobs=2)}
TENANCY_CASES = [
    pytest.param(T([tjob(1, A)], [tworker(1, A, active=1), tworker(2, devs=("g1",))],
                   limits={A: TenantLimits(max_concurrent_jobs=1)}),
                 [quota_wait("j1", 1, 1)], id="over-quota-waits-with-the-reason"),
    pytest.param(T([tjob(i, A) for i in range(1, 6)] + [tjob(6, B)],
                   [tworker(i, devs=(f"g{i % 4}",)) for i in range(1, 5)], limits=CONC2),
                 [go("j1", "w1"), go("j2", "w2"), go("j6", "w3"), quota_wait("j3", 2, 2, 3)],
                 id="other-tenants-run-past-an-over-quota-head"),
    pytest.param(T([tjob(1, A)], [tworker(1, A, active=1, model=M2)],
                   limits={A: TenantLimits(max_concurrent_jobs=1)}),
                 [quota_wait("j1", 1, 1)], id="no-start-for-over-quota-jobs"),
    pytest.param(T([tjob(1, A), tjob(2, B)], [], limits={A: TenantLimits(token_budget=1000)}),
                 [start(M1, "p1", ("g0",), why=f"no worker for {M1}; most free memory on p1"),
                  Wait("j2", Reason.STARTING, M1, 1),
                  Wait("j1", "tenant token budget exhausted: credit 0", M1, 1)],
                 id="budget-exhausted-waits-others-start"),
    pytest.param(T([tjob(1, A)], [tworker(1)], limits={A: TenantLimits(token_budget=1000,
                                                                        credit_tokens=-5)}),
                 [Wait("j1", "tenant token budget exhausted: credit -5", M1, 1)],
                 id="budget-overdrawn"),
    pytest.param(T([tjob(1, A)], [tworker(1)], limits={A: TenantLimits(token_budget=1000,
                                                                        auto_refill=True)}),
                 [go("j1", "w1")], id="auto-refill-ignores-the-budget"),
    pytest.param(T([tjob(1, A)], [tworker(1)], limits={A: TenantLimits(token_budget=1000,
                                                                        credit_tokens=1)}),
                 [go("j1", "w1")], id="credit-left"),
    pytest.param(T([tjob(1, A)], [tworker(1, A, active=1), tworker(2, devs=("g1",))],
                   limits={A: TenantLimits(vram_ceiling_bytes=3 * GB // 2)}),
                 [Wait("j1", "tenant VRAM ceiling: 1.0 GiB held + 1.0 GiB for a worker > 1.5 GiB",
                       M1, 1)], id="vram-ceiling-stops-taking-an-idle-worker"),
    pytest.param(T([tjob(1, A)], [tworker(1, A, slots=2, active=1), tworker(2, devs=("g1",))],
                   limits={A: TenantLimits(vram_ceiling_bytes=3 * GB // 2)}),
                 [go("j1", "w1")], id="vram-ceiling-a-held-worker-slot-costs-nothing"),
    pytest.param(T([tjob(1, A, mem=2 * GB)], [], limits={A: TenantLimits(vram_ceiling_bytes=GB)}),
                 [Wait("j1", "tenant VRAM ceiling: 0.0 GiB held + 2.0 GiB for a worker > 1.0 GiB",
                       M1, 1)], id="vram-ceiling-no-start-for-a-worker-it-could-not-hold"),
    pytest.param(T([tjob(1, B)], [tworker(1, A, slots=4, active=1)]),
                 [Wait("j1", Reason.BUSY, M1, 1)], id="tenant-exclusive-worker"),
    pytest.param(T([tjob(1, B)], [tworker(1, A, slots=4, active=1), tworker(2, devs=("g1",))]),
                 [go("j1", "w2")], id="another-tenant-takes-an-idle-worker"),
    pytest.param(T([tjob(1, A)], [tworker(2, devs=("g1",)), tworker(1, A, slots=2, active=1,
                                                                    last_used=9.0)]),
                 [go("j1", "w1")], id="a-tenants-own-worker-first"),
    pytest.param(T([tjob(1, A), tjob(2, B), tjob(3, A)], [tworker(1, slots=4)]),
                 [go("j1", "w1"), go("j3", "w1"), Wait("j2", Reason.BUSY, M1, 1)],
                 id="an-idle-worker-becomes-the-first-tenants"),
    pytest.param(T([tjob(1, A), tjob(2, A), tjob(3, B)], [tworker(1, slots=4)],
                   limits={A: TenantLimits(max_concurrent_jobs=1)}),
                 [go("j1", "w1"), Wait("j3", Reason.BUSY, M1, 1), quota_wait("j2", 1, 1)],
                 id="quota-and-exclusivity-together"),
]


@pytest.mark.parametrize("snap,expected", TENANCY_CASES)
def test_decide_with_tenancy(snap, expected):
    assert decide(snap) == expected
    assert decide(snap) == expected


def test_outside_platform_mode_tenants_change_nothing():
    jobs, workers = [tjob(1, A), tjob(2, B)], [tworker(1, A, slots=4, active=1)]
    limits = {A: TenantLimits(max_concurrent_jobs=1)}
    plain = Snapshot.of(jobs, workers, [pool()], tenants=limits)
    assert not plain.tenancy and plain.tenant_queues == {}
    assert decide(plain) == [go("j1", "w1"), go("j2", "w1")]


def test_a_deep_over_quota_tenant_does_not_hide_another_tenants_job():
    # Tenant A's 10,000 jobs come first and A is at its quota: B's one job still runs,
    # and the snapshot's heads never walk A's backlog.
    jobs = [tjob(i, A) for i in range(10_000)] + [tjob(20_000, B)]
    snap = T(jobs, [tworker(1, A, active=1), tworker(2, devs=("g1",))],
             limits={A: TenantLimits(max_concurrent_jobs=1)})
    assert [j.job_id for j in snap.queued[M1]] == ["j20000"]
    assert snap.tenant_queues[M1][0].eligible == 10_000
    assert decide(snap) == [go("j20000", "w2"), quota_wait("j0", 1, 1, 10_000)]


@pytest.mark.parametrize("seed", range(30))
def test_random_tenant_snapshots_keep_quotas_and_exclusive_workers(seed):
    import random

    from orchestrator.validator import validate
    rng = random.Random(seed)
    tenants = ["t0", "t1", "t2", "t3"]
    limits = {t: TenantLimits(max_concurrent_jobs=rng.choice([0, 1, 2, 4]),
                              vram_ceiling_bytes=rng.choice([0, GB, 3 * GB]),
                              token_budget=rng.choice([0, 100]), credit_tokens=rng.choice([0, 5]))
              for t in tenants}
    workers = []
    for i in range(rng.randint(1, 8)):
        slots = rng.choice([1, 2, 4])
        active = rng.randint(0, slots)
        workers.append(tworker(i, rng.choice(tenants) if active else "", slots, active,
                               model=rng.choice([M1, M2]), devs=(f"g{i % 4}",),
                               last_used=rng.random()))
    jobs = [JobView(f"j{i}", rng.choice([M1, M2]), rng.choice(list(Priority)), i, GB,
                    tenant_id=rng.choice(tenants)) for i in range(rng.randint(0, 60))]
    snap = T(jobs, workers, [pool(free=(2 * GB,) * 4)], limits)
    out = decide(snap)
    assert all(why == "" for _, why in validate(snap, out)), validate(snap, out)
    running = dict(snap.tenant_running)
    owner = {w.worker_id: w.tenant_id for w in workers}
    views = {j.job_id: j for j in jobs}
    for d in out:
        if isinstance(d, Dispatch):
            t = views[d.job_id].tenant_id
            assert owner[d.worker_id] in ("", t)  # never two tenants on one worker
            owner[d.worker_id] = t
            running[t] = running.get(t, 0) + 1
    for t, lim in limits.items():
        if lim.max_concurrent_jobs:
            assert running.get(t, 0) <= max(lim.max_concurrent_jobs, snap.tenant_running.get(t, 0))
        if lim.on_budget and lim.credit_tokens <= 0:
            assert running.get(t, 0) == snap.tenant_running.get(t, 0)
    # Every job left in the queue is accounted for by a Wait, quota ones named.
    waits = [d for d in out if isinstance(d, Wait) and not d.until]
    sent = sum(isinstance(d, Dispatch) for d in out)
    assert sum(w.jobs for w in waits) == len(jobs) - sent
