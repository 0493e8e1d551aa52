"""AdminService: operator actions. Each one shows up as a fact.

Calls not implemented yet answer UNIMPLEMENTED (the generated base class), never a
fake success. Errors carry stable codes: MODEL_NOT_FOUND (not in the catalog),
POOL_UNAVAILABLE (no such pool connected), DEVICE_NOT_FOUND (not a device of the pool,
or too few for the model's mask), MODEL_PINNED (evicting a pinned model's files),
INVALID_ARGUMENT (a malformed request), and whatever a pool answers a command with
(e.g. INSUFFICIENT_MEMORY from a start's preflight), passed through unchanged.

Pins live in `Orchestrator.pins` (model ref -> {(pool, device)}), in memory only: a
pinned model's workers on its pinned devices are never evicted (scheduler, validator).
"""

from __future__ import annotations

import asyncio
import uuid

from google.protobuf import timestamp_pb2

from common.errors import OrchError
from llama_orch.v1 import admin_pb2, admin_pb2_grpc, events_pb2 as F, pool_link_pb2
from orchestrator.client_api import unary
from orchestrator.core import Orchestrator
from orchestrator.registry import PoolRecord, WorkerRecord


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, orch: Orchestrator):
        self.orch = orch

    def _pool(self, pool_id: str) -> PoolRecord:
        pool = self.orch.registry.pools.get(pool_id)
        if pool is None:
            raise OrchError("POOL_UNAVAILABLE", f"no pool {pool_id!r} is connected",
                            param="pool_id")
        return pool

    def _pools(self, pool_id: str) -> list[PoolRecord]:
        """The named pool, or every connected one when the request names none."""
        return [self._pool(pool_id)] if pool_id else list(self.orch.registry.pools.values())

    @staticmethod
    def _devices(pool: PoolRecord, device_ids) -> tuple[str, ...]:
        devices = tuple(device_ids)
        if len(set(devices)) != len(devices):
            raise OrchError("INVALID_ARGUMENT", f"device_ids repeat a device: {list(devices)}",
                            param="device_ids")
        known = {d.id for d in pool.inventory.devices}
        if unknown := [d for d in devices if d not in known]:
            raise OrchError("DEVICE_NOT_FOUND", f"pool {pool.pool_id} has no devices {unknown}",
                            param="device_ids")
        return devices

    # ---- pins ------------------------------------------------------------------------

    @unary
    async def PinModel(self, request, context):
        """Pin the model to devices of one pool (none named: all of them), replacing its
        earlier pin on that pool. Its workers there are never evicted."""
        orch = self.orch
        model = orch.catalog.resolve(request.model)
        if not request.pool_id:
            raise OrchError("INVALID_ARGUMENT", "pool_id is required", param="pool_id")
        pool = self._pool(request.pool_id)
        devices = self._devices(pool, request.device_ids) or tuple(
            d.id for d in pool.inventory.devices)
        keys = {k for k in orch.pins.get(model.ref, ()) if k[0] != pool.pool_id}
        orch.pins[model.ref] = keys | {(pool.pool_id, d) for d in devices}
        orch.facts.publish(F.FACT_KIND_MODEL_PINNED, f"pinned to {', '.join(devices)}",
                           pool_id=pool.pool_id, model_ref=model.ref, device_ids=list(devices))
        orch.wake()
        created = timestamp_pb2.Timestamp()
        created.GetCurrentTime()
        return admin_pb2.PinModelResponse(pin=admin_pb2.Pin(
            model_ref=model.ref, pool_id=pool.pool_id, device_ids=list(devices),
            created_at=created))

    @unary
    async def UnpinModel(self, request, context):
        """Drop the model's pin on one pool (none named: on every pool). Idempotent; the
        pool need not be connected."""
        orch = self.orch
        model = orch.catalog.resolve(request.model)
        keys = orch.pins.get(model.ref, set())
        kept = {k for k in keys if request.pool_id and k[0] != request.pool_id}
        if kept:
            orch.pins[model.ref] = kept
        else:
            orch.pins.pop(model.ref, None)
        dropped = keys - kept
        for pool_id in sorted({p for p, _ in dropped}):
            devices = sorted(d for p, d in dropped if p == pool_id)
            orch.facts.publish(F.FACT_KIND_MODEL_UNPINNED, f"unpinned from {', '.join(devices)}",
                               pool_id=pool_id, model_ref=model.ref, device_ids=devices)
        if dropped:
            orch.wake()  # what was pinned may be evicted now, for queued work
        return admin_pb2.UnpinModelResponse()

    # ---- workers -----------------------------------------------------------------------

    @unary
    async def StartWorker(self, request, context):
        """Start one worker over the model's mask: the named devices, else the pool's
        `device_count` devices with the most free memory. The pool's preflight decides
        whether it fits; its refusal comes back with the pool's code."""
        orch = self.orch
        model = orch.catalog.resolve(request.model)
        pool = self._pool(request.pool_id) if request.pool_id else next(
            iter(orch.registry.pools.values()), None)
        if pool is None:
            raise OrchError("POOL_UNAVAILABLE", "no pool is connected", param="pool_id")
        devices = self._devices(pool, request.device_ids)
        k = model.device_count
        if not devices:
            ranked = sorted(orch.registry.pool_view(pool).devices,
                            key=lambda d: (-d.free_bytes, d.device_id))
            devices = tuple(d.device_id for d in ranked[:k])
        if len(devices) != k:
            code = "DEVICE_NOT_FOUND" if not request.device_ids else "INVALID_ARGUMENT"
            raise OrchError(code, f"{model.name} runs on {k} device(s) per worker (tensor "
                            f"parallelism); got {len(devices)} on pool {pool.pool_id}",
                            param="device_ids")
        worker = WorkerRecord("w-" + uuid.uuid4().hex[:12], pool.pool_id, model.ref, devices,
                              model.memory_estimate_bytes)
        orch.registry.workers[worker.worker_id] = worker
        err = await orch._start_worker(worker, dict(request.engine_options), by_operator=True)
        if err is not None:
            raise err
        return admin_pb2.StartWorkerResponse(worker=worker.to_proto())

    @unary
    async def StopWorker(self, request, context):
        w = self.orch.registry.workers.get(request.worker_id)
        if w is None:
            raise OrchError("NOT_FOUND", f"no worker {request.worker_id!r}", param="worker_id")
        pool = self._pool(w.pool_id)
        result = await pool.command(stop_worker=pool_link_pb2.StopWorkerCommand(
            worker_id=w.worker_id, force=request.force))
        if not result.ok:
            raise OrchError.from_detail(result.error)
        return admin_pb2.StopWorkerResponse()

    # ---- model files ---------------------------------------------------------------------

    @unary
    async def PreloadModel(self, request, context):
        """Ask the pool (none named: every pool) to keep the model's files in RAM."""
        model = self.orch.catalog.resolve(request.model)
        await self._command(self._pools(request.pool_id), model.ref, "preload", preload_model=
                            pool_link_pb2.PreloadModelCommand(model_ref=model.ref))
        return admin_pb2.PreloadModelResponse()

    @unary
    async def EvictModel(self, request, context):
        """Ask the pool (none named: every pool) to drop the model's files from RAM (and
        from its disk cache with from_disk). Refused where the model is pinned."""
        model = self.orch.catalog.resolve(request.model)
        pools = self._pools(request.pool_id)
        pinned = {p for p, _ in self.orch.pins.get(model.ref, ())}
        if on := sorted(pinned & {p.pool_id for p in pools}):
            raise OrchError("MODEL_PINNED", f"{model.name} is pinned on {', '.join(on)}; "
                            "unpin it first", param="model")
        await self._command(pools, model.ref, "evict_model", evict_model=
                            pool_link_pb2.EvictModelCommand(model_ref=model.ref,
                                                            from_disk=request.from_disk))
        return admin_pb2.EvictModelResponse()

    async def _command(self, pools: list[PoolRecord], model_ref: str, action: str,
                       **command) -> None:
        """Send one command to each pool; raise the first pool's refusal."""
        if not pools:
            raise OrchError("POOL_UNAVAILABLE", "no pool is connected", param="pool_id")
        for pool in pools:
            self.orch.facts.publish(F.FACT_KIND_DECISION_TAKEN, "operator request",
                                    pool_id=pool.pool_id, model_ref=model_ref, action=action)
        results = await asyncio.gather(*(pool.command(**command) for pool in pools))
        for result in results:
            if not result.ok:
                raise OrchError.from_detail(result.error)
