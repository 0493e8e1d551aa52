"""AdminService over real gRPC, against an in-process Orchestrator and scripted pools."""

import shutil

import grpc
import pytest

from common.config import Config, ModelConfig
from common.errors import OrchError
from llama_orch.v1 import admin_pb2 as A, admin_pb2_grpc, common_pb2 as C, events_pb2 as E
from llama_orch.v1 import pool_link_pb2 as L
from orchestrator import scheduler
from orchestrator.catalog import TINY_PATH
from orchestrator.core import Orchestrator
from orchestrator.main import build_server
from orchestrator.registry import WorkerRecord
from orchestrator.snapshot import JobView, StopWorker
from orchestrator.types import Priority, WorkerPhase
from tests.orchestrator.scripted_pool import ScriptedPool

GIB = 1 << 30


@pytest.fixture
async def admin(tmp_path):
    cfg = Config()
    for name in ("m1", "m2"):
        path = tmp_path / name
        path.mkdir()
        shutil.copy(TINY_PATH / "config.json", path / "config.json")
        cfg.models[name] = ModelConfig(ref=f"file:{path}", engine="sim", memory_bytes=3 * GIB)
    cfg.models["m2"].devices = 2
    orch = Orchestrator(cfg)  # no loops: the tests drive it through the API alone
    server = build_server(orch)
    port = server.bind("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield orch, admin_pb2_grpc.AdminServiceStub(channel)
    await channel.close()
    await server.stop(0)


async def code_of(call) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return OrchError.from_rpc_error(err.value).code


def facts(orch, kind):
    return [f for f in orch.facts.recent([kind])]


async def test_pin_validates_model_pool_and_devices_with_stable_codes(admin):
    orch, stub = admin
    ScriptedPool(orch, "pool-a", ["sim-0", "sim-1"])
    assert await code_of(stub.PinModel(A.PinModelRequest(model="nope", pool_id="pool-a"))) == \
        "MODEL_NOT_FOUND"
    assert await code_of(stub.PinModel(A.PinModelRequest(model="m1", pool_id="pool-z"))) == \
        "POOL_UNAVAILABLE"
    assert await code_of(stub.PinModel(A.PinModelRequest(
        model="m1", pool_id="pool-a", device_ids=["sim-0", "gpu-9"]))) == "DEVICE_NOT_FOUND"
    assert await code_of(stub.PinModel(A.PinModelRequest(model="m1"))) == "INVALID_ARGUMENT"
    assert orch.pins == {} and not facts(orch, E.FACT_KIND_MODEL_PINNED)


async def test_pin_and_unpin_change_what_the_scheduler_may_evict_and_are_facts(admin):
    orch, stub = admin
    ScriptedPool(orch, "pool-a", ["sim-0", "sim-1"])
    m1 = orch.catalog.resolve("m1").ref
    pin = (await stub.PinModel(A.PinModelRequest(model="m1", pool_id="pool-a",
                                                 device_ids=["sim-0"]))).pin
    assert (pin.model_ref, pin.pool_id, list(pin.device_ids)) == (m1, "pool-a", ["sim-0"])
    assert pin.created_at.seconds > 0
    [fact] = facts(orch, E.FACT_KIND_MODEL_PINNED)
    assert (fact.model_ref, fact.pool_id, list(fact.attributes["device_ids"])) == \
        (m1, "pool-a", ["sim-0"])

    # An idle m1 worker fills sim-0; a job for another model needs the room.
    w = WorkerRecord("w-m1", "pool-a", m1, ("sim-0",), 6 * GIB, phase=WorkerPhase.READY)
    orch.registry.workers[w.worker_id] = w
    other = JobView("j1", "file:/other", Priority.INTERACTIVE, 1, 5 * GIB, 2, "sim")

    def evicts() -> bool:
        orch.index.add(other)
        try:
            return any(isinstance(d, StopWorker) for d in scheduler.decide(orch.snapshot()))
        finally:
            orch.index.remove(other.job_id)

    assert not evicts()
    await stub.UnpinModel(A.UnpinModelRequest(model="m1", pool_id="pool-a"))
    assert orch.pins == {} and evicts()
    [fact] = facts(orch, E.FACT_KIND_MODEL_UNPINNED)
    assert (fact.model_ref, fact.pool_id, list(fact.attributes["device_ids"])) == \
        (m1, "pool-a", ["sim-0"])
    await stub.UnpinModel(A.UnpinModelRequest(model="m1"))  # idempotent: nothing pinned
    assert len(facts(orch, E.FACT_KIND_MODEL_UNPINNED)) == 1


async def test_a_pin_without_devices_covers_the_pool_and_replaces_the_pools_earlier_pin(admin):
    orch, stub = admin
    ScriptedPool(orch, "pool-a", ["sim-0", "sim-1"])
    ScriptedPool(orch, "pool-b", ["sim-0"])
    m1 = orch.catalog.resolve("m1").ref
    await stub.PinModel(A.PinModelRequest(model="m1", pool_id="pool-b"))
    await stub.PinModel(A.PinModelRequest(model="m1", pool_id="pool-a", device_ids=["sim-1"]))
    await stub.PinModel(A.PinModelRequest(model="m1", pool_id="pool-a"))
    assert orch.pins[m1] == {("pool-a", "sim-0"), ("pool-a", "sim-1"), ("pool-b", "sim-0")}
    await stub.UnpinModel(A.UnpinModelRequest(model="m1", pool_id="pool-a"))
    assert orch.pins[m1] == {("pool-b", "sim-0")}


async def test_preload_and_evict_are_sent_to_the_pool_and_its_refusal_comes_back(admin):
    orch, stub = admin
    refuse = OrchError("INVALID_ARGUMENT", "this pool manager cannot preload_model yet")
    pool = ScriptedPool(orch, "pool-a", ["sim-0"],
                        answer=lambda cmd: refuse if cmd.HasField("preload_model") else None)
    m1 = orch.catalog.resolve("m1").ref
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PreloadModel(A.PreloadModelRequest(model="m1", pool_id="pool-a"))
    assert OrchError.from_rpc_error(err.value).code == "INVALID_ARGUMENT"
    assert "cannot preload_model yet" in err.value.details()
    await stub.EvictModel(A.EvictModelRequest(model="m1", pool_id="pool-a", from_disk=True))
    sent = [(c.WhichOneof("command"), getattr(c, c.WhichOneof("command"))) for c in pool.commands]
    assert sent == [("preload_model", L.PreloadModelCommand(model_ref=m1)),
                    ("evict_model", L.EvictModelCommand(model_ref=m1, from_disk=True))]
    assert await code_of(stub.PreloadModel(A.PreloadModelRequest(model="nope"))) == \
        "MODEL_NOT_FOUND"
    assert await code_of(stub.EvictModel(A.EvictModelRequest(model="m1", pool_id="pool-z"))) == \
        "POOL_UNAVAILABLE"


async def test_evicting_a_pinned_models_files_is_refused_where_it_is_pinned(admin):
    orch, stub = admin
    pool = ScriptedPool(orch, "pool-a", ["sim-0"])
    await stub.PinModel(A.PinModelRequest(model="m1", pool_id="pool-a"))
    assert await code_of(stub.EvictModel(A.EvictModelRequest(model="m1", pool_id="pool-a"))) == \
        "MODEL_PINNED"
    assert await code_of(stub.EvictModel(A.EvictModelRequest(model="m1"))) == "MODEL_PINNED"
    assert pool.commands == []


async def test_start_worker_sends_one_start_over_the_models_mask_with_its_memory(admin):
    orch, stub = admin
    pool = ScriptedPool(orch, "pool-a", ["sim-0", "sim-1", "sim-2"])
    resp = await stub.StartWorker(A.StartWorkerRequest(model="m2", pool_id="pool-a"))
    [cmd] = [c.start_worker for c in pool.commands]
    assert len(cmd.device_ids) == 2 and list(resp.worker.device_ids) == list(cmd.device_ids)
    assert cmd.memory_estimate_bytes == 3 * GIB
    assert dict(cmd.engine_options) == {"memory_bytes": str(3 * GIB)}
    assert await code_of(stub.StartWorker(A.StartWorkerRequest(
        model="m2", pool_id="pool-a", device_ids=["sim-0"]))) == "INVALID_ARGUMENT"
    assert len(pool.commands) == 1


async def test_a_start_the_pool_refuses_comes_back_with_the_pools_code_and_no_backoff(admin):
    orch, stub = admin
    ScriptedPool(orch, "pool-a", ["sim-0"], answer=lambda cmd: OrchError(
        "INSUFFICIENT_MEMORY", "sim-0: needs 3221225472 bytes, 0 free", param="device_ids"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.StartWorker(A.StartWorkerRequest(model="m1", pool_id="pool-a",
                                                    device_ids=["sim-0"]))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert OrchError.from_rpc_error(err.value).code == "INSUFFICIENT_MEMORY"
    assert orch.registry.workers == {}
    [failed] = facts(orch, E.FACT_KIND_WORKER_FAILED)
    assert failed.attributes["error_code"] == "INSUFFICIENT_MEMORY"
    assert orch._start_failures == {}  # the operator's choice of device, not the model's fault


async def test_a_drained_pool_gets_no_new_work_and_undraining_restores_it(admin):
    from orchestrator.snapshot import Dispatch, StartWorker as Start
    orch, stub = admin
    ScriptedPool(orch, "pool-a", ["sim-0", "sim-1"])
    ScriptedPool(orch, "pool-b", ["sim-0"])
    m1 = orch.catalog.resolve("m1").ref
    w = WorkerRecord("w-a", "pool-a", m1, ("sim-0",), 3 * GIB, phase=WorkerPhase.READY)
    orch.registry.workers[w.worker_id] = w
    job = JobView("j1", m1, Priority.INTERACTIVE, 1, 3 * GIB, 1, "sim")

    def placed() -> list[str]:
        orch.index.add(job)
        try:
            return [(type(d).__name__, getattr(d, "worker_id", "") or d.pool_id)
                    for d in scheduler.decide(orch.snapshot()) if isinstance(d, (Dispatch, Start))]
        finally:
            orch.index.remove(job.job_id)

    assert placed() == [("Dispatch", "w-a")]
    reply = await stub.DrainPool(A.DrainPoolRequest(pool_id="pool-a", drain=True))
    assert reply.pool.state == C.POOL_STATE_DRAINING
    # The pool as GetClusterSnapshot shows it (one builder: PoolRecord.to_proto).
    assert [x.worker_id for x in reply.pool.workers] == ["w-a"]
    assert reply.pool.HasField("last_heartbeat")
    assert all(target != "w-a" and target != "pool-a" for _, target in placed())
    [fact] = facts(orch, E.FACT_KIND_POOL_DRAINING)
    assert fact.pool_id == "pool-a" and fact.attributes["draining"] is True
    await stub.DrainPool(A.DrainPoolRequest(pool_id="pool-a", drain=False))
    assert placed() == [("Dispatch", "w-a")]
    assert await code_of(stub.DrainPool(A.DrainPoolRequest(pool_id="pool-z", drain=True))) == \
        "POOL_UNAVAILABLE"
