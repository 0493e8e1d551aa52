"""GetClusterSnapshot and pool.heartbeat facts on a real `llama-orch up` (orchestrator,
pool manager and gateway as processes, over gRPC), with one simulated device of 8 TiB
and a `sim` model of 5 TiB (TiB: the host's RAM, the pool's `cpu` device, cannot hold
it, so its worker lands on sim-0).

- The snapshot names the fact it is consistent with: facts up to `fact_id` are in it,
  the stream resumed after it brings exactly the later ones.
- It lists pins (and each model's pinned devices), each pool's model residency (a
  preloaded model shows as in RAM) and the wall-clock time of the pool's last heartbeat.
- Heartbeats become pool.heartbeat facts carrying device memory: the worker's 5 TiB show
  on sim-0 without reading a snapshot, and a pool's facts are at least 2 s apart.
"""

from __future__ import annotations

import time

import grpc
import pytest
from google.protobuf import json_format

from llama_orch.v1 import admin_pb2 as A, admin_pb2_grpc, client_pb2 as CL, client_pb2_grpc
from llama_orch.v1 import common_pb2 as C, events_pb2 as E
from orchestrator.heartbeat_facts import MIN_INTERVAL_S
from tests.stack import Stack, sim_config

pytestmark = pytest.mark.e2e

TIB = 1 << 40
TERMINAL = (C.JOB_STATUS_SUCCEEDED, C.JOB_STATUS_FAILED, C.JOB_STATUS_CANCELLED)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("snapshot")
    s = Stack(root, extra_config=sim_config(root, {"sim-0": 8 * TIB}, {"simmy": (1, 5 * TIB)}))
    s.start()
    yield s
    s.stop()


