"""Live state of pools and workers, as the pool links report it.

Owned by the orchestrator's event loop (one writer). Pools are known by id; a pool
that reconnects replaces its old link. Workers are announced by their pool manager;
the orchestrator dials a worker only after its pool announced it READY.

A worker runs up to `slots` jobs at once (continuous batching; 1 unless its ready
report says more). Its slots are claimed in pairs: `reserve(job_id)` when a dispatch is
carried out, `unreserve(job_id)` when the job's relay ends (idempotent, and safe for a
job that never reserved). Phase follows the count while the worker serves: READY while
a slot is free, BUSY when every slot is taken. A worker is *idle* when it is READY and
runs no job; only idle workers are evicted.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

from common import grpc_server
from llama_orch.v1 import common_pb2, pool_link_pb2, worker_pb2_grpc
from orchestrator.snapshot import DeviceView, PoolView, WorkerView
from orchestrator.types import WorkerPhase

_KINDS = {common_pb2.DEVICE_KIND_GPU: "gpu", common_pb2.DEVICE_KIND_CPU: "cpu",
          common_pb2.DEVICE_KIND_SIMULATED: "simulated"}


@dataclass(eq=False)
class WorkerRecord:
    worker_id: str
    pool_id: str
    model_ref: str
    device_ids: tuple[str, ...]
    memory_estimate: int
    phase: WorkerPhase = WorkerPhase.STARTING
    endpoint: str = ""
    device_bytes: dict[str, int] = field(default_factory=dict)
    pid: int = 0
    engine: str = "hf"
    engine_version: str = ""
    model_digest: str = ""
    started_at: float = field(default_factory=time.time)
    last_used: float = 0.0
    slots: int = 1  # jobs it runs at once, from its ready report (WorkerInfo.slots)
    jobs: set[str] = field(default_factory=set)  # ids of the jobs in its slots
    _stub: worker_pb2_grpc.WorkerServiceStub | None = None
    _channel: object = None

    def stub(self) -> worker_pb2_grpc.WorkerServiceStub:
        if self._stub is None:
            self._channel = grpc_server.channel(self.endpoint)
            self._stub = worker_pb2_grpc.WorkerServiceStub(self._channel)
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None

    @property
    def free_slots(self) -> int:
        return max(0, self.slots - len(self.jobs)) if self.phase is WorkerPhase.READY else 0

    @property
    def idle(self) -> bool:
        return self.phase is WorkerPhase.READY and not self.jobs

    def reserve(self, job_id: str) -> None:
        """Put the job in a free slot (the caller checked there is one); BUSY when full."""
        self.jobs.add(job_id)
        if self.phase is WorkerPhase.READY and len(self.jobs) >= self.slots:
            self.phase = WorkerPhase.BUSY

    def unreserve(self, job_id: str) -> None:
        """Free the job's slot: a full worker is READY again. Idempotent; a worker that
        is STOPPING or GONE keeps its phase."""
        if job_id not in self.jobs:
            return
        self.jobs.discard(job_id)
        self.last_used = time.time()
        if self.phase is WorkerPhase.BUSY and len(self.jobs) < self.slots:
            self.phase = WorkerPhase.READY

    def bytes_on(self, device_id: str) -> int:
        return self.device_bytes.get(device_id, self.memory_estimate)

    def to_proto(self) -> common_pb2.WorkerInfo:
        state = {WorkerPhase.STARTING: common_pb2.WORKER_STATE_STARTING,
                 WorkerPhase.READY: common_pb2.WORKER_STATE_READY,
                 WorkerPhase.BUSY: common_pb2.WORKER_STATE_BUSY,
                 WorkerPhase.STOPPING: common_pb2.WORKER_STATE_STOPPING,
                 WorkerPhase.GONE: common_pb2.WORKER_STATE_STOPPED}[self.phase]
        return common_pb2.WorkerInfo(
            worker_id=self.worker_id, pool_id=self.pool_id, model_ref=self.model_ref,
            engine=self.engine, device_ids=list(self.device_ids), state=state,
            endpoint=self.endpoint, device_bytes=self.device_bytes, pid=self.pid,
            active_jobs=len(self.jobs), slots=self.slots, engine_version=self.engine_version,
            model_digest=self.model_digest)


@dataclass(eq=False)
class PoolRecord:
    pool_id: str
    inventory: common_pb2.Inventory
    address: str = ""
    available: bool = True
    draining: bool = False
    last_heartbeat: float = field(default_factory=time.monotonic)
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    pending: dict[str, asyncio.Future] = field(default_factory=dict)
    link_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    async def command(self, **command: object) -> pool_link_pb2.CommandResult:
        """Send one command down the link and wait for its result."""
        cid = "cmd-" + uuid.uuid4().hex[:16]
        fut = asyncio.get_running_loop().create_future()
        self.pending[cid] = fut
        await self.outbox.put(pool_link_pb2.PoolCommand(command_id=cid, **command))
        try:
            return await fut
        finally:
            self.pending.pop(cid, None)

    def fail_pending(self, reason: str) -> None:
        from common.errors import OrchError
        for fut in self.pending.values():
            if not fut.done():
                fut.set_result(pool_link_pb2.CommandResult(
                    ok=False, error=OrchError("POOL_UNAVAILABLE", reason).to_detail()))
        self.pending.clear()


class Registry:
    def __init__(self) -> None:
        self.pools: dict[str, PoolRecord] = {}
        self.workers: dict[str, WorkerRecord] = {}

    def workers_of(self, pool_id: str) -> list[WorkerRecord]:
        return [w for w in self.workers.values() if w.pool_id == pool_id]

    def pool_views(self) -> list[PoolView]:
        """Every pool's view, grouping workers by pool in one pass (not pools x workers)."""
        by_pool: dict[str, list[WorkerRecord]] = {}
        for w in self.workers.values():
            by_pool.setdefault(w.pool_id, []).append(w)
        return [self.pool_view(p, by_pool.get(p.pool_id, [])) for p in self.pools.values()]

    def pool_view(self, pool: PoolRecord, workers: list[WorkerRecord] | None = None) -> PoolView:
        """The pool's devices with free memory by the one accounting rule (DeviceView):
        the inventory's `used` includes our workers, so what the pool attributes to them
        is taken out of it, and each worker then counts once, at what it holds or will."""
        on: dict[str, list[WorkerRecord]] = {}  # device -> our workers with it in their mask
        pids: set[int] = set()
        for w in self.workers_of(pool.pool_id) if workers is None else workers:
            if w.phase is WorkerPhase.GONE:
                continue
            pids.add(w.pid)
            for dev in w.device_ids:
                on.setdefault(dev, []).append(w)
        pids.discard(0)
        devices = []
        inv = pool.inventory
        for d in inv.devices:
            if d.kind == common_pb2.DEVICE_KIND_CPU:
                total = d.memory_total_bytes
                used = total - (inv.ram_available_bytes or d.memory_free_bytes)
            else:
                total, used = d.memory_total_bytes, d.memory_used_bytes
            ours = on.get(d.id, ())
            seen = held = 0
            if ours:
                listed = {p.pid for p in d.processes}
                seen = sum(p.used_memory_bytes for p in d.processes if p.pid in pids)
                for w in ours:
                    held += w.bytes_on(d.id)
                    if w.pid not in listed:  # no per-process figure: take its own report
                        seen += w.device_bytes.get(d.id, 0)
            external = max(0, used - seen)
            devices.append(DeviceView(d.id, total, total - external - max(held, seen),
                                      _KINDS.get(d.kind, "gpu")))
        return PoolView(pool.pool_id, pool.available and not pool.draining, tuple(devices),
                        tuple(inv.engines) or ("hf",))

    def worker_views(self) -> tuple[WorkerView, ...]:
        return tuple(WorkerView(w.worker_id, w.pool_id, w.model_ref, w.phase, w.device_ids,
                                w.last_used, max((w.bytes_on(d) for d in w.device_ids), default=0),
                                w.slots, len(w.jobs))
                     for w in self.workers.values() if w.phase is not WorkerPhase.GONE
                     and self.pools.get(w.pool_id) is not None
                     and self.pools[w.pool_id].available)
