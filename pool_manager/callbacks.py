"""WorkerCallbackService: this pool's own workers report ready or failed here."""

from __future__ import annotations

from collections.abc import Callable

from llama_orch.v1 import common_pb2, pool_link_pb2, worker_callback_pb2, worker_callback_pb2_grpc
from pool_manager.supervisor import Supervisor


class CallbackServicer(worker_callback_pb2_grpc.WorkerCallbackServiceServicer):
    def __init__(self, supervisor: Supervisor, send: Callable[[pool_link_pb2.ConnectRequest], None]):
        self.supervisor = supervisor
        self.send = send

    async def ReportReady(self, request, context):
        wp = self.supervisor.workers.get(request.worker_id)
        if wp is None:
            # Not a worker this pool spawned (or already gone): ignore, say nothing upward.
            return worker_callback_pb2.ReportReadyResponse()
        wp.ready, wp.endpoint = True, request.endpoint
        info = common_pb2.WorkerInfo(
            worker_id=request.worker_id, model_ref=request.model_ref, engine=request.engine,
            device_ids=list(wp.device_ids), state=common_pb2.WORKER_STATE_READY,
            endpoint=request.endpoint, device_bytes=request.device_bytes, pid=request.pid,
            slots=request.slots or 1, engine_version=request.engine_version,
            model_digest=request.model_digest)
        wp.info = info
        if wp.stopping:
            # Told to stop before it was ready: the orchestrator must not send it jobs.
            # Its exit follows; the record above is only for the pool's own view.
            return worker_callback_pb2.ReportReadyResponse()
        self.send(pool_link_pb2.ConnectRequest(worker_ready=pool_link_pb2.WorkerReady(
            worker=info, context_length=request.context_length, load_ms=request.load_ms)))
        return worker_callback_pb2.ReportReadyResponse()

    async def ReportFailure(self, request, context):
        wp = self.supervisor.workers.get(request.worker_id)
        if wp is not None:
            wp.reported_error = request.error
        return worker_callback_pb2.ReportFailureResponse()
