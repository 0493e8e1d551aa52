"""The supervisor spawns real worker processes and reports how they ended."""

import asyncio
import signal

from llama_orch.v1 import pool_link_pb2
from orchestrator.catalog import TINY_PATH
from pool_manager.supervisor import Supervisor


async def _run(cmd: pool_link_pb2.StartWorkerCommand, kill: bool = False) -> pool_link_pb2.WorkerExited:
    done: asyncio.Future = asyncio.get_running_loop().create_future()
    sup = Supervisor("127.0.0.1:1", lambda r: done.set_result(r))
    wp = await sup.spawn(cmd, set())
    if kill:
        await asyncio.sleep(0.5)
        wp.proc.send_signal(signal.SIGKILL)
    report = await asyncio.wait_for(done, 120)
    assert cmd.worker_id not in sup.workers
    return report


async def test_a_worker_that_exits_at_once_is_reported_with_code_and_stderr():
    report = await _run(pool_link_pb2.StartWorkerCommand(
        worker_id="w-bad", model_ref="hf:not/supported", engine="hf", device_ids=["cpu"]))
    assert report.HasField("exit_code") and report.exit_code != 0 and not report.HasField("signal")
    assert "INVALID_MODEL_REF" in report.stderr_tail
    assert not report.expected


async def test_a_killed_worker_is_reported_with_its_signal():
    # Loading the real tiny model takes seconds, so the kill lands while it loads.
    report = await _run(pool_link_pb2.StartWorkerCommand(
        worker_id="w-kill", model_ref=f"file:{TINY_PATH}", engine="hf", device_ids=["cpu"]), kill=True)
    assert (report.signal, report.signal_name) == (9, "SIGKILL")
    assert not report.HasField("exit_code")
