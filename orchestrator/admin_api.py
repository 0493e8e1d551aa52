"""AdminService: operator actions. Each one shows up as a fact.

Calls not implemented yet answer UNIMPLEMENTED (the generated base class), never a
fake success.
"""

from __future__ import annotations

import uuid

from common.errors import OrchError
from llama_orch.v1 import admin_pb2, admin_pb2_grpc, pool_link_pb2
from orchestrator.client_api import unary
from orchestrator.core import Orchestrator
from orchestrator.registry import WorkerRecord


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, orch: Orchestrator):
        self.orch = orch

    @unary
    async def StartWorker(self, request, context):
        orch = self.orch
        model = orch.catalog.resolve(request.model)
        pool = orch.registry.pools.get(request.pool_id) if request.pool_id else next(
            iter(orch.registry.pools.values()), None)
        if pool is None:
            raise OrchError("POOL_UNAVAILABLE", f"no pool {request.pool_id!r}", param="pool_id")
        devices = tuple(request.device_ids) or (pool.inventory.devices[0].id,)
        known = {d.id for d in pool.inventory.devices}
        if unknown := [d for d in devices if d not in known]:
            raise OrchError("DEVICE_NOT_FOUND", f"unknown devices {unknown}", param="device_ids")
        worker = WorkerRecord("w-" + uuid.uuid4().hex[:12], pool.pool_id, model.ref, devices,
                              model.memory_estimate_bytes)
        orch.registry.workers[worker.worker_id] = worker
        await orch._start_worker(worker)
        if worker.worker_id not in orch.registry.workers:
            raise OrchError("WORKER_START_FAILED", f"pool {pool.pool_id} refused the start")
        return admin_pb2.StartWorkerResponse(worker=worker.to_proto())

    @unary
    async def StopWorker(self, request, context):
        w = self.orch.registry.workers.get(request.worker_id)
        if w is None:
            raise OrchError("NOT_FOUND", f"no worker {request.worker_id!r}", param="worker_id")
        pool = self.orch.registry.pools.get(w.pool_id)
        if pool is None:
            raise OrchError("POOL_UNAVAILABLE", f"pool {w.pool_id} is not connected")
        result = await pool.command(stop_worker=pool_link_pb2.StopWorkerCommand(
            worker_id=w.worker_id, force=request.force))
        if not result.ok:
            raise OrchError.from_detail(result.error)
        return admin_pb2.StopWorkerResponse()
