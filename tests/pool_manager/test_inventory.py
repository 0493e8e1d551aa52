from types import SimpleNamespace

from common.config import DeviceConfig
from llama_orch.v1 import common_pb2 as C
from pool_manager import inventory


def test_without_a_driver_the_cpu_is_the_device_and_the_inventory_says_why():
    nvml = inventory.Nvml.open()
    if nvml.status == "ok":  # a real GPU machine: the NVML path is exercised instead
        inv = inventory.take(nvml, [], ["hf"])
        assert inv.devices and all(d.kind == C.DEVICE_KIND_GPU for d in inv.devices)
        assert all(d.id.startswith("GPU-") for d in inv.devices)
        return
    inv = inventory.take(nvml, [], ["hf"])
    [cpu] = inv.devices
    assert cpu.id == "cpu" and cpu.kind == C.DEVICE_KIND_CPU
    assert inv.nvml_status and inv.nvml_status != "ok" and inv.nvml_status in cpu.name
    assert cpu.memory_total_bytes == inv.ram_total_bytes > 0
    assert 0 < cpu.memory_free_bytes <= cpu.memory_total_bytes


def test_declared_devices_are_marked_simulated():
    inv = inventory.take(inventory.Nvml("test: no NVML"), [DeviceConfig(id="sim-0", memory_bytes=8 << 30),
                                                           DeviceConfig(id="sim-1", memory_bytes=4 << 30)], [])
    sims = [d for d in inv.devices if d.kind == C.DEVICE_KIND_SIMULATED]
    assert [d.id for d in sims] == ["sim-0", "sim-1"]
    assert all(d.name.startswith("simulated") for d in sims)
    assert sims[0].memory_free_bytes == 8 << 30


def _proc(pid):
    return SimpleNamespace(pid=pid)


def _worker(wid, devices, pid, reported=None):
    info = C.WorkerInfo(worker_id=wid, device_bytes=reported) if reported is not None else None
    return SimpleNamespace(worker_id=wid, device_ids=devices, proc=_proc(pid), info=info)


def test_simulated_memory_in_use_is_what_our_workers_hold_reported_else_estimated():
    claims = {c.worker_id: c for c in (
        inventory.Claim("ready", ("sim-0", "sim-1"), 3 << 30, spawning=False),
        inventory.Claim("loading", ("sim-0",), 2 << 30, spawning=False),
        inventory.Claim("spawning", ("sim-1",), 1 << 30),
        inventory.Claim("exited", ("sim-0",), 4 << 30, spawning=False))}
    workers = [_worker("ready", ("sim-0", "sim-1"), 100, {"sim-0": 1 << 30, "sim-1": 1 << 30}),
               _worker("loading", ("sim-0",), 101)]
    held = inventory.held(workers, claims)
    inv = inventory.take(inventory.Nvml("test: no NVML"),
                         [DeviceConfig(id="sim-0", memory_bytes=8 << 30),
                          DeviceConfig(id="sim-1", memory_bytes=8 << 30)], ["sim"], held)
    sim0, sim1 = (d for d in inv.devices if d.kind == C.DEVICE_KIND_SIMULATED)
    # sim-0: 1 GiB reported by "ready" + the 2 GiB estimate of "loading"; "exited" is gone.
    assert (sim0.memory_used_bytes, sim0.memory_free_bytes) == (3 << 30, 5 << 30)
    assert {(p.pid, p.used_memory_bytes) for p in sim0.processes} == \
        {(100, 1 << 30), (101, 2 << 30)}
    # sim-1: "ready"'s report + "spawning", which has no process yet (so no entry).
    assert (sim1.memory_used_bytes, sim1.memory_free_bytes) == (2 << 30, 6 << 30)
    assert [(p.pid, p.used_memory_bytes) for p in sim1.processes] == [(100, 1 << 30)]


def test_a_full_simulated_device_reports_no_free_memory_not_a_negative_one():
    [dev] = inventory.simulated([DeviceConfig(id="sim-0", memory_bytes=1 << 30)],
                                [inventory.Held("sim-0", 2 << 30, 7)])
    assert (dev.memory_used_bytes, dev.memory_free_bytes) == (2 << 30, 0)


class FakeNvmlLib:
    """pynvml's surface as Nvml.gpus uses it, with GPU 1 fallen off the bus."""

    class NVMLError(Exception):
        pass

    NVML_TEMPERATURE_GPU = 0

    def nvmlDeviceGetCount(self):
        return 3

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetMemoryInfo(self, h):
        if h == 1:
            raise self.NVMLError("GPU is lost")
        return SimpleNamespace(total=80 << 30, used=1 << 30, free=79 << 30)

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-{h}".encode()

    def nvmlDeviceGetName(self, h):
        return b"H100"

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=5)

    def nvmlDeviceGetTemperature(self, h, sensor):
        return 40

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return []


def test_a_gpu_nvml_cannot_read_is_left_out_and_the_others_are_listed():
    gpus = inventory.Nvml("ok", FakeNvmlLib()).gpus()
    assert [(d.id, d.index) for d in gpus] == [("GPU-0", 0), ("GPU-2", 2)]
