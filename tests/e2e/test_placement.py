"""Placement with real processes: one orchestrator, two pool managers, sim workers.

Pool A declares two simulated devices of 8 TiB, pool B one of 4 TiB. (TiB, so that no
host's RAM, which every pool also offers as its `cpu` device, can hold these models:
placement can only use the simulated devices.) In one run:

a. `tp` (devices = 2, 2 TiB per device) gets ONE worker whose mask is both of pool A's
   devices (pool B's second device is its CPU, far too small), and its job completes.
b. m1, m2, m3 (5 TiB each: one fits on a device, two do not) with m1 pinned on pool A:
   m1 and m2 fill pool A; m3 then evicts m2, the least recently used unpinned idle
   worker, never m1 (which is even less recently used, but pinned). Every job succeeds.
c. An operator's StartWorker onto a device without room is refused by the pool
   manager's preflight with INSUFFICIENT_MEMORY, surfaced through the admin API, and
   nothing is spawned.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from common.errors import OrchError
from llama_orch.v1 import admin_pb2 as A, admin_pb2_grpc, client_pb2, client_pb2_grpc
from llama_orch.v1 import common_pb2 as C, events_pb2 as E
from tests.stack import alive, free_port, pids_with, sim_model, start_daemon, wait_serving

pytestmark = pytest.mark.e2e

TIB = 1 << 40
HEARTBEAT_MS = 300
TERMINAL = (C.JOB_STATUS_SUCCEEDED, C.JOB_STATUS_FAILED, C.JOB_STATUS_CANCELLED)
MODELS = {"tp": (2, 2 * TIB), "m1": (1, 5 * TIB), "m2": (1, 5 * TIB), "m3": (1, 5 * TIB)}
POOLS = {"pool-a": {"sim-0": 8 * TIB, "sim-1": 8 * TIB}, "pool-b": {"sim-b0": 4 * TIB}}


def write_configs(root: Path, orch_port: int, metrics_port: int) -> dict[str, Path]:
    """One config per pool (its declared devices differ); the orchestrator uses pool A's."""
    models = []
    for name, (devices, memory) in MODELS.items():
        folder = root / name
        sim_model(folder, {
            "ttft_ms": 1, "ttft_spread_ms": 0, "itl_ms": 1, "itl_spread_ms": 0})
        models.append(f'[models.{name}]\nref = "file:{folder}"\nengine = "sim"\n'
                      f"devices = {devices}\nmemory_bytes = {memory}\n")
    paths = {}
    for pool_id, devices in POOLS.items():
        declared = "".join(f'[[pool.devices]]\nid = "{d}"\nmemory_bytes = {size}\n'
                           for d, size in devices.items())
        paths[pool_id] = root / f"{pool_id}.toml"
        paths[pool_id].write_text(f"""
data_dir = "{root / pool_id}"
[orchestrator]
listen = "127.0.0.1:{orch_port}"
metrics_listen = "127.0.0.1:{metrics_port}"
[pool]
heartbeat_ms = {HEARTBEAT_MS}
{declared}
{"".join(models)}""")
    return paths


def logs(root: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                     for p in sorted(root.glob("*.log")))


