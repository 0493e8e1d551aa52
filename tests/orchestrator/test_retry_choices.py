"""A retried job with several choices: what the client already had of each choice,
its `end` included, is not sent again.

A worker that plays two attempts of a two-choice job (a real gRPC server on loopback):
the first finishes choice 0 and breaks inside choice 1; the retry replays both."""

import asyncio

import grpc
import pytest

from common.config import Config
from common.errors import OrchError
from llama_orch.v1 import common_pb2 as C, events_pb2 as E, worker_pb2, worker_pb2_grpc
from orchestrator.core import Orchestrator
from orchestrator.types import JobState
from tests.orchestrator.scripted_pool import ScriptedPool
from tests.orchestrator.test_slots import until


def tokens(index: int, ids: list[int], text: str) -> worker_pb2.ExecuteResponse:
    return worker_pb2.ExecuteResponse(tokens=E.JobTokens(choice_index=index, token_ids=ids,
                                                         text=text))


def end(index: int, completion: int) -> worker_pb2.ExecuteResponse:
    return worker_pb2.ExecuteResponse(end=E.JobEnd(
        choice_index=index, finish_reason="stop",
        usage=C.Usage(prompt_tokens=2, completion_tokens=completion)))


class TwoAttempts(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(self):
        self.attempts = 0

    async def Execute(self, request, context):
        self.attempts += 1
        yield worker_pb2.ExecuteResponse(started=E.JobStarted(prompt_tokens=2))
        yield tokens(0, [1, 2], " a b")
        yield end(0, 2)
        yield tokens(1, [5], " e")
        if self.attempts == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the worker went away")
        yield tokens(1, [6], " f")
        yield end(1, 2)

    async def Cancel(self, request, context):
        return worker_pb2.CancelResponse()


@pytest.fixture
async def orch():
    cfg = Config()
    cfg.orchestrator.missed_heartbeats = 1000  # the scripted pool sends no heartbeats
    cfg.orchestrator.retry_initial_s = 0.05
    o = Orchestrator(cfg)
    await o.start()
    ScriptedPool(o, "p", ["sim-0"])
    server = grpc.aio.server()
    worker_pb2_grpc.add_WorkerServiceServicer_to_server(TwoAttempts(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    def announce(worker_id: str) -> None:
        o.worker_ready("p", C.WorkerInfo(
            worker_id=worker_id, model_ref=o.catalog.resolve("tiny").ref, device_ids=["sim-0"],
            endpoint=f"127.0.0.1:{port}", state=C.WORKER_STATE_READY, slots=1), 0)
    o.announce = announce
    yield o
    await o.stop()
    await server.stop(0)


async def test_a_retry_sends_no_second_end_for_a_choice_that_had_ended(orch):
    orch.announce("w1")
    job, _ = await orch.submit(C.JobSpec(model="tiny", prompt="the fox",
                                         sampling=C.SamplingParams(n=2)))
    await until(lambda: job.attempts == 1 and job.state is JobState.QUEUED)
    # The pool reports the first worker gone; a fresh one (same script) serves the retry.
    orch.worker_gone("w1", OrchError("WORKER_CRASHED", "exited with status 13"))
    orch.announce("w2")
    await until(lambda: job.done)
    assert job.state is JobState.SUCCEEDED and job.attempts == 2
    kinds = [(e.WhichOneof("kind"), e.end.choice_index if e.HasField("end") else None)
             for e in job.events]
    assert [k for k in kinds if k[0] == "end"] == [("end", 0), ("end", 1)], kinds
    text = {i: "".join(e.tokens.text for e in job.events
                       if e.HasField("tokens") and e.tokens.choice_index == i) for i in (0, 1)}
    assert text == {0: " a b", 1: " e f"}
    assert (job.usage.completion_tokens, job.usage.prompt_tokens) == (4, 2)
