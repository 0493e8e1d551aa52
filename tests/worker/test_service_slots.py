"""A worker with several slots, as a real `python -m worker --engine sim` process.

The sim engine's `slots=3` becomes the worker's slot count: three jobs run at once, a
fourth is refused with WORKER_BUSY, Cancel names one job and frees only its slot, and
GetStatus reports every running job.
"""

from __future__ import annotations

import asyncio
import itertools

import grpc
import pytest

from common.errors import OrchError, code_name
from llama_orch.v1 import common_pb2, worker_pb2, worker_pb2_grpc

SLOTS = 3
# 20 ms a token: a job of seed 4 (121 tokens) streams for ~2.4 s, so jobs overlap.
SLOW = (f"slots={SLOTS}", "itl_ms=20")
_ids = itertools.count()


def request(job_id: str = "", max_tokens: int = 0) -> worker_pb2.ExecuteRequest:
    return worker_pb2.ExecuteRequest(
        job_id=job_id or f"job-{next(_ids)}", prompt="Once upon a time",
        sampling=common_pb2.SamplingParams(seed=4, max_tokens=max_tokens))


async def rest(call) -> list[worker_pb2.ExecuteResponse]:
    events = []
    while (event := await call.read()) is not grpc.aio.EOF:
        events.append(event)
    return events


async def running(stub, n: int) -> list:
    """Start n long jobs and wait for each one's `started` (so each holds a slot)."""
    calls = [(req, stub.Execute(req)) for req in (request() for _ in range(n))]
    for _, call in calls:
        assert (await call.read()).HasField("started")
    return calls


@pytest.fixture
async def worker(start_sim):
    _, ready = await start_sim("w-slots", *SLOW)
    async with grpc.aio.insecure_channel(ready.endpoint) as ch:
        yield ready, worker_pb2_grpc.WorkerServiceStub(ch)


async def test_ready_report_and_idle_status_carry_the_engines_slots(worker):
    ready, stub = worker
    status = await stub.GetStatus(worker_pb2.GetStatusRequest())
    assert ready.slots == SLOTS and status.worker.slots == SLOTS
    assert (status.worker.active_jobs, list(status.running_job_ids)) == (0, [])
    assert status.worker.state == common_pb2.WORKER_STATE_READY


async def test_a_worker_with_free_slots_is_ready_not_busy(worker):
    _, stub = worker
    calls = await running(stub, SLOTS - 1)
    status = await stub.GetStatus(worker_pb2.GetStatusRequest())
    assert status.worker.state == common_pb2.WORKER_STATE_READY
    assert status.worker.active_jobs == SLOTS - 1
    assert sorted(status.running_job_ids) == sorted(req.job_id for req, _ in calls)
    for _, call in calls:
        call.cancel()


async def test_all_slots_run_at_once_and_one_more_is_refused_busy(worker):
    _, stub = worker
    calls = await running(stub, SLOTS)
    status = await stub.GetStatus(worker_pb2.GetStatusRequest())
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await rest(stub.Execute(request()))
    # Every one of the three streams delivers tokens while the others run.
    firsts = [await call.read() for _, call in calls]
    assert all(e.HasField("tokens") for e in firsts)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert OrchError.from_rpc_error(refused.value).code == "WORKER_BUSY"
    assert status.worker.state == common_pb2.WORKER_STATE_BUSY
    assert (status.worker.active_jobs, status.worker.slots) == (SLOTS, SLOTS)
    assert sorted(status.running_job_ids) == sorted(req.job_id for req, _ in calls)
    for _, call in calls:
        events = await rest(call)
        assert events[-1].HasField("end") and events[-1].end.finish_reason == "stop"


async def test_cancel_by_job_id_ends_only_that_job_and_frees_its_slot(worker):
    _, stub = worker
    calls = await running(stub, SLOTS)
    (victim, victim_call), *others = calls
    reply = await stub.Cancel(worker_pb2.CancelRequest(job_id=victim.job_id))
    victim_events = await rest(victim_call)
    # The freed slot takes a new job while the other two still run.
    newcomer = stub.Execute(request())
    assert (await newcomer.read()).HasField("started")
    status = await stub.GetStatus(worker_pb2.GetStatusRequest())
    assert reply.was_running
    assert victim_events[-1].HasField("error")
    assert code_name(victim_events[-1].error.code) == "CANCELLED"
    assert victim.job_id not in status.running_job_ids
    assert len(status.running_job_ids) == SLOTS
    for _, call in [*others, (None, newcomer)]:
        assert (await rest(call))[-1].HasField("end")


async def test_the_same_job_id_cannot_run_twice_at_once(worker):
    _, stub = worker
    [(req, call)] = await running(stub, 1)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await rest(stub.Execute(request(job_id=req.job_id)))
    assert OrchError.from_rpc_error(refused.value).code == "INVALID_ARGUMENT"
    assert (await rest(call))[-1].HasField("end")


async def test_callers_going_away_free_their_slots(worker):
    _, stub = worker
    calls = await running(stub, SLOTS)
    for _, call in calls:
        call.cancel()
    async with asyncio.timeout(10):
        while (await stub.GetStatus(worker_pb2.GetStatusRequest())).running_job_ids:
            await asyncio.sleep(0.01)
    assert len(await running(stub, SLOTS)) == SLOTS