class Cluster:
    def __init__(self, channel: grpc.Channel, root: Path):
        self.client = client_pb2_grpc.ClientServiceStub(channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(channel)
        self.root = root

    def snapshot(self) -> client_pb2.GetClusterSnapshotResponse:
        return self.client.GetClusterSnapshot(client_pb2.GetClusterSnapshotRequest(), timeout=10)

    def workers(self) -> dict[str, C.WorkerInfo]:
        return {w.worker_id: w for p in self.snapshot().pools for w in p.workers}

    def device(self, pool_id: str, device_id: str) -> C.Device:
        [pool] = [p for p in self.snapshot().pools if p.pool_id == pool_id]
        [dev] = [d for d in pool.inventory.devices if d.id == device_id]
        return dev

    def until(self, what: str, check, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = check()
            if got:
                return got
            time.sleep(0.1)
        pytest.fail(f"{what} (after {timeout} s):\n{logs(self.root)}")

    def run(self, model: str, seed: int) -> C.Job:
        """Submit one job and wait for its outcome."""
        job_id = self.client.Submit(client_pb2.SubmitRequest(spec=C.JobSpec(
            model=model, prompt="The Fox and the Crow.",
            sampling=C.SamplingParams(seed=seed, max_tokens=8))), timeout=30).job.job_id

        def done():
            job = self.client.GetJob(client_pb2.GetJobRequest(job_id=job_id), timeout=10).job
            return job if job.status in TERMINAL else None
        return self.until(f"job {job_id} for {model} never finished", done, timeout=60)

    def facts(self, kind: int) -> list[E.Fact]:
        """Every retained fact of the kind so far (the watch replays, then idles)."""
        out = []
        try:
            for resp in self.client.WatchFacts(client_pb2.WatchFactsRequest(kinds=[kind]),
                                               timeout=1):
                out.append(resp.fact)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
        return out


def ok(job: C.Job) -> bool:
    return job.status == C.JOB_STATUS_SUCCEEDED and job.usage.completion_tokens > 0


def test_multi_device_placement_lru_eviction_with_pins_and_preflight(tmp_path):
    orch_port, metrics_port = free_port(), free_port()
    configs = write_configs(tmp_path, orch_port, metrics_port)
    orchestrator = f"127.0.0.1:{orch_port}"
    procs: dict[str, subprocess.Popen] = {}
    try:
        procs["orch"] = start_daemon(tmp_path, "orchestrator.log", "orchestrator",
                                     "--config", str(configs["pool-a"]))
        wait_serving(orchestrator)
        for pool_id, config in configs.items():
            procs[pool_id] = start_daemon(tmp_path, f"{pool_id}.log", "pool_manager",
                                          "--config", str(config), "--pool-id", pool_id,
                                          "--listen", f"127.0.0.1:{free_port()}",
                                          "--orchestrator", orchestrator)
        with grpc.insecure_channel(orchestrator) as channel:
            c = Cluster(channel, tmp_path)
            c.until("both pools never joined",
                    lambda: {p.pool_id for p in c.snapshot().pools} == set(POOLS))

            # --- a. one worker over both of pool A's devices -------------------------------
            job = c.run("tp", seed=1)
            assert ok(job), job
            [tp] = [w for w in c.workers().values() if w.model_ref.endswith("/tp")]
            assert (tp.pool_id, sorted(tp.device_ids)) == ("pool-a", ["sim-0", "sim-1"])
            assert job.worker_id == tp.worker_id
            # What the worker itself reports: its mask, and the configured bytes on each.
            assert dict(tp.device_bytes) == {"sim-0": 2 * TIB, "sim-1": 2 * TIB}
            assert len(pids_with(f"--worker-id {tp.worker_id}")) == 1  # one process
            # The pool reports what its worker holds on each simulated device.
            c.until("pool A's inventory never showed the tp worker's memory", lambda: all(
                c.device("pool-a", d).memory_used_bytes == 2 * TIB for d in ("sim-0", "sim-1")))
            c.admin.StopWorker(A.StopWorkerRequest(worker_id=tp.worker_id), timeout=30)
            c.until("the tp worker never stopped", lambda: tp.worker_id not in c.workers())

            # --- b. LRU eviction that spares the pinned model --------------------------------
            c.admin.PinModel(A.PinModelRequest(model="m1", pool_id="pool-a"), timeout=10)
            jobs = {m: c.run(m, seed=i) for i, m in enumerate(("m1", "m2", "m3"))}
            assert all(ok(j) for j in jobs.values()), jobs
            w1, w2, w3 = (jobs[m].worker_id for m in ("m1", "m2", "m3"))
            workers = c.workers()
            assert w1 in workers and w2 not in workers and w3 in workers, workers
            assert workers[w1].device_ids != workers[w3].device_ids  # one per device
            stops = [f for f in c.facts(E.FACT_KIND_DECISION_TAKEN)
                     if f.attributes["action"] == "stop_worker"]
            assert [f.worker_id for f in stops] == [w2], [(f.worker_id, f.message) for f in stops]
            assert "least recently used" in stops[0].message
            gone = {f.worker_id for f in c.facts(E.FACT_KIND_WORKER_STOPPED)
                    + c.facts(E.FACT_KIND_WORKER_FAILED)}
            assert w1 not in gone and w2 in gone
            assert not pids_with(f"--worker-id {w2}")

            # --- c. preflight refuses an overcommit ---------------------------------------
            full = workers[w1].device_ids[0]  # m1's 5 TiB leave 3 TiB there
            before = set(c.workers())
            with pytest.raises(grpc.RpcError) as refused:
                c.admin.StartWorker(A.StartWorkerRequest(model="m2", pool_id="pool-a",
                                                         device_ids=[full]), timeout=30)
            err = OrchError.from_rpc_error(refused.value)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert (err.code, err.param) == ("INSUFFICIENT_MEMORY", "device_ids")
            assert full in err.message and "free" in err.message  # the pool's own words
            [failed] = [f for f in c.facts(E.FACT_KIND_WORKER_FAILED)
                        if f.attributes["error_code"] == "INSUFFICIENT_MEMORY"]
            assert not pids_with(f"--worker-id {failed.worker_id}")
            assert set(c.workers()) == before
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for pid in pids_with(str(tmp_path)):  # workers of a pool manager that was killed
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
