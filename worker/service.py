"""WorkerService: one slot, a cancel handle for the job in it, and worker status.

The slot is taken and released without an await in between, so two Execute calls
can never both pass the busy check. It is released just before the job's terminal
event is sent, so a caller that has seen `end`, `error` or CANCELLED can dispatch the
next job at once without meeting WORKER_BUSY; and it is released too when the caller
goes away (the RPC is cancelled), which also stops generation.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

import grpc
from google.protobuf import timestamp_pb2

from common.errors import OrchError
from common.log import emit
from llama_orch.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from worker.engines.base import Engine
from worker.job import Control, execute

SERVICE_NAME = "llama_orch.v1.WorkerService"


@dataclass
class Identity:
    """Who this worker is, as reported in ReportReady and GetStatus."""

    worker_id: str
    model_ref: str
    device_ids: list[str]
    endpoint: str = ""
    pid: int = field(default_factory=os.getpid)
    started_at: float = field(default_factory=time.time)


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _terminal(event: worker_pb2.ExecuteResponse, choices: int) -> bool:
    kind = event.WhichOneof("event")
    return kind == "error" or (kind == "end" and event.end.choice_index == choices - 1)


class WorkerService(worker_pb2_grpc.WorkerServiceServicer):
    """Serves Execute, Cancel and GetStatus over one engine with one slot."""

    slots = 1

    def __init__(self, engine: Engine, identity: Identity):
        self.engine = engine
        self.identity = identity
        self._running: Control | None = None
        self._last_used = identity.started_at

    async def Execute(self, request: worker_pb2.ExecuteRequest, context: grpc.aio.ServicerContext
                      ) -> AsyncIterator[worker_pb2.ExecuteResponse]:
        if self._running is not None:
            emit("worker", "worker.busy", level="warning", job_id=request.job_id,
                 running_job_id=self._running.job_id, worker_id=self.identity.worker_id)
            await OrchError("WORKER_BUSY", f"worker {self.identity.worker_id} is running job "
                                           f"{self._running.job_id}").abort(context)
        deadline = time.monotonic() + request.deadline_ms / 1000 if request.deadline_ms else None
        control = self._running = Control(request.job_id, deadline)
        log = {"job_id": request.job_id, "correlation_id": request.correlation_id,
               "worker_id": self.identity.worker_id}
        emit("worker", "worker.job_started", attempt=request.attempt, **log)
        choices, outcome, tokens = max(1, request.sampling.n), "caller went away", 0
        started = time.monotonic()
        try:
            # aclosing: when the caller goes away, closing the job's generator closes
            # the engine's, which stops generation.
            async with aclosing(execute(self.engine, request, control,
                                        self.identity.model_ref)) as events:
                async for event in events:
                    tokens += len(event.tokens.token_ids)
                    if _terminal(event, choices):
                        self._release(control)
                        outcome = (f"error {OrchError.from_detail(event.error).code}: "
                                   f"{event.error.message}" if event.HasField("error")
                                   else event.end.finish_reason)
                    yield event
        finally:
            self._release(control)
            emit("worker", "worker.job_finished", outcome=outcome, tokens=tokens,
                 ms=round((time.monotonic() - started) * 1000, 1),
                 level="info" if outcome in ("stop", "length") else "warning", **log)

    def _release(self, control: Control) -> None:
        if self._running is control:
            self._running = None
            self._last_used = time.time()

    async def Cancel(self, request: worker_pb2.CancelRequest,
                     context: grpc.aio.ServicerContext) -> worker_pb2.CancelResponse:
        running = self._running
        if running is None or running.job_id != request.job_id:
            return worker_pb2.CancelResponse(was_running=False)
        running.cancel()
        emit("worker", "worker.job_cancel", job_id=request.job_id,
             worker_id=self.identity.worker_id)
        return worker_pb2.CancelResponse(was_running=True)

    def cancel_all(self, reason: str) -> None:
        """Shutdown: the running job ends with CANCELLED at its next token."""
        if self._running is not None:
            self._running.cancel(reason)

    def worker_info(self) -> common_pb2.WorkerInfo:
        busy = self._running is not None
        ident = self.identity
        return common_pb2.WorkerInfo(
            worker_id=ident.worker_id, model_ref=ident.model_ref, engine=self.engine.name,
            device_ids=ident.device_ids, endpoint=ident.endpoint, pid=ident.pid,
            state=common_pb2.WORKER_STATE_BUSY if busy else common_pb2.WORKER_STATE_READY,
            device_bytes=self.engine.device_bytes(), started_at=_timestamp(ident.started_at),
            active_jobs=int(busy), slots=self.slots, engine_version=self.engine.version,
            model_digest=self.engine.digest, last_used_at=_timestamp(self._last_used))

    async def GetStatus(self, request: worker_pb2.GetStatusRequest,
                        context: grpc.aio.ServicerContext) -> worker_pb2.GetStatusResponse:
        running = [self._running.job_id] if self._running is not None else []
        return worker_pb2.GetStatusResponse(worker=self.worker_info(), running_job_ids=running,
                                            context_length=self.engine.context_length)
