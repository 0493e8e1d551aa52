"""A restarted pool manager stops the workers its predecessor left behind.

Workers normally stop by themselves when their pool manager dies (they watch their
parent). A worker that is stopped or wedged cannot; here one is SIGSTOPped, then the
pool manager is SIGKILLed. The next pool manager (same pool id, same data dir) finds
it in the ledger, stops it, and serves new jobs with a fresh worker.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import pytest

from llama_orch.v1 import client_pb2, client_pb2_grpc, common_pb2 as C
from tests.e2e.test_pool_loss import write_config
from tests.stack import alive, free_port, pids_with, start_daemon, wait_serving

pytestmark = pytest.mark.e2e


def run_job(stub, seed: int) -> C.Job:
    job_id = stub.Submit(client_pb2.SubmitRequest(spec=C.JobSpec(
        model="slow", prompt="the fox", sampling=C.SamplingParams(seed=seed, max_tokens=3))),
        timeout=30).job.job_id
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = stub.GetJob(client_pb2.GetJobRequest(job_id=job_id), timeout=10).job
        if job.status in (C.JOB_STATUS_SUCCEEDED, C.JOB_STATUS_FAILED, C.JOB_STATUS_CANCELLED):
            return job
        time.sleep(0.1)
    raise TimeoutError(job_id)


def test_a_stopped_worker_left_by_a_killed_pool_manager_is_cleaned_up(tmp_path: Path):
    orch_port = free_port()
    config = write_config(tmp_path, orch_port, free_port(), free_port())
    orchestrator = f"127.0.0.1:{orch_port}"
    procs = [start_daemon(tmp_path, "orchestrator.log", "orchestrator", "--config", str(config))]
    stopped: list[int] = []
    try:
        wait_serving(orchestrator)
        pool = start_daemon(tmp_path, "pool-1.log", "pool_manager", "--config", str(config))
        procs.append(pool)
        with grpc.insecure_channel(orchestrator) as ch:
            stub = client_pb2_grpc.ClientServiceStub(ch)
            first = run_job(stub, 1)
            assert first.status == C.JOB_STATUS_SUCCEEDED, first.error.message
            (worker,) = [p for p in pids_with(f"--worker-id {first.worker_id}")]
            os.kill(worker, signal.SIGSTOP)  # wedged: it cannot notice its parent dying
            stopped.append(worker)
            pool.kill()
            pool.wait()
            time.sleep(1.5)  # the orphan watch would have fired by now, were it running
            assert alive(worker), "a stopped worker cannot exit on its own"

            procs.append(start_daemon(tmp_path, "pool-2.log", "pool_manager", "--config",
                                      str(config)))
            deadline = time.monotonic() + 30
            while alive(worker) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not alive(worker), "the restarted pool manager left its predecessor's worker"
            log = ""
            while "pool.leftover" not in log and time.monotonic() < deadline:
                time.sleep(0.1)  # the line follows the worker's death
                log = (tmp_path / "pool-2.log").read_text()
            assert "pool.leftover" in log and first.worker_id in log
            second = run_job(stub, 2)
            assert second.status == C.JOB_STATUS_SUCCEEDED, second.error.message
            assert second.worker_id != first.worker_id
    finally:
        for pid in stopped:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(30)
