"""`python -m worker --engine sim` as a real process: ready report and fault injection.

A crash must end the process with the injected status, and a hang must leave the
process up (health still answers) while its stream produces nothing more.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from llama_orch.v1 import (common_pb2, worker_callback_pb2, worker_callback_pb2_grpc, worker_pb2,
                           worker_pb2_grpc)

TINY = Path(__file__).resolve().parents[2] / "models" / "tiny"
START_TIMEOUT_S = 60
FAST = ("ttft_ms=1", "ttft_spread_ms=0", "itl_ms=1", "itl_spread_ms=0")


class Callbacks(worker_callback_pb2_grpc.WorkerCallbackServiceServicer):
    def __init__(self):
        self.address = ""
        self.ready: dict[str, worker_callback_pb2.ReportReadyRequest] = {}

    async def ReportReady(self, request, context):
        self.ready[request.worker_id] = request
        return worker_callback_pb2.ReportReadyResponse()

    async def ReportFailure(self, request, context):
        return worker_callback_pb2.ReportFailureResponse()


@pytest_asyncio.fixture
async def callbacks():
    cb = Callbacks()
    server = grpc.aio.server()
    worker_callback_pb2_grpc.add_WorkerCallbackServiceServicer_to_server(cb, server)
    cb.address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    yield cb
    await server.stop(0)


@pytest_asyncio.fixture
async def start(callbacks, tmp_path):
    """start(worker_id, *options) -> (process, ReportReady); every process is stopped after."""
    procs: list[asyncio.subprocess.Process] = []

    async def start(worker_id: str, *options: str):
        args = [a for opt in (*FAST, *options) for a in ("--option", opt)]
        with (tmp_path / f"{worker_id}.stderr").open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worker", "--worker-id", worker_id, "--model-ref",
                f"file:{TINY}", "--engine", "sim", "--callback", callbacks.address, *args,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=err,
                env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
        procs.append(proc)
        async with asyncio.timeout(START_TIMEOUT_S):
            while worker_id not in callbacks.ready:
                assert proc.returncode is None, (tmp_path / f"{worker_id}.stderr").read_text()
                await asyncio.sleep(0.05)
        return proc, callbacks.ready[worker_id]

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()


def request(job_id: str, max_tokens: int = 0) -> worker_pb2.ExecuteRequest:
    # seed 4 runs 121 tokens before its eos, far past every injection point below
    return worker_pb2.ExecuteRequest(job_id=job_id, prompt="Once upon a time",
                                     sampling=common_pb2.SamplingParams(seed=4,
                                                                        max_tokens=max_tokens))


async def test_ready_report_says_sim_and_simulated(start):
    proc, ready = await start("w-sim", "slots=3", "memory_bytes=5000")
    assert (ready.engine, ready.pid) == ("sim", proc.pid)
    assert "simulated" in ready.engine_version
    assert ready.model_digest.startswith("sim:") and dict(ready.device_bytes) == {"cpu": 5000}
    async with grpc.aio.insecure_channel(ready.endpoint) as ch:
        events = [e async for e in worker_pb2_grpc.WorkerServiceStub(ch).Execute(
            request("j1", max_tokens=10))]
    assert events[-1].end.usage.completion_tokens == 10
    assert events[-1].end.proof.device == "simulated"


async def test_crash_after_tokens_exits_with_the_injected_status(start):
    proc, ready = await start("w-crash", "crash_after_tokens=5")
    ids: list[int] = []
    async with grpc.aio.insecure_channel(ready.endpoint) as ch:
        with pytest.raises(grpc.aio.AioRpcError):  # the stream breaks: the process is gone
            async for event in worker_pb2_grpc.WorkerServiceStub(ch).Execute(request("j2")):
                ids.extend(event.tokens.token_ids)
                assert not event.HasField("end")
    assert await asyncio.wait_for(proc.wait(), 10) == 13
    assert len(ids) <= 5


async def test_hang_after_tokens_stops_the_stream_but_not_the_process(start):
    proc, ready = await start("w-hang", "hang_after_tokens=5")
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
