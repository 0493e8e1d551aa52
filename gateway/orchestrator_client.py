"""The gateway's one chokepoint for orchestrator RPCs (llama_orch.v1.ClientService,
and AdminService for /v2/admin).

Every call passes through here so that metadata (correlation id, the caller's
credentials, idempotency key) is attached in one place and every gRPC failure leaves
as an `OrchError` with its stable code (gRPC UNIMPLEMENTED: gateway.errors.Unimplemented).
Routes never see grpc or its exceptions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf.message import Message
from llama_orch.v1 import admin_pb2_grpc, client_pb2, client_pb2_grpc, common_pb2, events_pb2

from common.errors import OrchError
from gateway.errors import Unimplemented


def _error(err: grpc.aio.AioRpcError) -> OrchError:
    """The failed call's OrchError. The orchestrator's `retry-after` hint (trailing
    metadata of RATE_LIMITED, whole seconds) rides along as `retry_after`, which
    gateway.errors sends as the Retry-After header. An RPC the orchestrator does not
    implement (yet) is `Unimplemented` (501)."""
    if err.code() is grpc.StatusCode.UNIMPLEMENTED:
        return Unimplemented(err.details() or "the orchestrator does not implement this")
    error = OrchError.from_rpc_error(err)
    for key, value in err.trailing_metadata() or ():
        value = value if isinstance(value, str) else value.decode(errors="replace")
        if key == "retry-after" and value.isdigit():
            error.retry_after = value
    return error


# Unary lookups are cheap; a hung orchestrator must not hang an HTTP client forever.
# Generate has no gRPC deadline: the job's own deadline (JobSpec.deadline_ms) governs.
UNARY_TIMEOUT_S = 10.0
# Admin actions answer once the pools have carried them out: a preload reads the
# model's files (downloading them first if need be), a stop waits out the worker's grace.
ADMIN_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Caller:
    """Who is calling and how to trace it; becomes gRPC metadata on every RPC."""

    correlation_id: str
    # The HTTP Authorization header, passed through so the orchestrator authenticates.
    authorization: str = ""

    def metadata(self) -> tuple[tuple[str, str], ...]:
        pairs = [("x-correlation-id", self.correlation_id)]
        if self.authorization:
            pairs.append(("authorization", self.authorization))
        return tuple(pairs)


class JobEvents:
    """The events of one Generate call, after the first. Iterate once; `cancel` is
    idempotent and is how a vanished HTTP client stops the job."""

    def __init__(self, call: grpc.aio.UnaryStreamCall, first: events_pb2.JobEvent):
        self._call = call
        self.first = first

    async def __aiter__(self) -> AsyncIterator[events_pb2.JobEvent]:
        while True:
            try:
                msg = await self._call.read()
            except grpc.aio.AioRpcError as err:
                raise OrchError.from_rpc_error(err) from None
            if msg is grpc.aio.EOF:
                return
            yield msg.event

    def cancel(self) -> None:
        self._call.cancel()


# What `ServerStream.next` returns when its timeout passed before the next message.
WAITING = object()


class ServerStream:
    """The messages of one server-streaming call (StreamJob, WatchFacts), unwrapped
    (`.event`, `.fact`).

    A read runs as its own task, so `next(timeout)` can give up waiting (to send an SSE
    heartbeat, or to commit an HTTP response) without losing the message or the call.
    `cancel` is idempotent; it ends the call, which for these RPCs never cancels a job.
    """

    def __init__(self, call: grpc.aio.UnaryStreamCall, field: str):
        self._call = call
        self._field = field
        self._pending: asyncio.Future | None = None

    async def next(self, timeout: float | None = None):
        """The next message, None once the stream has ended, or WAITING if `timeout`
        seconds passed first. A failed call raises its OrchError."""
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._call.read())
        done, _ = await asyncio.wait({self._pending}, timeout=timeout)
        if not done:
            return WAITING
        read, self._pending = self._pending, None
        try:
            msg = read.result()
        except grpc.aio.AioRpcError as err:
            raise OrchError.from_rpc_error(err) from None
        return None if msg is grpc.aio.EOF else getattr(msg, self._field)

    def cancel(self) -> None:
        self._call.cancel()
        if self._pending is not None:
            # Nobody will await this read; retrieve its outcome so asyncio stays quiet.
            self._pending.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._pending.cancel()
            self._pending = None


READY_WAIT_S = 5.0


class OrchestratorClient:
    """Typed, metadata-carrying access to ClientService over one shared channel."""

    def __init__(self, channel: grpc.aio.Channel):
        self.rebind(channel)

    def rebind(self, channel: grpc.aio.Channel) -> grpc.aio.Channel | None:
        """New calls go over `channel` from now on (a renewed client certificate: see
        gateway/identity.py); calls already open stay on the previous channel, which is
        returned for its owner to close when they could have ended."""
        previous = getattr(self, "channel", None)
        self.channel = channel
        self._stub = client_pb2_grpc.ClientServiceStub(channel)
        self._admin = admin_pb2_grpc.AdminServiceStub(channel)
        return previous

    async def list_models(self, caller: Caller) -> list[common_pb2.ModelInfo]:
        reply = await self._unary(self._stub.ListModels, client_pb2.ListModelsRequest(), caller)
        return list(reply.models)

    async def get_model(self, model: str, caller: Caller) -> common_pb2.ModelInfo:
        """The model's entry; an unknown one is MODEL_NOT_FOUND with param `model`."""
        try:
            reply = await self._unary(self._stub.GetModel,
                                      client_pb2.GetModelRequest(model=model), caller)
        except OrchError as err:
            # A bare gRPC NOT_FOUND (no ErrorInfo) still means "no such model" here.
            if err.code == "NOT_FOUND":
                raise OrchError("MODEL_NOT_FOUND", err.message, param="model") from None
            raise
        return reply.model

    async def generate(self, spec: common_pb2.JobSpec, caller: Caller, *,
                       idempotency_key: str = "", coalesce: bool = False) -> JobEvents:
        """Submit and wait for the first event (`queued`).

        Admission failures are gRPC errors before any event, so they raise here, before
        the HTTP response has started, and can still become a proper status code.
        `coalesce`: token events that are ready together may come as one (the OpenAI
        routes show no seqs, so they take it: fewer messages when the stream is behind).
        """
        await self._ready()
        call = self._stub.Generate(
            client_pb2.GenerateRequest(spec=spec, idempotency_key=idempotency_key,
                                       coalesce=coalesce),
            metadata=caller.metadata())
        try:
            msg = await call.read()
        except grpc.aio.AioRpcError as err:
            raise _error(err) from None
        except asyncio.CancelledError:
            call.cancel()
            raise
        if msg is grpc.aio.EOF:
            raise OrchError("INTERNAL", "orchestrator ended Generate without any event")
        if msg.event.WhichOneof("kind") == "error":
            call.cancel()
            raise OrchError.from_detail(msg.event.error)
        return JobEvents(call, msg.event)

    async def submit(self, spec: common_pb2.JobSpec, caller: Caller, *,
                     idempotency_key: str = "") -> tuple[common_pb2.Job, bool]:
        """Admit a job without waiting for it: (the job, whether the idempotency key
        matched an earlier submission)."""
        reply = await self._unary(self._stub.Submit, client_pb2.SubmitRequest(
            spec=spec, idempotency_key=idempotency_key), caller)
        return reply.job, reply.existing

    async def get_job(self, job_id: str, caller: Caller) -> common_pb2.Job:
        reply = await self._unary(self._stub.GetJob, client_pb2.GetJobRequest(job_id=job_id),
                                  caller)
        return reply.job

    async def cancel_job(self, job_id: str, caller: Caller) -> common_pb2.Job:
        """Ask for cancellation; for a finished job, its recorded outcome."""
        reply = await self._unary(self._stub.CancelJob,
                                  client_pb2.CancelJobRequest(job_id=job_id), caller)
        return reply.job

    async def list_jobs(self, statuses: Sequence[int], page_size: int, page_token: str,
                        caller: Caller) -> client_pb2.ListJobsResponse:
        return await self._unary(self._stub.ListJobs, client_pb2.ListJobsRequest(
            statuses=statuses, page_size=page_size, page_token=page_token), caller)

    async def cluster_snapshot(self, caller: Caller) -> client_pb2.GetClusterSnapshotResponse:
        return await self._unary(self._stub.GetClusterSnapshot,
                                 client_pb2.GetClusterSnapshotRequest(), caller)

    async def admin(self, rpc: str, request: Message, caller: Caller, *,
                    timeout: float = UNARY_TIMEOUT_S) -> Message:
        """AdminService.<rpc>(request), e.g. admin("PinModel", PinModelRequest(...)).
        The caller's Authorization goes along: the orchestrator decides who may."""
        return await self._unary(getattr(self._admin, rpc), request, caller, timeout=timeout)

    def stream_job(self, job_id: str, after_seq: int, caller: Caller) -> ServerStream:
        """A job's events with seq > after_seq. Ending the stream leaves the job alone."""
        call = self._stub.StreamJob(
            client_pb2.StreamJobRequest(job_id=job_id, after_seq=after_seq),
            metadata=caller.metadata())
        return ServerStream(call, "event")

    def watch_facts(self, kinds: Sequence[int], job_id: str, after_id: int,
                    caller: Caller) -> ServerStream:
        """Facts with id > after_id (retained ones first, then live), filtered."""
        call = self._stub.WatchFacts(
            client_pb2.WatchFactsRequest(kinds=kinds, job_id=job_id, after_id=after_id),
            metadata=caller.metadata())
        return ServerStream(call, "fact")

    async def _ready(self) -> None:
        """Wait briefly for the link to the orchestrator, so a request that arrives while
        it (re)starts waits for it instead of failing at once; past READY_WAIT_S it is
        UNAVAILABLE (503)."""
        if self.channel.get_state(try_to_connect=True) is grpc.ChannelConnectivity.READY:
            return
        try:
            await asyncio.wait_for(self.channel.channel_ready(), READY_WAIT_S)
        except asyncio.TimeoutError:
            raise OrchError("UNAVAILABLE", "the orchestrator is not reachable") from None

    async def _unary(self, method, request, caller: Caller, *,
                     timeout: float = UNARY_TIMEOUT_S):
        await self._ready()
        try:
            return await method(request, metadata=caller.metadata(), timeout=timeout)
        except grpc.aio.AioRpcError as err:
            raise _error(err) from None
