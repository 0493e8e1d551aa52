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
