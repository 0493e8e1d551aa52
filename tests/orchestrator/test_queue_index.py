"""The queue index and the snapshot builder: order, lazy deletion, retry backoff, heads."""

import random

import pytest

from orchestrator.queue_index import QueueIndex
from orchestrator.snapshot import (EXTRA_HEADS, DeviceView, JobView, PoolView, Snapshot,
                                   WorkerView, build_snapshot)
from orchestrator.types import Priority, WorkerPhase

I, B = Priority.INTERACTIVE, Priority.BATCH
GB = 1 << 30


def job(i, model="m1", prio=I, not_before=0.0):
    return JobView(f"j{i}", model, prio, i, GB, not_before=not_before)


def ids(jobs):
    return [j.job_id for j in jobs]


def index_of(*jobs):
    q = QueueIndex()
    for j in jobs:
        q.add(j)
    return q


@pytest.mark.parametrize("jobs,k,now,expected", [
    pytest.param([job(1), job(2), job(3)], 2, 0.0, ["j1", "j2"], id="fifo-first-k"),
    pytest.param([job(1, prio=B), job(2), job(3, prio=B), job(4)], 4, 0.0, ["j2", "j4", "j1", "j3"],
                 id="interactive-before-batch"),
    pytest.param([job(1, not_before=5.0), job(2)], 5, 1.0, ["j2"], id="backoff-not-eligible"),
    pytest.param([job(3), job(1, not_before=5.0), job(2)], 5, 5.0, ["j1", "j2", "j3"],
                 id="due-job-keeps-its-admission-order"),
    pytest.param([job(1, model="m2"), job(2)], 5, 0.0, ["j2"], id="per-model"),
    pytest.param([job(1)], 0, 0.0, [], id="k-zero"),
])
def test_heads(jobs, k, now, expected):
    q = index_of(*jobs)
    assert ids(q.heads("m1", k, now)) == expected
    assert ids(q.heads("m1", k, now)) == expected  # reading heads consumes nothing


def test_remove_is_idempotent_and_counts_follow():
    q = index_of(job(1), job(2, prio=B), job(3, not_before=9.0))
    assert len(q) == 3 and q.count("m1", 0.0) == (2, 1)
    assert q.remove("j1").job_id == "j1" and q.remove("j1") is None and q.remove("nope") is None
    assert "j1" not in q and len(q) == 2 and q.count("m1", 0.0) == (1, 1)
    assert q.depth_by_priority() == {I: 1, B: 1}
    assert ids(q.heads("m1", 5, 0.0)) == ["j2"]
    q.remove("j2"), q.remove("j3")
    assert len(q) == 0 and q.models() == [] and q.heads("m1", 5, 0.0) == ()


def test_retry_backoff_moves_over_when_due():
    q = index_of(job(1, not_before=20.0), job(2, not_before=10.0), job(3))
    assert q.next_eligible_at("m1", 0.0) == 10.0 and q.next_eligible("m1", 0.0).job_id == "j2"
    assert q.count("m1", 10.0) == (2, 1) and ids(q.heads("m1", 5, 10.0)) == ["j2", "j3"]
    assert q.next_eligible_at("m1", 10.0) == 20.0
    assert q.count("m1", 30.0) == (3, 0) and q.next_eligible_at("m1", 30.0) is None


def test_add_of_a_queued_id_replaces_it():
    q = index_of(job(1), job(2))
    q.add(job(1, not_before=50.0))  # the retry: same id, new not_before
    assert len(q) == 2 and q.count("m1", 0.0) == (1, 1) and ids(q.heads("m1", 5, 0.0)) == ["j2"]
    assert q.get("j1").not_before == 50.0


def test_models_are_sorted_and_only_those_with_jobs():
    q = index_of(job(1, model="b"), job(2, model="a"), job(3, model="c"))
    q.remove("j3")
    assert q.models() == ["a", "b"]


def test_random_operations_match_a_sorted_list():
    rng = random.Random(7)
    q, live, order = QueueIndex(), {}, 0
    for step in range(4000):
        now = step / 10
        if live and rng.random() < 0.45:
            jid = rng.choice(sorted(live))
            q.remove(jid)
            del live[jid]
        else:
            order += 1
            j = JobView(f"j{order}", rng.choice(["m1", "m2"]), rng.choice([I, B]), order, GB,
                        not_before=rng.choice([0.0, 0.0, now + rng.random() * 5]))
            q.add(j)
            live[j.job_id] = j
        if step % 50 == 0:
            for m in ("m1", "m2"):
                ready = sorted((j for j in live.values() if j.model_ref == m and j.not_before <= now),
                               key=lambda j: (j.priority, j.order))
                waiting = sum(1 for j in live.values() if j.model_ref == m and j.not_before > now)
                assert q.count(m, now) == (len(ready), waiting)
                assert ids(q.heads(m, 7, now)) == ids(ready[:7])
    assert len(q) == len(live)
    assert all(len(mq.ready) + len(mq.delayed) <= 2 * (mq.n_ready + mq.n_delayed) + 130
               for mq in q._models.values())  # lazy deletion stays bounded


