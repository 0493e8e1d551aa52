"""In-process sim workers (pool.sim_in_process) through the real Supervisor and the
pool manager's real callback server: they serve Execute over gRPC like worker
processes, and stop, crash and fail to start the way processes do, without taking the
pool manager (this test process) with them.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from common.errors import code_name
from common.grpc_server import Server
from llama_orch.v1 import (common_pb2, pool_link_pb2, worker_callback_pb2,
                           worker_callback_pb2_grpc, worker_pb2, worker_pb2_grpc)
from orchestrator.catalog import TINY_PATH
from pool_manager.callbacks import CallbackServicer
from pool_manager.inprocess import InProcessWorker
from pool_manager.supervisor import Supervisor

REPO = Path(__file__).resolve().parents[2]
FAST = {"ttft_ms": "1", "ttft_spread_ms": "0", "itl_ms": "1", "itl_spread_ms": "0"}
TIMEOUT_S = 30


@dataclass
class Pool:
    supervisor: Supervisor
    upward: list[pool_link_pb2.ConnectRequest] = field(default_factory=list)
    exits: dict[str, asyncio.Future] = field(default_factory=dict)

    def exited(self, worker_id: str) -> asyncio.Future:
        return self.exits.setdefault(worker_id, asyncio.get_running_loop().create_future())

    async def start(self, worker_id: str, engine: str = "sim", model_ref: str = f"file:{TINY_PATH}",
                    **options: str):
        return await self.supervisor.spawn(pool_link_pb2.StartWorkerCommand(
            worker_id=worker_id, model_ref=model_ref, engine=engine, device_ids=["sim-0"],
            engine_options={**FAST, **options}), set())

    async def ready(self, worker_id: str) -> pool_link_pb2.WorkerReady:
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                for msg in self.upward:
                    if msg.worker_ready.worker.worker_id == worker_id:
                        return msg.worker_ready
                await asyncio.sleep(0.02)


@pytest.fixture
async def pool():
    server = Server([worker_callback_pb2.DESCRIPTOR.services_by_name["WorkerCallbackService"]
                     .full_name])
    port = server.bind("127.0.0.1:0")
    pool = Pool(None)  # type: ignore[arg-type]

    def on_exit(report: pool_link_pb2.WorkerExited) -> None:
        pool.exited(report.worker_id).set_result(report)

    pool.supervisor = Supervisor(f"127.0.0.1:{port}", on_exit, sim_in_process=True, grace_s=2.0)
    worker_callback_pb2_grpc.add_WorkerCallbackServiceServicer_to_server(
        CallbackServicer(pool.supervisor, pool.upward.append), server.grpc)
    await server.start()
    yield pool
    await pool.supervisor.stop_all()
    await server.stop(0)


def request(job_id: str, max_tokens: int = 8) -> worker_pb2.ExecuteRequest:
    # seed 4 runs 121 tokens before its eos
    return worker_pb2.ExecuteRequest(job_id=job_id, prompt="Once upon a time",
                                     sampling=common_pb2.SamplingParams(seed=4,
                                                                        max_tokens=max_tokens))


async def execute(endpoint: str, job_id: str, max_tokens: int = 8):
    async with grpc.aio.insecure_channel(endpoint) as ch:
        return [e async for e in worker_pb2_grpc.WorkerServiceStub(ch).Execute(
            request(job_id, max_tokens), timeout=TIMEOUT_S)]


async def test_several_in_process_workers_report_ready_and_serve_execute(pool, capfd):
    names = [f"w-{i}" for i in range(4)]
    spawned = [await pool.start(name, slots="2") for name in names]
    ready = [await pool.ready(name) for name in names]
    results = await asyncio.gather(*(execute(r.worker.endpoint, f"j-{r.worker.worker_id}")
                                     for r in ready))
    assert all(isinstance(wp.proc, InProcessWorker) and wp.in_process for wp in spawned)
    assert {r.worker.pid for r in ready} == {os.getpid()} == {wp.proc.pid for wp in spawned}
    assert len({r.worker.endpoint for r in ready}) == len(names)  # one server each
    assert all(r.worker.engine == "sim" and r.worker.slots == 2 for r in ready)
    assert all(events[-1].end.usage.completion_tokens == 8 for events in results)
    assert "in-process (simulated)" in capfd.readouterr().err


async def test_a_commanded_stop_cancels_its_job_and_ends_with_status_0_and_expected(pool):
    await pool.start("w-stay")
    await pool.start("w-stop", itl_ms="20")  # its job (121 tokens) is still running at the stop
    stay, stop = await pool.ready("w-stay"), await pool.ready("w-stop")
    running = asyncio.ensure_future(execute(stop.worker.endpoint, "j-long", max_tokens=0))
    await asyncio.sleep(0.3)
    assert await pool.supervisor.stop("w-stop")
    report = await asyncio.wait_for(pool.exited("w-stop"), TIMEOUT_S)
    cut = await running
    with pytest.raises(grpc.aio.AioRpcError):  # its server is gone
        await execute(stop.worker.endpoint, "j-after-stop")
    assert code_name(cut[-1].error.code) == "CANCELLED"  # graceful: a terminal event
    assert report.expected and report.HasField("exit_code") and report.exit_code == 0
    assert "w-stop" not in pool.supervisor.workers and "w-stay" in pool.supervisor.workers
    assert (await execute(stay.worker.endpoint, "j-stay"))[-1].HasField("end")


async def test_the_crash_fault_ends_only_its_worker_with_status_13(pool):
    for name, options in (("w-ok", {}), ("w-crash", {"crash_after_tokens": "5"})):
        await pool.start(name, **options)
    ok, crash = await pool.ready("w-ok"), await pool.ready("w-crash")
    with pytest.raises(grpc.aio.AioRpcError):  # the stream breaks, as when a process dies
        await execute(crash.worker.endpoint, "j-crash", max_tokens=0)
    report = await asyncio.wait_for(pool.exited("w-crash"), TIMEOUT_S)
    assert report.HasField("exit_code") and report.exit_code == 13 and not report.expected
    assert "simulated crash" in report.stderr_tail
    assert (await execute(ok.worker.endpoint, "j-ok"))[-1].HasField("end")
    assert list(pool.supervisor.workers) == ["w-ok"]


async def test_a_hung_engine_hangs_its_worker_alone_and_a_stop_ends_its_job(pool):
    for name, options in (("w-fine", {}), ("w-hang", {"hang_after_tokens": "3"})):
        await pool.start(name, **options)
    fine, hang = await pool.ready("w-fine"), await pool.ready("w-hang")
    hung = asyncio.ensure_future(execute(hang.worker.endpoint, "j-hang", max_tokens=0))
    served = await execute(fine.worker.endpoint, "j-fine")  # while the other one hangs
    assert not hung.done()
    await pool.supervisor.stop("w-hang", grace_s=5)
    report = await asyncio.wait_for(pool.exited("w-hang"), TIMEOUT_S)
    # The stop's cancel reaches the job inside the engine's stuck step (worker/job.py),
    # so the worker ends its job and exits within the grace; no kill is needed.
    events = await asyncio.wait_for(hung, TIMEOUT_S)
    assert code_name(events[-1].error.code) == "CANCELLED"
    assert served[-1].HasField("end")
    assert report.expected and not report.HasField("signal")


@pytest.mark.parametrize("engine,in_process,expect_in_process", [
    ("sim", True, True),
    ("sim", False, False),
    ("hf", True, False),
], ids=["sim-in-process", "sim-as-process-by-default", "other-engines-always-processes"])
async def test_only_sim_runs_in_process_and_a_failed_start_reads_like_a_process(
        pool, engine, in_process, expect_in_process):
    pool.supervisor.sim_in_process = in_process
    wp = await pool.start("w-bad", engine=engine, model_ref="file:/nonexistent/model")
    report = await asyncio.wait_for(pool.exited("w-bad"), TIMEOUT_S)
    assert (wp.proc.pid == os.getpid(), wp.in_process) == (expect_in_process,) * 2
    assert report.HasField("exit_code") and report.exit_code == 2
    assert report.stderr_tail.startswith("worker: INVALID_MODEL_REF: ")
    assert len(report.stderr_tail.splitlines()) == 1
    assert code_name(report.error.code) == "INVALID_MODEL_REF"  # ReportFailure arrived first


def test_hosting_sim_workers_does_not_import_torch():
    # worker.sampling imports torch lazily: a pool manager with 250 sim workers (and a
    # sim worker process) must not pay ~200 MB for a library the sim never calls.
    code = ("import sys, pool_manager.supervisor, worker.main, worker.service, worker.job, "
            "worker.engines.sim; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO)
    assert out.stdout.strip() == "False"
