"""Pool loss: one orchestrator, two pool managers; kill -9 one pool manager mid-run.

The orchestrator marks the killed pool lost (a POOL_LOST fact) within two heartbeat
intervals, the job that pool was running is retried elsewhere, its queued jobs run on the
surviving pool, and every submitted job succeeds. Workers run the simulated `sim` engine
so the test needs no model weights and each job takes a while.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from llama_orch.v1 import client_pb2, client_pb2_grpc, common_pb2 as C, events_pb2 as E
from tests.stack import alive, free_port, sim_model, start_daemon, wait_serving

pytestmark = pytest.mark.e2e

HEARTBEAT_MS = 300
JOBS = 40
TERMINAL = (C.JOB_STATUS_SUCCEEDED, C.JOB_STATUS_FAILED, C.JOB_STATUS_CANCELLED)


def write_config(root: Path, orch_port: int, metrics_port: int, gateway_port: int) -> Path:
    model = root / "slow-model"
    sim_model(model, {
        "ttft_ms": 1, "ttft_spread_ms": 0, "itl_ms": 20, "itl_spread_ms": 0})
    path = root / "llama-orch.toml"
    path.write_text(f"""
data_dir = "{root / 'data'}"
[gateway]
listen = "127.0.0.1:{gateway_port}"
[orchestrator]
listen = "127.0.0.1:{orch_port}"
metrics_listen = "127.0.0.1:{metrics_port}"
retry_initial_s = 0.2
[pool]
heartbeat_ms = {HEARTBEAT_MS}
[models.slow]
ref = "file:{model}"
engine = "sim"
""")
    return path


start = start_daemon


def statuses(stub, ids) -> dict[str, C.Job]:
    return {i: stub.GetJob(client_pb2.GetJobRequest(job_id=i), timeout=10).job for i in ids}


def ts(t) -> float:
    return t.seconds + t.nanos / 1e9


def logs(root: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                     for p in sorted(root.glob("*.log")))


def test_kill_9_of_a_pool_manager_marks_it_lost_and_its_jobs_run_elsewhere(tmp_path):
    orch_port, metrics_port, gateway_port = free_port(), free_port(), free_port()
    config = write_config(tmp_path, orch_port, metrics_port, gateway_port)
    orchestrator = f"127.0.0.1:{orch_port}"
    procs: dict[str, subprocess.Popen] = {}
    victim_worker_pids: list[int] = []
    try:
        procs["orch"] = start(tmp_path, "orchestrator.log", "orchestrator", "--config", str(config))
        wait_serving(orchestrator)
        for pool_id in ("pool-a", "pool-b"):
            procs[pool_id] = start(tmp_path, f"{pool_id}.log", "pool_manager", "--config", str(config),
                                   "--pool-id", pool_id, "--listen", f"127.0.0.1:{free_port()}",
                                   "--orchestrator", orchestrator)
        with grpc.insecure_channel(orchestrator) as ch:
            stub = client_pb2_grpc.ClientServiceStub(ch)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                snap = stub.GetClusterSnapshot(client_pb2.GetClusterSnapshotRequest(), timeout=10)
                if {p.pool_id for p in snap.pools} == {"pool-a", "pool-b"}:
                    break
                time.sleep(0.2)
            else:
                pytest.fail(f"both pools never joined:\n{logs(tmp_path)}")

            ids = [stub.Submit(client_pb2.SubmitRequest(spec=C.JobSpec(
                model="slow", prompt=f"The Fox and the Crow, part {i}.", priority=C.PRIORITY_BATCH,
                keep_output=True, sampling=C.SamplingParams(seed=i, max_tokens=40))),
                timeout=30).job.job_id for i in range(JOBS)]
            assert len(set(ids)) == JOBS

            # Both pools get a worker, and the victim is running a job when it dies.
            victim, survivor = "pool-b", "pool-a"
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                snap = stub.GetClusterSnapshot(client_pb2.GetClusterSnapshotRequest(), timeout=10)
                workers = {p.pool_id: list(p.workers) for p in snap.pools}
                running = {j.pool_id for j in snap.active_jobs if j.status == C.JOB_STATUS_RUNNING}
                if all(workers.get(p) for p in (victim, survivor)) and victim in running:
                    break
                time.sleep(0.1)
            else:
                pytest.fail(f"workers never on both pools (workers={ {k: len(v) for k, v in workers.items()} }, "
                            f"running on {running}):\n{logs(tmp_path)}")
            victim_worker_pids += [w.pid for w in workers[victim] if w.pid]

            before = statuses(stub, ids)
            killed_at = time.time()
            procs[victim].send_signal(signal.SIGKILL)
            procs[victim].wait()

            lost = None
            try:
                for resp in stub.WatchFacts(client_pb2.WatchFactsRequest(
                        kinds=[E.FACT_KIND_POOL_LOST]), timeout=15):
                    if resp.fact.pool_id == victim:
                        lost = resp.fact
                        break
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
            assert lost is not None, f"no POOL_LOST fact for {victim}:\n{logs(tmp_path)}"
            delay = ts(lost.time) - killed_at
            assert delay <= 2 * HEARTBEAT_MS / 1000 + 0.5, (delay, lost.message)

            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                jobs = statuses(stub, ids)
                if all(j.status in TERMINAL for j in jobs.values()):
                    break
                time.sleep(0.5)
            jobs = statuses(stub, ids)
            bad = {i: (C.JobStatus.Name(j.status), j.error.code, j.error.message)
                   for i, j in jobs.items() if j.status != C.JOB_STATUS_SUCCEEDED}
            assert not bad, bad
            assert all(j.output and j.usage.completion_tokens > 0 for j in jobs.values())

            # Jobs that finished after the kill ran on the surviving pool, including any that
            # had been running on the victim (they were retried there).
            after = [j for j in jobs.values() if ts(j.finished_at) > killed_at]
            assert after, "every job finished before the kill; nothing was exercised"
            assert all(j.pool_id == survivor for j in after), \
                [(j.job_id, j.pool_id) for j in after if j.pool_id != survivor]
            interrupted = [i for i, j in before.items() if j.status == C.JOB_STATUS_RUNNING
                           and j.pool_id == victim and ts(jobs[i].finished_at) > killed_at]
            assert interrupted and all(jobs[i].attempts >= 2 for i in interrupted), \
                [(i, jobs[i].attempts) for i in interrupted]

            snap = stub.GetClusterSnapshot(client_pb2.GetClusterSnapshotRequest(), timeout=10)
            assert {p.pool_id for p in snap.pools} == {survivor}
        # The victim's workers stop once they are re-parented (their pool manager died).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(alive(pid) for pid in victim_worker_pids):
            time.sleep(0.2)
        assert not any(alive(pid) for pid in victim_worker_pids), victim_worker_pids
    finally:
        for pid in victim_worker_pids:  # orphans nothing else would stop
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
