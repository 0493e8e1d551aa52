"""ClientService: the API the gateway, SDKs and Go clients speak.

Handlers are thin: they read metadata (x-correlation-id, idempotency-key), call the
Orchestrator and map OrchError to gRPC status with google.rpc.ErrorInfo.

Every method first passes the guard (orchestrator/auth.py: the API key in the
`authorization` metadata, when auth is on) and then sees only its caller's tenant
(orchestrator/tenancy.py): another tenant's job is NOT_FOUND, lists and the fact
stream leave it out, and idempotency keys are per tenant. Submit and Generate take
a token from the tenant's submission rate limit first (orchestrator/ratelimit.py):
over it, RATE_LIMITED with trailing metadata `retry-after`, and nothing is admitted.
"""

from __future__ import annotations

import asyncio
import functools
import uuid

import grpc
from google.protobuf import timestamp_pb2

from common.errors import OrchError
from llama_orch.v1 import admin_pb2, client_pb2, client_pb2_grpc, common_pb2
from orchestrator import auth, ratelimit, tenancy
from orchestrator.coalesce import coalesce
from orchestrator.core import Orchestrator
from orchestrator.jobs import STATE_OF_STATUS, JobRecord
from orchestrator.types import JobState

_STATUS_OF = STATE_OF_STATUS


def metadata(context: grpc.aio.ServicerContext, key: str) -> str:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode(errors="replace")
    return ""


def correlation_id(context: grpc.aio.ServicerContext) -> str:
    """The call's correlation id: the one the guard took (or made) for this call."""
    call = auth.current_call()
    if call is not None:
        return call.correlation_id
    cid = metadata(context, "x-correlation-id")[:128]
    return cid or uuid.uuid4().hex


async def abort(err: OrchError, context: grpc.aio.ServicerContext) -> None:
    """End the RPC with `err` (raises), telling the guard the outcome first."""
    auth.note_outcome(err.code)
    await err.abort(context)


def pin_protos(pins: dict[str, set[tuple[str, str]]]) -> list[admin_pb2.Pin]:
    """Orchestrator.pins (model ref -> {(pool, device)}) as one Pin per (model, pool),
    sorted. The orchestrator keeps no pin time in memory: created_at stays unset."""
    by_pool: dict[tuple[str, str], list[str]] = {}
    for ref, keys in pins.items():
        for pool_id, device_id in keys:
            by_pool.setdefault((ref, pool_id), []).append(device_id)
    return [admin_pb2.Pin(model_ref=ref, pool_id=pool_id, device_ids=sorted(devices))
            for (ref, pool_id), devices in sorted(by_pool.items())]


def unary(fn):
    """Map OrchError raised by a unary handler to a gRPC status."""
    @functools.wraps(fn)
    async def wrapper(self, request, context):
        try:
            return await fn(self, request, context)
        except OrchError as err:
            await abort(err, context)
    return wrapper


