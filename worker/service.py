"""WorkerService: the engine's slots, a cancel handle per running job, and worker status.

A worker runs up to `engine.slots` jobs at once (1 for `hf`; the `sim` engine's `slots`
setting), each known by its job id. A slot is taken and released without an await in
between, so concurrent Execute calls never take more slots than there are: a call that
finds them all taken is refused with WORKER_BUSY (and one for a job id already running
here with INVALID_ARGUMENT: a job never runs twice at once). A slot is released just
before the job's terminal event is sent, so a caller that has seen `end`, `error` or
CANCELLED can dispatch the next job at once without meeting WORKER_BUSY; and it is
released too when the caller goes away (the RPC is cancelled), which also stops
generation.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

import grpc

from common.errors import OrchError
from common.log import emit
from common.timestamps import to_timestamp
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


def _terminal(event: worker_pb2.ExecuteResponse, choices: int) -> bool:
    kind = event.WhichOneof("event")
    return kind == "error" or (kind == "end" and event.end.choice_index == choices - 1)


class WorkerService(worker_pb2_grpc.WorkerServiceServicer):
    """Serves Execute, Cancel and GetStatus over one engine with `engine.slots` slots."""

    def __init__(self, engine: Engine, identity: Identity):
        self.engine = engine
        self.identity = identity
        self.slots = max(1, engine.slots)
        self._running: dict[str, Control] = {}  # by job id: one entry per taken slot
        self._last_used = identity.started_at

    async def Execute(self, request: worker_pb2.ExecuteRequest, context: grpc.aio.ServicerContext
                      ) -> AsyncIterator[worker_pb2.ExecuteResponse]:
        refused = self._refusal(request.job_id)
        if refused is not None:
            await refused.abort(context)
        deadline = time.monotonic() + request.deadline_ms / 1000 if request.deadline_ms else None
        control = self._running[request.job_id] = Control(request.job_id, deadline)
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

    def _refusal(self, job_id: str) -> OrchError | None:
        """Why a new job cannot take a slot now, or None. The caller takes the slot
        with no await in between, so the check and the take are one step."""
        if job_id in self._running:
            return OrchError("INVALID_ARGUMENT", f"job {job_id} is already running on worker "
                             f"{self.identity.worker_id}", param="job_id")
        if len(self._running) < self.slots:
            return None
        running = ", ".join(sorted(self._running))
        emit("worker", "worker.busy", level="warning", job_id=job_id, running_job_ids=running,
             worker_id=self.identity.worker_id)
        return OrchError("WORKER_BUSY", f"worker {self.identity.worker_id} is running "
                         f"{len(self._running)} of {self.slots} jobs: {running}")

    def _release(self, control: Control) -> None:
        # Idempotent: called before the terminal event and again when the call ends.
        if self._running.get(control.job_id) is control:
            del self._running[control.job_id]
            self._last_used = time.time()

    async def Cancel(self, request: worker_pb2.CancelRequest,
                     context: grpc.aio.ServicerContext) -> worker_pb2.CancelResponse:
        running = self._running.get(request.job_id)
        if running is None:
            return worker_pb2.CancelResponse(was_running=False)
        running.cancel()
        emit("worker", "worker.job_cancel", job_id=request.job_id,
             worker_id=self.identity.worker_id)
        return worker_pb2.CancelResponse(was_running=True)

    def cancel_all(self, reason: str) -> None:
        """Shutdown: every running job ends with CANCELLED at its next token."""
        for control in self._running.values():
            control.cancel(reason)

    def worker_info(self) -> common_pb2.WorkerInfo:
        active = len(self._running)
        ident = self.identity
        return common_pb2.WorkerInfo(
            worker_id=ident.worker_id, model_ref=ident.model_ref, engine=self.engine.name,
            device_ids=ident.device_ids, endpoint=ident.endpoint, pid=ident.pid,
            state=(common_pb2.WORKER_STATE_BUSY if active >= self.slots
                   else common_pb2.WORKER_STATE_READY),
            device_bytes=self.engine.device_bytes(), started_at=to_timestamp(ident.started_at),
            active_jobs=active, slots=self.slots, engine_version=self.engine.version,
            model_digest=self.engine.digest, last_used_at=to_timestamp(self._last_used))

    async def GetStatus(self, request: worker_pb2.GetStatusRequest,
                        context: grpc.aio.ServicerContext) -> worker_pb2.GetStatusResponse:
        return worker_pb2.GetStatusResponse(worker=self.worker_info(),
                                            running_job_ids=list(self._running),
                                            context_length=self.engine.context_length)
