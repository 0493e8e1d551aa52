"""Cancellation and deadlines against a worker that stops answering.

The `sim` engine (simulated, configured explicitly here) hangs after a few tokens: a
cancel still closes the job as cancelled once the grace period passes, and a deadline
closes it as DEADLINE_EXCEEDED, whatever the worker does.
"""

from __future__ import annotations


import grpc
import pytest

from llama_orch.v1 import client_pb2, client_pb2_grpc, common_pb2 as C, errors_pb2
from tests.stack import Stack, sim_model

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("grace")
    model = root / "hang-model"
    sim_model(model, {
        "hang_after_tokens": 3, "ttft_ms": 1, "ttft_spread_ms": 0, "itl_ms": 1, "itl_spread_ms": 0})
    s = Stack(root, orchestrator_extra="cancel_grace_s = 1.0",
              extra_config=f'[models.hang]\nref = "file:{model}"\nengine = "sim"\n')
    yield s.start()
    s.stop()


def run(stack, spec, cancel_after_tokens=None):
    events = []
    with grpc.insecure_channel(stack.orchestrator) as ch:
        stub = client_pb2_grpc.ClientServiceStub(ch)
        for resp in stub.Generate(client_pb2.GenerateRequest(spec=spec), timeout=60):
            events.append(resp.event)
            tokens = sum(e.WhichOneof("kind") == "tokens" for e in events)
            if cancel_after_tokens is not None and tokens == cancel_after_tokens:
                stub.CancelJob(client_pb2.CancelJobRequest(job_id=resp.event.job_id), timeout=10)
                cancel_after_tokens = None
        job = stub.GetJob(client_pb2.GetJobRequest(job_id=events[0].job_id), timeout=10).job
    return events, job


def test_cancel_closes_the_job_after_the_grace_even_if_the_worker_hangs(stack):
    events, job = run(stack, C.JobSpec(model="hang", prompt="the fox",
                                       sampling=C.SamplingParams(max_tokens=50, seed=1)),
                      cancel_after_tokens=1)
    assert events[-1].WhichOneof("kind") == "error"
    assert events[-1].error.code == errors_pb2.ERROR_CODE_CANCELLED
    assert job.status == C.JOB_STATUS_CANCELLED


def test_a_deadline_fails_a_job_whose_worker_hangs(stack):
    events, job = run(stack, C.JobSpec(model="hang", prompt="the wolf", deadline_ms=1500,
                                       sampling=C.SamplingParams(max_tokens=50, seed=2)))
    assert events[-1].error.code == errors_pb2.ERROR_CODE_DEADLINE_EXCEEDED
    assert job.status == C.JOB_STATUS_FAILED and job.error.code == errors_pb2.ERROR_CODE_DEADLINE_EXCEEDED