@auth.guarded(client_pb2.DESCRIPTOR.services_by_name["ClientService"], admin=False)
class ClientServicer(client_pb2_grpc.ClientServiceServicer):
    def __init__(self, orch: Orchestrator, guard: auth.Guard | None = None):
        self.orch = orch
        self.guard = guard or auth.guard_of(orch)
        self.limiter = ratelimit.limiter_of(orch)

    async def _submit(self, spec, key, context, *, streaming: bool = False):
        """`streaming`: the caller reads the job's stream here (Generate), so a job it
        leaves before it is admitted is cancelled, unless it asked to detach."""
        key = key or metadata(context, "idempotency-key")
        if len(key) > 256:
            raise OrchError("INVALID_ARGUMENT", "idempotency key longer than 256 characters",
                            param="idempotency_key")
        who = auth.principal()
        # Before anything is admitted: a refused submission stores nothing.
        await self.limiter.check(who.tenant_id)
        return await self.orch.submit(spec, idempotency_key=tenancy.scoped_key(who, key),
                                      correlation_id=correlation_id(context),
                                      tenant_id=who.tenant_id,
                                      abandon_cancels=streaming and not spec.detach)

    async def _job(self, job_id: str) -> JobRecord:
        """The job, if the caller may see it (NOT_FOUND otherwise, like a missing job)."""
        return tenancy.check(auth.principal(), await self.orch.get(job_id))

    @unary
    async def Submit(self, request, context):
        job, existing = await self._submit(request.spec, request.idempotency_key, context)
        return client_pb2.SubmitResponse(job=tenancy.job_proto(job), existing=existing)

    async def Generate(self, request, context):
        try:
            job, _ = await self._submit(request.spec, request.idempotency_key, context,
                                        streaming=True)
        except OrchError as err:
            await abort(err, context)
        finished = False
        try:
            if request.coalesce:
                async for batch in job.follow_batches(0):
                    for event in coalesce(batch):
                        yield client_pb2.GenerateResponse(event=event)
            else:
                async for event in job.follow(0):
                    yield client_pb2.GenerateResponse(event=event)
            finished = True
        finally:
            # A streaming client that goes away cancels its job unless it detached.
            if not finished and not job.spec.detach and not job.done:
                asyncio.ensure_future(self.orch.cancel(job.job_id))

    async def StreamJob(self, request, context):
        try:
            job = await self._job(request.job_id)
            stream = job.follow(request.after_seq)
            first = await anext(stream, None)
        except OrchError as err:
            await abort(err, context)
        if first is None:
            return
        yield client_pb2.StreamJobResponse(event=first)
        async for event in stream:
            yield client_pb2.StreamJobResponse(event=event)

    @unary
    async def CancelJob(self, request, context):
        await self._job(request.job_id)  # refused before anything changes
        job = await self.orch.cancel(request.job_id)
        return client_pb2.CancelJobResponse(job=tenancy.job_proto(job))

    @unary
    async def GetJob(self, request, context):
        job = await self._job(request.job_id)
        return client_pb2.GetJobResponse(job=tenancy.job_proto(job))

    @unary
    async def ListJobs(self, request, context):
        wanted = {_STATUS_OF[s] for s in request.statuses if s in _STATUS_OF}
        size = min(request.page_size or 100, 1000)
        start = int(request.page_token) if request.page_token.isdigit() else 0
        who = auth.principal()
        jobs = [j for j in self.orch.jobs.values()
                if (not wanted or j.state in wanted) and tenancy.may_see(who, j)]
        page = jobs[start:start + size]
        token = str(start + size) if start + size < len(jobs) else ""
        return client_pb2.ListJobsResponse(jobs=[tenancy.job_proto(j) for j in page],
                                           next_page_token=token)

    def _model_info(self, m) -> common_pb2.ModelInfo:
        pinned = sorted({device for _, device in self.orch.pins.get(m.ref, ())})
        info = common_pb2.ModelInfo(id=m.name, ref=m.ref, context_length=m.context_length,
                                    engine=m.engine, owned_by="llama-orch", size_bytes=m.size_bytes,
                                    memory_estimate_bytes=m.memory_estimate_bytes,
                                    device_count=m.device_count,
                                    supports_logprobs=m.engine == "hf",
                                    supports_penalties=m.engine == "hf",
                                    pinned_device_ids=pinned)
        info.created.FromSeconds(m.created)
        return info

    @unary
    async def ListModels(self, request, context):
        return client_pb2.ListModelsResponse(
            models=[self._model_info(m) for m in self.orch.catalog.models.values()])

    @unary
    async def GetModel(self, request, context):
        return client_pb2.GetModelResponse(model=self._model_info(self.orch.catalog.resolve(request.model)))

    @unary
    async def GetClusterSnapshot(self, request, context):
        """The cluster as one consistent picture. Built without an await, so the state
        is exactly the one after fact `fact_id`: a watcher resuming there (WatchFacts
        after_id) sees every later change once and no earlier one again."""
        orch = self.orch
        fact_id = orch.facts.last_id
        taken = timestamp_pb2.Timestamp()
        taken.GetCurrentTime()
        pools = [p.to_proto(orch.registry.workers_of(p.pool_id))
                 for p in orch.registry.pools.values()]
        depth = {common_pb2.PRIORITY_INTERACTIVE: 0, common_pb2.PRIORITY_BATCH: 0}
        for j in orch.queue.values():
            depth[common_pb2.PRIORITY_BATCH if j.priority else common_pb2.PRIORITY_INTERACTIVE] += 1
        who = auth.principal()
        active = [j for j in orch.jobs.values() if not j.done and tenancy.may_see(who, j)][:200]
        return client_pb2.GetClusterSnapshotResponse(
            pools=pools, queue=[client_pb2.QueueDepth(priority=k, depth=v) for k, v in depth.items()],
            models=[self._model_info(m) for m in orch.catalog.models.values()],
            active_jobs=[tenancy.job_proto(j) for j in active], mode=orch.cfg.mode,
            fact_id=fact_id, pins=pin_protos(orch.pins), time=taken)

    async def WatchFacts(self, request, context):
        who = auth.principal()
        if request.job_id and not who.sees_all:
            try:  # a job the caller may not see (or that does not exist): NOT_FOUND
                await self._job(request.job_id)
            except OrchError as err:
                await abort(err, context)
        visible = tenancy.fact_filter(who, self.orch.jobs)
        async for fact in self.orch.facts.watch(request.kinds, request.job_id, request.after_id):
            if visible is None or visible(fact):
                yield client_pb2.WatchFactsResponse(fact=fact)
