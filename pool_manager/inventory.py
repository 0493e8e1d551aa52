"""Device inventory: NVML when a driver is present, else the CPU, plus declared devices.

NVML identifies GPUs by UUID (it ignores CUDA_VISIBLE_DEVICES). Without NVML the CPU
is offered as a device with RAM as its memory, and `nvml_status` says why. Devices
declared in config are always marked simulated, never mistaken for hardware.

A simulated device has no driver to ask what is in use, so the pool accounts for it:
used = what this pool's workers hold on it (`Held`: the bytes a worker reported when
ready, else its start command's estimate), one process entry per worker, like NVML's
per-process list. The orchestrator takes those entries out of `used` (they are ours)
and counts each worker once (see orchestrator.snapshot.DeviceView).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from common import log
from common.config import DeviceConfig
from llama_orch.v1 import common_pb2


@dataclass(frozen=True, slots=True)
class Held:
    """Memory one of this pool's workers holds, or will hold, on one device."""
    device_id: str
    bytes: int
    pid: int = 0  # 0 while its process is being spawned


@dataclass(slots=True)
class Claim:
    """What a start command asked for: `bytes` on every device of its mask. It counts
    while its worker runs, and before that while its process is being spawned (so two
    starts in flight cannot both take the same room)."""
    worker_id: str
    device_ids: tuple[str, ...]
    bytes: int
    spawning: bool = True  # cleared once the spawn returned or failed


def held(workers: Iterable, claims: Mapping[str, Claim]) -> list[Held]:
    """What the supervisor's workers (WorkerProcess records) hold, device by device:
    reported bytes once ready, else the claim's estimate; plus claims still spawning."""
    out: list[Held] = []
    running = set()
    for w in workers:
        running.add(w.worker_id)
        claim = claims.get(w.worker_id)
        reported = w.info.device_bytes if w.info is not None else {}
        for dev in w.device_ids:
            size = reported.get(dev, claim.bytes if claim is not None else 0)
            if size:
                out.append(Held(dev, size, w.proc.pid))
    for c in claims.values():
        if c.worker_id not in running and c.spawning:
            out.extend(Held(dev, c.bytes) for dev in c.device_ids)
    return out

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
            try:
                h = nv.nvmlDeviceGetHandleByIndex(i)
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                dev = common_pb2.Device(
                    id=_text(nv.nvmlDeviceGetUUID(h)), index=i, kind=common_pb2.DEVICE_KIND_GPU,
                    name=_text(nv.nvmlDeviceGetName(h)), memory_total_bytes=mem.total,
                    memory_used_bytes=mem.used, memory_free_bytes=mem.free)
            except nv.NVMLError as exc:
                # A GPU fallen off the bus (or lost to an Xid error) is left out; the
                # others are still reported, and the orchestrator sees it gone.
                log.emit("pool_manager", "pool.gpu_unreadable", f"GPU {i}: {exc}",
                         level="warning", index=i)
                continue
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


def simulated(declared: list[DeviceConfig], holdings: Iterable[Held] = (),
              first_index: int = 0) -> list[common_pb2.Device]:
    """The declared devices, their memory in use being what this pool's workers hold."""
    devices = [common_pb2.Device(id=d.id, index=first_index + i,
                                 kind=common_pb2.DEVICE_KIND_SIMULATED,
                                 name=f"simulated: {d.name}", memory_total_bytes=d.memory_bytes)
               for i, d in enumerate(declared)]
    by_id = {d.id: d for d in devices}
    for h in holdings:
        dev = by_id.get(h.device_id)
        if dev is not None:
            dev.memory_used_bytes += h.bytes
            if h.pid:
                dev.processes.add(pid=h.pid, used_memory_bytes=h.bytes)
    for dev in devices:
        dev.memory_free_bytes = max(0, dev.memory_total_bytes - dev.memory_used_bytes)
    return devices


def take(nvml: Nvml, declared: list[DeviceConfig], engines: list[str],
         holdings: Iterable[Held] = ()) -> common_pb2.Inventory:
    """The pool's devices now. `holdings`: what its workers hold (simulated devices)."""
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
    inv.devices.extend(simulated(declared, holdings, first_index=len(gpus) + 1))
    return inv
