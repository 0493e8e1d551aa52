"""Device inventory: NVML when a driver is present, else the CPU, plus declared devices.

NVML identifies GPUs by UUID (it ignores CUDA_VISIBLE_DEVICES). Without NVML the CPU
is offered as a device with RAM as its memory, and `nvml_status` says why. Devices
declared in config are always marked simulated, never mistaken for hardware.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from common.config import DeviceConfig
from llama_orch.v1 import common_pb2

CPU_DEVICE_ID = "cpu"


@dataclass
class Nvml:
    """An NVML session; `status` is "ok" or the reason it is unavailable."""
    status: str
    lib: object = None

    @classmethod
    def open(cls) -> "Nvml":
        try:
            import pynvml
        except ImportError:
            return cls("nvidia-ml-py is not installed")
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError_LibraryNotFound:
            return cls("NVML library not found (no NVIDIA driver installed)")
        except pynvml.NVMLError_DriverNotLoaded:
            return cls("NVIDIA driver not loaded")
        except pynvml.NVMLError as exc:
            return cls(f"NVML unavailable: {exc}")
        return cls("ok", pynvml)

    def close(self) -> None:
        if self.lib is not None:
            self.lib.nvmlShutdown()
            self.lib = None

    def gpus(self) -> list[common_pb2.Device]:
        nv = self.lib
        if nv is None:
            return []
        out = []
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            dev = common_pb2.Device(
                id=_text(nv.nvmlDeviceGetUUID(h)), index=i, kind=common_pb2.DEVICE_KIND_GPU,
                name=_text(nv.nvmlDeviceGetName(h)), memory_total_bytes=mem.total,
                memory_used_bytes=mem.used, memory_free_bytes=mem.free)
            try:
                util = nv.nvmlDeviceGetUtilizationRates(h)
                dev.utilization_percent = float(util.gpu)
                dev.temperature_c = float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))
            except nv.NVMLError:
                pass  # some boards (and MIG slices) do not report these
            try:
                for p in nv.nvmlDeviceGetComputeRunningProcesses(h):
                    dev.processes.add(pid=p.pid, used_memory_bytes=p.usedGpuMemory or 0)
            except nv.NVMLError:
                pass
            out.append(dev)
        return out

    def driver_version(self) -> str:
        if self.lib is None:
            return ""
        try:
            return _text(self.lib.nvmlSystemGetDriverVersion())
        except self.lib.NVMLError:
            return ""


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def meminfo() -> tuple[int, int]:
    """(total, available) RAM bytes from /proc/meminfo."""
    fields: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                fields[key] = int(rest.split()[0]) * 1024
    except OSError:
        return 0, 0
    return fields.get("MemTotal", 0), fields.get("MemAvailable", fields.get("MemFree", 0))


def take(nvml: Nvml, declared: list[DeviceConfig], engines: list[str]) -> common_pb2.Inventory:
    total, available = meminfo()
    inv = common_pb2.Inventory(
        nvml_status=nvml.status, hostname=socket.gethostname(), cpu_count=os.cpu_count() or 1,
        ram_total_bytes=total, ram_available_bytes=available, engines=engines,
        driver_version=nvml.driver_version())
    gpus = nvml.gpus()
    inv.devices.extend(gpus)
    if not gpus:
        inv.devices.add(id=CPU_DEVICE_ID, index=0, kind=common_pb2.DEVICE_KIND_CPU,
                        name=f"CPU ({os.cpu_count()} cores; {nvml.status})",
                        memory_total_bytes=total, memory_used_bytes=total - available,
                        memory_free_bytes=available)
    for i, d in enumerate(declared):
        inv.devices.add(id=d.id, index=len(gpus) + 1 + i, kind=common_pb2.DEVICE_KIND_SIMULATED,
                        name=f"simulated: {d.name}", memory_total_bytes=d.memory_bytes,
                        memory_used_bytes=0, memory_free_bytes=d.memory_bytes)
    return inv
