"""Preflight in the pool link: memory on every device of the mask, simulated ones too,
counting what this pool's workers hold and starts still in flight; a refusal spawns
nothing."""

import asyncio
from types import SimpleNamespace

import pytest

from common.config import DeviceConfig, PoolConfig
from common.errors import OrchError
from llama_orch.v1 import common_pb2 as C, pool_link_pb2 as L
from pool_manager import inventory
from pool_manager.link import PoolLink

GIB = 1 << 30


class FakeSupervisor:
    """Records spawns; a spawn takes a moment, like starting a process does."""

    def __init__(self):
        self.workers = {}
        self.spawned = []

    def devices_in_use(self):
        return {d for w in self.workers.values() for d in w.device_ids}

    async def spawn(self, cmd, gpu_ids, *args, **kwargs):
        await asyncio.sleep(0.01)
        wp = SimpleNamespace(worker_id=cmd.worker_id, device_ids=tuple(cmd.device_ids),
                             proc=SimpleNamespace(pid=1000 + len(self.spawned)), info=None,
                             stopping=False, model_ref=cmd.model_ref, engine=cmd.engine)
        self.workers[cmd.worker_id] = wp
        self.spawned.append(cmd.worker_id)
        return wp


def link(*sizes_gib):
    cfg = PoolConfig(id="p", devices=[DeviceConfig(id=f"sim-{i}", memory_bytes=s * GIB)
                                      for i, s in enumerate(sizes_gib)])
    return PoolLink(cfg, FakeSupervisor(), inventory.Nvml("test: no NVML"), ["sim"], "127.0.0.1:1")


def start(wid, devices, gib):
    return L.StartWorkerCommand(worker_id=wid, model_ref="file:/m", engine="sim",
                                device_ids=list(devices), memory_estimate_bytes=gib * GIB)


async def refusal(pl, cmd):
    with pytest.raises(OrchError) as err:
        await pl._start(cmd)
    return err.value


async def test_a_start_that_would_overcommit_a_simulated_device_is_refused():
    pl = link(8, 8)
    await pl._start(start("w1", ["sim-0", "sim-1"], 5))
    err = await refusal(pl, start("w2", ["sim-1"], 4))  # 3 GiB left on sim-1
    assert (err.code, err.param) == ("INSUFFICIENT_MEMORY", "device_ids")
    assert "sim-1" in err.message
    assert pl.supervisor.spawned == ["w1"]
    await pl._start(start("w3", ["sim-0"], 3))  # exactly what is left fits


async def test_the_mask_is_checked_on_every_device():
    pl = link(8, 2)
    err = await refusal(pl, start("w1", ["sim-0", "sim-1"], 3))
    assert err.code == "INSUFFICIENT_MEMORY" and "sim-1" in err.message
    assert pl.supervisor.spawned == []


async def test_two_starts_in_flight_cannot_share_the_same_room():
    pl = link(8)
    results = await asyncio.gather(pl._start(start("w1", ["sim-0"], 5)),
                                   pl._start(start("w2", ["sim-0"], 5)), return_exceptions=True)
    refused = [r for r in results if isinstance(r, OrchError)]
    assert [r.code for r in refused] == ["INSUFFICIENT_MEMORY"]
    assert len(pl.supervisor.spawned) == 1


async def test_a_worker_that_reported_counts_at_its_report_and_an_exited_one_not_at_all():
    pl = link(8)
    await pl._start(start("w1", ["sim-0"], 6))
    wp = pl.supervisor.workers["w1"]
    wp.info = C.WorkerInfo(worker_id="w1", device_bytes={"sim-0": 1 * GIB})  # ready: uses 1
    await pl._start(start("w2", ["sim-0"], 7))
    del pl.supervisor.workers["w1"]  # exited
    inv = pl.inventory()
    [sim] = [d for d in inv.devices if d.kind == C.DEVICE_KIND_SIMULATED]
    assert (sim.memory_used_bytes, [p.pid for p in sim.processes]) == (7 * GIB, [1001])


# ---- starts in flight are reserved: one worker per GPU and per worker id; a stop wins ----

class GpuLink(PoolLink):
    """One 80 GiB GPU as NVML reports it: its free memory does not count our claims."""

    def inventory(self):
        inv = C.Inventory(engines=self.engines)
        inv.devices.add(id="GPU-a", kind=C.DEVICE_KIND_GPU, memory_total_bytes=80 * GIB,
                        memory_free_bytes=80 * GIB)
        return inv


def gpu_link():
    return GpuLink(PoolConfig(id="p"), FakeSupervisor(), inventory.Nvml("test"), ["sim"],
                   "127.0.0.1:1")


@pytest.mark.parametrize("second, code", [("w2", "DEVICE_MASK_OVERLAP"), ("w1", "INVALID_ARGUMENT")],
                         ids=["another-worker", "the-same-worker-again"])
async def test_two_starts_in_flight_on_one_gpu_spawn_one_worker(second, code):
    pl = gpu_link()
    results = await asyncio.gather(pl._start(start("w1", ["GPU-a"], 1)),
                                   pl._start(start(second, ["GPU-a"], 1)), return_exceptions=True)
    assert pl.supervisor.spawned == ["w1"]
    assert [r.code for r in results if isinstance(r, OrchError)] == [code]
    assert not pl._starting  # reservations end with their start


class SlowModels:
    """A start that must fetch its model first; the fetch ends when `fetched` is set."""

    def __init__(self):
        self.fetched = asyncio.Event()
        self.released_refs = []

    async def for_worker(self, ref):
        await self.fetched.wait()
        return "/models/m", "pinned:" + ref

    def released(self, ref):
        self.released_refs.append(ref)


async def test_a_stop_while_the_model_is_fetched_wins_and_the_worker_never_spawns():
    pl = gpu_link()
    pl.models = SlowModels()
    starting = asyncio.create_task(pl._execute(L.PoolCommand(command_id="c1",
                                                              start_worker=start("w1", ["GPU-a"], 1))))
    await asyncio.sleep(0.05)
    await pl._execute(L.PoolCommand(command_id="c2", stop_worker=L.StopWorkerCommand(worker_id="w1")))
    pl.models.fetched.set()
    await starting
    out = pl._drain()
    results = {m.result.command_id: m.result.ok for m in out if m.WhichOneof("message") == "result"}
    exits = [m.worker_exited for m in out if m.WhichOneof("message") == "worker_exited"]
    assert results == {"c1": True, "c2": True}
    assert pl.supervisor.spawned == [] and "w1" not in pl.supervisor.workers
    assert [(e.worker_id, e.expected) for e in exits] == [("w1", True)]  # what the stop waits for
    assert pl.models.released_refs == ["pinned:file:/m"]  # fetched, but nothing runs from it


async def test_a_stop_while_the_process_is_spawned_stops_it_right_after():
    pl = gpu_link()
    stopped = []

    async def stop(worker_id, grace_s=None, force=False):
        stopped.append(worker_id)
        return pl.supervisor.workers.pop(worker_id, None) is not None
    pl.supervisor.stop = stop
    starting = asyncio.create_task(pl._start(start("w1", ["GPU-a"], 1)))
    while not pl._starting.get("w1") or not pl._starting["w1"].gpus:
        await asyncio.sleep(0)  # preflight passed; the spawn (0.01 s) is under way
    assert await pl._stop(L.StopWorkerCommand(worker_id="w1"))
    await starting
    assert pl.supervisor.spawned == ["w1"] and stopped == ["w1"]
    assert "w1" not in pl.supervisor.workers
