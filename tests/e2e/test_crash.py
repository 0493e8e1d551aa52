"""Crash test: admit 200 batch jobs, kill -9 the orchestrator mid-run, restart it.

Every job reaches a terminal state, none is lost, and each completed job has exactly one
recorded output and exactly one `end` event. The orchestrator and the pool manager are
separate processes here (as in a lab), so the orchestrator can die alone.
"""

from __future__ import annotations

import subprocess
import time

import grpc
import pytest

from llama_orch.v1 import client_pb2, client_pb2_grpc, common_pb2 as C
from tests.stack import Stack, start_daemon, wait_serving

pytestmark = pytest.mark.e2e
JOBS = 200


def start(stack: Stack, module: str, log_name: str) -> subprocess.Popen:
    return start_daemon(stack.root, log_name, module, "--config", str(stack.config_path))


def statuses(stub, ids) -> dict[str, C.Job]:
    return {i: stub.GetJob(client_pb2.GetJobRequest(job_id=i), timeout=10).job for i in ids}


def stream_text(events) -> str:
    """The text a client ends with: tokens appended, a divergence cuts back to its offset."""
    text = ""
    for e in events:
        if e.WhichOneof("kind") == "tokens":
            text += e.tokens.text
        elif e.WhichOneof("kind") == "divergence":
            text = text[:e.divergence.char_offset]
    return text


TERMINAL = (C.JOB_STATUS_SUCCEEDED, C.JOB_STATUS_FAILED, C.JOB_STATUS_CANCELLED)


def test_kill_9_of_the_orchestrator_loses_no_admitted_job(tmp_path):
    stack = Stack(tmp_path, orchestrator_extra="retry_initial_s = 0.2")
    stack.write_config()
    orch = start(stack, "orchestrator", "orchestrator.log")
    pool = start(stack, "pool_manager", "pool.log")
    try:
        wait_serving(stack.orchestrator)
        with grpc.insecure_channel(stack.orchestrator) as ch:
            stub = client_pb2_grpc.ClientServiceStub(ch)
            ids = [stub.Submit(client_pb2.SubmitRequest(spec=C.JobSpec(
                model="tiny", prompt=f"The Fox and the Crow, part {i}.", priority=C.PRIORITY_BATCH,
                keep_output=True, sampling=C.SamplingParams(seed=i, max_tokens=24))),
                timeout=30).job.job_id for i in range(JOBS)]
            assert len(set(ids)) == JOBS
            # Let some finish, then kill the orchestrator in the middle of the run.
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                done = sum(j.status in TERMINAL for j in statuses(stub, ids[:60]).values())
                if done >= 20:
                    break
                time.sleep(0.3)
            assert done >= 20, "no progress before the crash"
        orch.kill()
        orch.wait()

        orch = start(stack, "orchestrator", "orchestrator.log")
        wait_serving(stack.orchestrator)
        with grpc.insecure_channel(stack.orchestrator) as ch:
            stub = client_pb2_grpc.ClientServiceStub(ch)
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                jobs = statuses(stub, ids)
                if all(j.status in TERMINAL for j in jobs.values()):
                    break
                time.sleep(1)
            jobs = statuses(stub, ids)
            assert all(j.status in TERMINAL for j in jobs.values()), \
                {i: C.JobStatus.Name(j.status) for i, j in jobs.items() if j.status not in TERMINAL}
            succeeded = [j for j in jobs.values() if j.status == C.JOB_STATUS_SUCCEEDED]
            assert len(succeeded) == JOBS, [(j.job_id, j.error.message) for j in jobs.values()
                                            if j.status != C.JOB_STATUS_SUCCEEDED][:5]
            for job in succeeded:
                # It ran (a worker's proof of its tokens); a seed may draw </s> first,
                # so an empty completion is a possible outcome.
                assert job.proof.engine == "hf" and job.finish_reason in ("stop", "length")
                assert job.proof.token_count == job.usage.completion_tokens
                events = [r.event for r in stub.StreamJob(
                    client_pb2.StreamJobRequest(job_id=job.job_id), timeout=30)]
                kinds = [e.WhichOneof("kind") for e in events]
                assert kinds.count("end") == 1 and kinds[-1] == "end", (job.job_id, kinds)
                seqs = [e.seq for e in events]
                assert seqs == sorted(set(seqs))
                # Numbers jump only where a restart realigns the stream (orchestrator/jobs.py).
                for before, after in zip(events, events[1:]):
                    if after.seq != before.seq + 1:
                        assert after.WhichOneof("kind") == "divergence", (job.job_id, seqs)
                assert stream_text(events) == job.output  # the recorded output is what streamed
    finally:
        for p in (orch, pool):
            if p.poll() is None:
                p.terminate()
                p.wait(30)