class Rpc:
    def __init__(self, channel: grpc.Channel, stack: Stack):
        self.client = client_pb2_grpc.ClientServiceStub(channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(channel)
        self.stack = stack

    def snapshot(self) -> CL.GetClusterSnapshotResponse:
        return self.client.GetClusterSnapshot(CL.GetClusterSnapshotRequest(), timeout=10)

    def pool(self) -> C.PoolInfo:
        (pool,) = self.snapshot().pools
        return pool

    def until(self, what: str, check, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = check()
            if got:
                return got
            time.sleep(0.2)
        pytest.fail(f"{what} (after {timeout} s):\n{self.stack.logs()[-3000:]}")

    def facts(self, after_id: int = 0, kinds=(), follow_s: float = 1.0) -> list[E.Fact]:
        """Retained facts after `after_id`, then live ones for `follow_s` seconds."""
        out = []
        try:
            for resp in self.client.WatchFacts(
                    CL.WatchFactsRequest(after_id=after_id, kinds=kinds), timeout=follow_s):
                out.append(resp.fact)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
        return out


@pytest.fixture
def rpc(stack):
    with grpc.insecure_channel(stack.orchestrator) as channel:
        r = Rpc(channel, stack)
        r.until("the pool never joined", lambda: r.snapshot().pools)
        yield r


def tiny_ref(snap: CL.GetClusterSnapshotResponse) -> str:
    (tiny,) = [m for m in snap.models if m.id == "tiny"]
    return tiny.ref


def test_the_snapshot_names_the_last_fact_it_includes(rpc):
    before = rpc.snapshot()
    pool, ref = before.pools[0], tiny_ref(before)
    device = pool.inventory.devices[0].id
    rpc.admin.PinModel(A.PinModelRequest(model="tiny", pool_id=pool.pool_id,
                                         device_ids=[device]), timeout=10)
    pinned = rpc.snapshot()
    rpc.admin.UnpinModel(A.UnpinModelRequest(model="tiny", pool_id=pool.pool_id), timeout=10)
    after = rpc.snapshot()

    # fact_id names a published fact, and grows with the facts.
    everything = {f.id: f for f in rpc.facts()}
    assert before.fact_id in everything
    assert before.fact_id < pinned.fact_id <= after.fact_id

    # The pin's fact is at or before the snapshot that shows the pin ...
    [pin_fact] = [f for f in everything.values() if f.kind == E.FACT_KIND_MODEL_PINNED
                  and f.id > before.fact_id]
    assert pin_fact.id <= pinned.fact_id
    assert [(p.model_ref, p.pool_id, list(p.device_ids)) for p in pinned.pins] == [
        (ref, pool.pool_id, [device])]
    # ... and the unpin's fact is after it: resuming the stream there brings it, starting
    # with the very next fact and nothing the snapshot already holds.
    resumed = rpc.facts(after_id=pinned.fact_id)
    assert resumed[0].id == pinned.fact_id + 1
    assert all(f.id > pinned.fact_id for f in resumed)
    assert E.FACT_KIND_MODEL_UNPINNED in [f.kind for f in resumed]
    assert E.FACT_KIND_MODEL_PINNED not in [f.kind for f in resumed
                                            if f.model_ref == ref]
    assert list(after.pins) == []


def test_pins_show_as_pins_and_on_the_model(rpc):
    snap = rpc.snapshot()
    pool, ref = snap.pools[0], tiny_ref(snap)
    devices = sorted(d.id for d in pool.inventory.devices)
    rpc.admin.PinModel(A.PinModelRequest(model="tiny", pool_id=pool.pool_id), timeout=10)
    try:
        snap = rpc.snapshot()
        assert [(p.model_ref, p.pool_id, sorted(p.device_ids)) for p in snap.pins] == [
            (ref, pool.pool_id, devices)]
        (tiny,) = [m for m in snap.models if m.ref == ref]
        assert sorted(tiny.pinned_device_ids) == devices
        (simmy,) = [m for m in snap.models if m.id == "simmy"]
        assert list(simmy.pinned_device_ids) == []
    finally:
        rpc.admin.UnpinModel(A.UnpinModelRequest(model="tiny"), timeout=10)
    snap = rpc.snapshot()
    assert list(snap.pins) == []
    assert [m.pinned_device_ids for m in snap.models if m.ref == ref] == [[]]


def test_pool_residency_and_last_heartbeat(rpc):
    snap = rpc.snapshot()
    pool, ref = snap.pools[0], tiny_ref(snap)
    assert pool.version  # what the pool manager registered with
    assert ref not in [m.model_ref for m in pool.models if m.preloaded]
    rpc.admin.PreloadModel(A.PreloadModelRequest(model="tiny", pool_id=pool.pool_id),
                           timeout=60)
    # Residency comes with the pool's heartbeats.
    held = rpc.until("the preloaded model never showed in the pool's residency", lambda: [
        m for m in rpc.pool().models if m.model_ref == ref and m.preloaded])
    assert held[0].size_bytes > 0

    # The last heartbeat is wall-clock time (not the registry's monotonic clock) and
    # moves on with every heartbeat.
    first = pool.last_heartbeat.ToNanoseconds()
    assert abs(first / 1e9 - snap.time.ToNanoseconds() / 1e9) < 60
    rpc.until("the pool's last heartbeat never moved on",
              lambda: rpc.pool().last_heartbeat.ToNanoseconds() > first)


def devices_of(fact: E.Fact) -> dict[str, dict]:
    attrs = json_format.MessageToDict(fact.attributes)
    return {d["id"]: d for d in attrs["devices"]}


def test_heartbeat_facts_carry_device_memory(rpc):
    pool = rpc.pool()
    job = rpc.client.Submit(CL.SubmitRequest(spec=C.JobSpec(
        model="simmy", prompt="The Fox and the Crow.",
        sampling=C.SamplingParams(seed=1, max_tokens=4))), timeout=30).job
    rpc.until("the sim job never finished", lambda: rpc.client.GetJob(
        CL.GetJobRequest(job_id=job.job_id), timeout=10).job.status in TERMINAL)
    done = rpc.client.GetJob(CL.GetJobRequest(job_id=job.job_id), timeout=10).job
    assert done.status == C.JOB_STATUS_SUCCEEDED, done

    # The worker's 5 TiB show on sim-0 in a heartbeat fact; the facts replayed from the
    # pool's join on show sim-0 empty first.
    def beats():
        got = [f for f in rpc.facts(kinds=[E.FACT_KIND_POOL_HEARTBEAT], follow_s=1)
               if f.pool_id == pool.pool_id]
        return got if any(devices_of(f)["sim-0"]["memory_used_bytes"] >= 5 * TIB
                          for f in got) else None
    got = rpc.until("no pool.heartbeat fact showed the worker's memory on sim-0", beats)
    assert devices_of(got[0])["sim-0"]["memory_used_bytes"] < 5 * TIB
    held = [f for f in got if devices_of(f)["sim-0"]["memory_used_bytes"] >= 5 * TIB][0]
    sim0 = devices_of(held)["sim-0"]
    assert sim0["memory_total_bytes"] == 8 * TIB
    assert sim0["memory_free_bytes"] == 8 * TIB - sim0["memory_used_bytes"]
    assert held.level == E.FACT_LEVEL_DEBUG
    # Throttled: a pool's heartbeat facts are at least MIN_INTERVAL_S apart (by their
    # wall-clock stamps, so with a little slack for clock adjustment).
    times = [f.time.ToNanoseconds() / 1e9 for f in got]
    assert all(b - a >= MIN_INTERVAL_S - 0.1 for a, b in zip(times, times[1:])), times
