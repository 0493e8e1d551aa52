"""Model pins in the store (0005), and a pin outliving an orchestrator restart.

Both backends (conftest.py). The restart test runs a real Orchestrator with its loops
and a real gRPC AdminService on the store, pins through the API, stops everything,
closes the store, then opens a new store and a new Orchestrator on the same database.
"""

from __future__ import annotations

import shutil

import grpc
import pytest

from common.config import Config, ModelConfig
from common.errors import OrchError
from llama_orch.v1 import admin_pb2 as A, admin_pb2_grpc
from orchestrator import scheduler, validator
from orchestrator.catalog import TINY_PATH
from orchestrator.core import Orchestrator
from orchestrator.main import build_server
from orchestrator.registry import WorkerRecord
from orchestrator.snapshot import JobView, StopWorker
from orchestrator.types import Priority, WorkerPhase
from tests.orchestrator.scripted_pool import ScriptedPool
from tests.orchestrator.store.migrations_helper import HEAD, db_state, insert_old_tenant, migrate_to

GIB = 1 << 30


async def test_migration_0005_adds_pins_and_agrees_with_schema_py(store, target):
    revision, tables, diff = await db_state(target)
    assert revision == HEAD == "0005"
    assert "pins" in tables and diff == []


async def test_0005_upgrades_a_0004_database_and_keeps_its_rows(target):
    await migrate_to(target, "0004")
    await insert_old_tenant(target)
    store = await target.open()  # migrates to head
    try:
        assert (await store.get_tenant("t-old")).credit_tokens == 7
        assert await store.load_pins() == {}
        await store.set_pin("file:/m1", "pool-a", ["g0"])
        assert await store.load_pins() == {"file:/m1": {("pool-a", "g0")}}
    finally:
        await store.close()


async def test_set_pin_replaces_the_pools_earlier_pin_and_leaves_other_pools(store):
    await store.set_pin("file:/m1", "pool-a", ["g0", "g1"], at=1.0)
    await store.set_pin("file:/m1", "pool-b", ["g0"], at=1.0)
    await store.set_pin("file:/m2", "pool-a", ["g1"], at=1.0)
    await store.set_pin("file:/m1", "pool-a", ["g1"], at=2.0)
    assert await store.load_pins() == {"file:/m1": {("pool-a", "g1"), ("pool-b", "g0")},
                                       "file:/m2": {("pool-a", "g1")}}


async def test_delete_pins_drops_one_pool_or_all_and_is_idempotent(store):
    await store.set_pin("file:/m1", "pool-a", ["g0"])
    await store.set_pin("file:/m1", "pool-b", ["g0"])
    await store.set_pin("file:/m2", "pool-a", ["g0"])
    await store.delete_pins("file:/m1", "pool-b")
    assert await store.load_pins() == {"file:/m1": {("pool-a", "g0")},
                                       "file:/m2": {("pool-a", "g0")}}
    await store.delete_pins("file:/m1")
    await store.delete_pins("file:/m1")  # nothing left: no error
    assert await store.load_pins() == {"file:/m2": {("pool-a", "g0")}}


async def test_pins_are_kept_across_reopening_the_store(target):
    first = await target.open()
    await first.set_pin("file:/m1", "pool-a", ["g0", "g0"])  # a repeated device counts once
    await first.close()
    second = await target.open()
    try:
        assert await second.load_pins() == {"file:/m1": {("pool-a", "g0")}}
    finally:
        await second.close()


# ---- an orchestrator restart --------------------------------------------------------------

def _config(tmp_path) -> Config:
    cfg = Config()
    cfg.data_dir = tmp_path
    for name in ("m1", "m2"):
        path = tmp_path / name
        path.mkdir(exist_ok=True)
        shutil.copy(TINY_PATH / "config.json", path / "config.json")
        cfg.models[name] = ModelConfig(ref=f"file:{path}", engine="sim", memory_bytes=3 * GIB)
    return cfg


class Running:
    """An orchestrator (loops started) on a store of `target`, serving AdminService."""

    async def start(self, target, cfg: Config) -> "Running":
        self.store = await target.open()
        self.orch = Orchestrator(cfg, store=self.store)
        await self.orch.start()
        self.server = build_server(self.orch)
        port = self.server.bind("127.0.0.1:0")
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        return self

    async def stop(self) -> None:
        await self.channel.close()
        await self.server.stop(0)
        await self.orch.stop()
        await self.store.close()


def _decides_to_evict(orch: Orchestrator, worker_id: str) -> bool:
    """Would a job of another model that needs the worker's room (5 GiB on both devices
    of the pool) evict it? Asks the scheduler on this moment's snapshot; the job is gone
    again before the loop runs."""
    other = JobView("j-other", "file:/other", Priority.INTERACTIVE, 1, 5 * GIB, 2, "sim")
    orch.index.add(other)
    try:
        return any(isinstance(d, StopWorker) and d.worker_id == worker_id
                   for d in scheduler.decide(orch.snapshot()))
    finally:
        orch.index.remove(other.job_id)


async def test_a_pin_survives_an_orchestrator_restart_and_still_protects_its_worker(
        target, tmp_path):
    cfg = _config(tmp_path)
    first = await Running().start(target, cfg)
    try:
        ScriptedPool(first.orch, "pool-a", ["sim-0", "sim-1"])
        ScriptedPool(first.orch, "pool-b", ["sim-0"])
        m1 = first.orch.catalog.resolve("m1").ref
        await first.admin.PinModel(A.PinModelRequest(model="m1", pool_id="pool-a",
                                                     device_ids=["sim-0"]))
        await first.admin.PinModel(A.PinModelRequest(model="m1", pool_id="pool-b"))
        await first.admin.PinModel(A.PinModelRequest(model="m2", pool_id="pool-b"))
        await first.admin.UnpinModel(A.UnpinModelRequest(model="m1", pool_id="pool-b"))
        await first.admin.UnpinModel(A.UnpinModelRequest(model="m2"))
    finally:
        await first.stop()

    second = await Running().start(target, cfg)
    try:
        # What the API answered last is what the new process starts with.
        assert second.orch.pins == {m1: {("pool-a", "sim-0")}}
        ScriptedPool(second.orch, "pool-a", ["sim-0", "sim-1"])
        w = WorkerRecord("w-m1", "pool-a", m1, ("sim-0",), 6 * GIB, phase=WorkerPhase.READY)
        second.orch.registry.workers[w.worker_id] = w
        assert not _decides_to_evict(second.orch, w.worker_id)
        [(_, why)] = validator.validate(second.orch.snapshot(), [StopWorker(w.worker_id, "lru")])
        assert "pinned" in why
        # Unpinning after the restart deletes the stored pin too.
        await second.admin.UnpinModel(A.UnpinModelRequest(model="m1"))
        assert _decides_to_evict(second.orch, w.worker_id)
        assert await second.store.load_pins() == {}
    finally:
        await second.stop()


async def test_a_pin_the_store_refuses_is_unavailable_and_not_kept_in_memory(target, tmp_path):
    running = await Running().start(target, _config(tmp_path))
    try:
        ScriptedPool(running.orch, "pool-a", ["sim-0"])
        await running.store.close()  # every later write fails: StoreClosed
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await running.admin.PinModel(A.PinModelRequest(model="m1", pool_id="pool-a"))
        assert OrchError.from_rpc_error(err.value).code == "UNAVAILABLE"
        assert running.orch.pins == {}
    finally:
        await running.channel.close()
        await running.server.stop(0)
        await running.orch.stop()