# ---- the snapshot builder ---------------------------------------------------------------

def w(i, model="m1", phase=WorkerPhase.READY, last_used=0.0, devs=("g0",), mem=GB, pool="p1"):
    return WorkerView(f"w{i}", pool, model, phase, devs, last_used, mem)


POOLS = [PoolView("p2", True, (DeviceView("g0", 8 * GB, 1 * GB), DeviceView("g1", 8 * GB, 7 * GB))),
         PoolView("p1", True, (DeviceView("g0", 8 * GB, 5 * GB), DeviceView("g1", 8 * GB, 3 * GB))),
         PoolView("p3", False, (DeviceView("g0", 8 * GB, 8 * GB),))]


def test_builder_holds_only_heads_and_counts_the_rest():
    q = index_of(*[job(i) for i in range(500)], *[job(1000 + i, not_before=9.0) for i in range(20)])
    snap = build_snapshot(q, [w(1), w(2)], POOLS, 1.0)
    assert ids(snap.queued["m1"]) == [f"j{i}" for i in range(2 + EXTRA_HEADS)]
    assert snap.queued_total["m1"] == 520 and snap.waiting_backoff["m1"] == 20
    assert snap.eligible("m1") == 500 and snap.next_retry["m1"].job_id == "j1000"


def test_builder_indexes_workers():
    workers = [w(1, last_used=5.0), w(2, "m2", last_used=1.0), w(3, last_used=2.0),
               w(4, phase=WorkerPhase.BUSY, devs=("g1",)), w(5, phase=WorkerPhase.STARTING),
               w(6, "m2", phase=WorkerPhase.STOPPING, mem=3 * GB, devs=("g0", "g1")),
               w(7, phase=WorkerPhase.GONE, pool="p2")]
    snap = build_snapshot(QueueIndex(), workers, POOLS, 0.0)
    assert ids_of(snap.idle["m1"]) == ["w3", "w1"] and ids_of(snap.idle_lru) == ["w2", "w3", "w1"]
    assert snap.busy_by_model == {"m1": 1} and snap.starting_by_model == {"m1": 1}
    assert "w7" not in snap.workers and len(snap.workers) == 6
    assert snap.occupied == {("p1", "g0"), ("p1", "g1")}
    assert snap.devices_of_model == {"m1": {("p1", "g0"), ("p1", "g1")}, "m2": {("p1", "g0"), ("p1", "g1")}}
    assert snap.freeing == {("p1", "g0"): 3 * GB, ("p1", "g1"): 3 * GB}


def ids_of(workers):
    return [x.worker_id for x in workers]


def test_builder_ranks_pools_by_room_for_a_mask():
    snap = build_snapshot(QueueIndex(), [], POOLS, 0.0)
    assert snap.devices_by_free == {"p1": ("g0", "g1"), "p2": ("g1", "g0"), "p3": ("g0",)}
    assert snap.rooms(1) == ((7 * GB, "p2"), (5 * GB, "p1"))  # p3 is unavailable
    assert snap.rooms(2) == ((3 * GB, "p1"), (1 * GB, "p2"))
    assert snap.rooms(3) == ()


def test_snapshot_is_immutable():
    snap = Snapshot.of([job(1)], [w(1)], POOLS)
    with pytest.raises(TypeError):
        snap.queued["m1"] = ()
    with pytest.raises(AttributeError):
        snap.now = 5.0  # type: ignore[misc]
    assert isinstance(snap.queued["m1"], tuple) and isinstance(snap.idle_lru, tuple)


def test_builder_orders_models_by_their_head_job():
    q = index_of(job(3, model="a"), job(2, model="b", prio=B), job(1, model="c", prio=B), job(4, model="d"))
    assert list(build_snapshot(q, [], POOLS, 0.0).queued) == ["a", "d", "c", "b"]


def test_evictable_memory_leaves_out_pins_and_workers_that_will_take_jobs():
    q = index_of(job(1))  # one eligible m1 job: the longest idle m1 worker (w2) takes it
    workers = [w(1, last_used=5.0, devs=("g0",)), w(2, last_used=1.0, devs=("g1",)),
               w(3, "m2", devs=("g0",), mem=2 * GB), w(4, "m3", devs=("g1",), mem=4 * GB)]
    snap = build_snapshot(q, workers, POOLS, 0.0, pins={"m3": [("p1", "g1")]})
    assert snap.evictable == {("p1", "g0"): 3 * GB}
    # p1: g0 5 + 3 GiB evictable, g1 3 GiB; p2 has nothing to evict
    assert snap.evictable_rooms(1) == ((8 * GB, "p1"), (7 * GB, "p2"))
    assert snap.evictable_rooms(2) == ((3 * GB, "p1"), (1 * GB, "p2"))
