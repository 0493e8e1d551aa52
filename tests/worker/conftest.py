"""Worker tests' stand-in pool manager (the worker callback server) and sim workers.

`callbacks` is function-scoped; a module that shares workers across tests defines its
own module-scoped `callbacks` from `callback_server()`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import defaultdict
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llama_orch.v1 import worker_callback_pb2, worker_callback_pb2_grpc

TINY = Path(__file__).resolve().parents[2] / "models" / "tiny"
SIM_START_TIMEOUT_S = 60
# Sim timing that makes a 121-token job take ~0.15 s (and token gaps exact).
FAST = ("ttft_ms=1", "ttft_spread_ms=0", "itl_ms=1", "itl_spread_ms=0")


class Callbacks(worker_callback_pb2_grpc.WorkerCallbackServiceServicer):
    """A stand-in pool manager that records what workers report."""

    def __init__(self):
        self.address = ""
        self.ready: dict[str, worker_callback_pb2.ReportReadyRequest] = {}
        self.health_at_ready: dict[str, int] = {}
        self.failures: dict[str, worker_callback_pb2.ReportFailureRequest] = {}
        self.arrived: dict[str, asyncio.Event] = defaultdict(asyncio.Event)

    async def ReportReady(self, request, context):
        # Server-before-ready: the endpoint must already answer health checks now.
        async with grpc.aio.insecure_channel(request.endpoint) as ch:
            reply = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="llama_orch.v1.WorkerService"), timeout=5)
        self.health_at_ready[request.worker_id] = reply.status
        self.ready[request.worker_id] = request
        self.arrived[request.worker_id].set()
        return worker_callback_pb2.ReportReadyResponse()

    async def ReportFailure(self, request, context):
        self.failures[request.worker_id] = request
        self.arrived[request.worker_id].set()
        return worker_callback_pb2.ReportFailureResponse()


@asynccontextmanager
async def callback_server():
    """A Callbacks servicer on an ephemeral loopback port, for the block's duration."""
    cb = Callbacks()
    server = grpc.aio.server()
    worker_callback_pb2_grpc.add_WorkerCallbackServiceServicer_to_server(cb, server)
    cb.address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    try:
        yield cb
    finally:
        await server.stop(0)


@pytest_asyncio.fixture
async def callbacks():
    async with callback_server() as cb:
        yield cb


@pytest_asyncio.fixture
async def start_sim(callbacks, tmp_path):
    """start_sim(worker_id, *options) -> (process, ReportReady) for `python -m worker
    --engine sim` on the tiny model's tokenizer, FAST timing unless overridden; every
    process is killed after the test."""
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
        async with asyncio.timeout(SIM_START_TIMEOUT_S):
            while worker_id not in callbacks.ready:
                assert proc.returncode is None, (tmp_path / f"{worker_id}.stderr").read_text()
                await asyncio.sleep(0.05)
        return proc, callbacks.ready[worker_id]

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
