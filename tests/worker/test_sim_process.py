"""`python -m worker --engine sim` as a real process: ready report and fault injection.

A crash must end the process with the injected status, and a hang must leave the
process up (health still answers) while its stream produces nothing more.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from llama_orch.v1 import common_pb2, worker_pb2, worker_pb2_grpc


def request(job_id: str, max_tokens: int = 0) -> worker_pb2.ExecuteRequest:
    # seed 4 runs 121 tokens before its eos, far past every injection point below
    return worker_pb2.ExecuteRequest(job_id=job_id, prompt="Once upon a time",
                                     sampling=common_pb2.SamplingParams(seed=4,
                                                                        max_tokens=max_tokens))


async def test_ready_report_says_sim_and_simulated(start_sim):
    proc, ready = await start_sim("w-sim", "slots=3", "memory_bytes=5000")
    assert (ready.engine, ready.pid) == ("sim", proc.pid)
    assert "simulated" in ready.engine_version
    assert ready.model_digest.startswith("sim:") and dict(ready.device_bytes) == {"cpu": 5000}
    async with grpc.aio.insecure_channel(ready.endpoint) as ch:
        events = [e async for e in worker_pb2_grpc.WorkerServiceStub(ch).Execute(
            request("j1", max_tokens=10))]
    assert events[-1].end.usage.completion_tokens == 10
    assert events[-1].end.proof.device == "simulated"


async def test_crash_after_tokens_exits_with_the_injected_status(start_sim):
    proc, ready = await start_sim("w-crash", "crash_after_tokens=5")
    ids: list[int] = []
    async with grpc.aio.insecure_channel(ready.endpoint) as ch:
        with pytest.raises(grpc.aio.AioRpcError):  # the stream breaks: the process is gone
            async for event in worker_pb2_grpc.WorkerServiceStub(ch).Execute(request("j2")):
                ids.extend(event.tokens.token_ids)
                assert not event.HasField("end")
    assert await asyncio.wait_for(proc.wait(), 10) == 13
    assert len(ids) <= 5


async def test_hang_after_tokens_stops_the_stream_but_not_the_process(start_sim):
    proc, ready = await start_sim("w-hang", "hang_after_tokens=5")
    ids: list[int] = []
    async with grpc.aio.insecure_channel(ready.endpoint) as ch:
        stub = worker_pb2_grpc.WorkerServiceStub(ch)
        call = stub.Execute(request("j3"))

        async def drain():
            async for event in call:
                ids.extend(event.tokens.token_ids)

        draining = asyncio.ensure_future(drain())
        done, _ = await asyncio.wait([draining], timeout=1.0)  # 121 tokens at 1 ms: done by now
        status = await stub.GetStatus(worker_pb2.GetStatusRequest(), timeout=5)
        draining.cancel()
    assert not done and 0 < len(ids) <= 5 and proc.returncode is None
    assert list(status.running_job_ids) == ["j3"]  # still running, as far as it knows
