"""Continuous batching with real processes: one orchestrator, one pool manager, and a
`sim` model whose workers have 4 slots (its folder's sim.json).

Eight jobs submitted at once run on ONE worker, four at a time: the worker itself
reports four running jobs (GetStatus), the orchestrator's snapshot shows it with 4 of 4
slots active, and on that worker at most four jobs' [started, finished] intervals
overlap, and at some instant four do. No job is refused WORKER_BUSY (no retry, one
attempt each, no `worker.busy` line in the worker's log) and every job succeeds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from llama_orch.v1 import client_pb2, client_pb2_grpc, common_pb2 as C, events_pb2 as E
from llama_orch.v1 import worker_pb2, worker_pb2_grpc
from tests.stack import alive, free_port, pids_with, sim_model, start_daemon, wait_serving

pytestmark = pytest.mark.e2e

SLOTS = 4
JOBS = 8
TERMINAL = (C.JOB_STATUS_SUCCEEDED, C.JOB_STATUS_FAILED, C.JOB_STATUS_CANCELLED)


def write_config(root: Path, orch_port: int, metrics_port: int) -> Path:
    model = root / "batched"
    # 40 tokens at 25 ms: a job takes about a second, long enough to see four overlap.
    sim_model(model, {
        "slots": SLOTS, "ttft_ms": 1, "ttft_spread_ms": 0, "itl_ms": 25, "itl_spread_ms": 0,
        "load_slowdown": 0})
    path = root / "llama-orch.toml"
    path.write_text(f"""
data_dir = "{root / 'data'}"
[orchestrator]
listen = "127.0.0.1:{orch_port}"
metrics_listen = "127.0.0.1:{metrics_port}"
[pool]
heartbeat_ms = 300
[models.batched]
ref = "file:{model}"
engine = "sim"
""")
    return path


def logs(root: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                     for p in sorted(root.glob("*.log")))


def ts(t) -> float:
    return t.seconds + t.nanos / 1e9


def most_overlapping(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end before a start at the same time)."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def test_one_worker_runs_its_four_slots_at_once(tmp_path):
    orch_port, metrics_port = free_port(), free_port()
    config = write_config(tmp_path, orch_port, metrics_port)
    orchestrator = f"127.0.0.1:{orch_port}"
    procs: dict[str, subprocess.Popen] = {}
    try:
        procs["orch"] = start_daemon(tmp_path, "orchestrator.log", "orchestrator", "--config", str(config))
        wait_serving(orchestrator)
        procs["pool"] = start_daemon(tmp_path, "pool.log", "pool_manager", "--config", str(config),
                                     "--pool-id", "pool-a", "--listen", f"127.0.0.1:{free_port()}",
                                     "--orchestrator", orchestrator)
        with grpc.insecure_channel(orchestrator) as ch:
            stub = client_pb2_grpc.ClientServiceStub(ch)

            def snapshot():
                return stub.GetClusterSnapshot(client_pb2.GetClusterSnapshotRequest(), timeout=10)

            deadline = time.monotonic() + 60
            while not snapshot().pools:
                if time.monotonic() > deadline:
                    pytest.fail(f"the pool never joined:\n{logs(tmp_path)}")
                time.sleep(0.2)

            ids = [stub.Submit(client_pb2.SubmitRequest(spec=C.JobSpec(
                model="batched", prompt=f"The Fox and the Crow, part {i}.",
                sampling=C.SamplingParams(seed=i, max_tokens=40))), timeout=30).job.job_id
                for i in range(JOBS)]

            # Watch both views while the jobs run: the orchestrator's (the snapshot's
            # active_jobs of the worker) and the worker's own (GetStatus).
            most_active, most_running, endpoint = 0, 0, ""
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                snap = snapshot()
                workers = [w for p in snap.pools for w in p.workers]
                for w in workers:
                    most_active = max(most_active, w.active_jobs)
                    if w.endpoint and w.slots == SLOTS:
                        endpoint = w.endpoint
                if endpoint:
                    with grpc.insecure_channel(endpoint) as wch:
                        try:
                            status = worker_pb2_grpc.WorkerServiceStub(wch).GetStatus(
                                worker_pb2.GetStatusRequest(), timeout=5)
                            most_running = max(most_running, len(status.running_job_ids))
                        except grpc.RpcError:
                            pass  # not serving yet
                jobs = [stub.GetJob(client_pb2.GetJobRequest(job_id=i), timeout=10).job for i in ids]
                if all(j.status in TERMINAL for j in jobs):
                    break
                time.sleep(0.05)
            else:
                pytest.fail(f"the jobs never finished:\n{logs(tmp_path)}")

            bad = {j.job_id: (C.JobStatus.Name(j.status), j.error.code, j.error.message)
                   for j in jobs if j.status != C.JOB_STATUS_SUCCEEDED}
            assert not bad, f"{bad}\n{logs(tmp_path)}"
            assert all(j.usage.completion_tokens > 0 for j in jobs)

            # One worker ran every job, four at a time and never more.
            assert len({j.worker_id for j in jobs}) == 1, [j.worker_id for j in jobs]
            overlap = most_overlapping([(ts(j.started_at), ts(j.finished_at)) for j in jobs])
            assert overlap == SLOTS, overlap
            assert most_active == SLOTS and most_running == SLOTS, (most_active, most_running)

            # Nothing was refused: one attempt each, no retry fact, no busy refusal logged.
            assert [j.attempts for j in jobs] == [1] * JOBS
            retries = []
            try:
                for resp in stub.WatchFacts(client_pb2.WatchFactsRequest(
                        kinds=[E.FACT_KIND_JOB_RETRYING]), timeout=1):
                    retries.append(resp.fact)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
            assert not retries, [f.message for f in retries]
            worker_logs = "".join(p.read_text(errors="replace") for p in tmp_path.rglob("*.log"))
            assert "worker.busy" not in worker_logs and "WORKER_BUSY" not in worker_logs

            # The worker is idle again: no job in its slots.
            w = next(w for p in snapshot().pools for w in p.workers)
            assert (w.state, w.active_jobs, w.slots) == (C.WORKER_STATE_READY, 0, SLOTS)
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
        for pid in pids_with(str(tmp_path)):  # workers a pool manager left behind
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
