"""The decision loop in-process, against scripted pools: what a placement commands."""

import asyncio
import shutil

import pytest

from common.config import Config, ModelConfig
from llama_orch.v1 import common_pb2 as C
from orchestrator.catalog import TINY_PATH
from orchestrator.core import Orchestrator
from orchestrator.scheduler import Reason
from tests.orchestrator.scripted_pool import GIB, ScriptedPool


@pytest.fixture
async def orch(tmp_path):
    cfg = Config()
    cfg.pool.heartbeat_ms = 200
    cfg.orchestrator.missed_heartbeats = 1000  # scripted pools send no heartbeats
    for name, devices in (("tp", 2), ("one", 1)):
        path = tmp_path / name
        path.mkdir()
        for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            shutil.copy(TINY_PATH / f, path / f)
        cfg.models[name] = ModelConfig(ref=f"file:{path}", engine="sim", devices=devices,
                                       memory_bytes=3 * GIB)
    o = Orchestrator(cfg)
    await o.start()
    yield o
    await o.stop()


async def starts(pool: ScriptedPool, n: int = 1, timeout: float = 5.0):
    async def wait():
        while len(pool.commands) < n:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(wait(), timeout)
    return [c.start_worker for c in pool.commands if c.HasField("start_worker")]


async def test_a_model_on_n_devices_gets_one_start_over_an_n_device_mask(orch):
    pool = ScriptedPool(orch, "p", ["sim-0", "sim-1", "sim-2"])
    await orch.submit(C.JobSpec(model="tp", prompt="the fox"))
    [cmd] = await starts(pool)
    assert len(set(cmd.device_ids)) == 2 and set(cmd.device_ids) <= {"sim-0", "sim-1", "sim-2"}
    assert cmd.memory_estimate_bytes == 3 * GIB and cmd.engine == "sim"
    assert dict(cmd.engine_options) == {"memory_bytes": str(3 * GIB)}
    await asyncio.sleep(0.3)
    assert len(pool.commands) == 1  # one worker for the job, not one per device


async def test_room_that_shows_up_in_a_heartbeat_is_used_without_another_wake_up(orch):
    pool = ScriptedPool(orch, "p", ["sim-0"])
    [dev] = pool.record.inventory.devices
    dev.memory_used_bytes, dev.memory_free_bytes = 6 * GIB, 2 * GIB  # someone else's
    dev.processes.add(pid=99, used_memory_bytes=6 * GIB)
    job, _ = await orch.submit(C.JobSpec(model="one", prompt="the fox"))
    while job.waiting_reason != Reason.NO_ROOM:
        await asyncio.sleep(0.01)
    # A heartbeat only replaces the inventory; nothing wakes the loop.
    inv = C.Inventory()
    inv.CopyFrom(pool.record.inventory)
    del inv.devices[0].processes[:]
    inv.devices[0].memory_used_bytes, inv.devices[0].memory_free_bytes = 0, 8 * GIB
    pool.record.inventory = inv
    [cmd] = await starts(pool, timeout=2.0)
    assert list(cmd.device_ids) == ["sim-0"]
