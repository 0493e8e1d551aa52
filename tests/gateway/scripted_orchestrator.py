"""ScriptedOrchestrator: a test double of the orchestrator's ClientService.

It serves the real gRPC contract on a real grpc.aio server, but plays back scripts
instead of scheduling anything, and records what the gateway sent (requests,
metadata) and whether a streaming call was cancelled.

    Generate    plays `script` (events; `job_id` and `seq` are filled in); when
                `script` is None, hello_script for every choice the request asks
                for (n), or `script_of(request)` when that is set; each Generate
                call is a new job ("job-0001", "job-0002", ...)
    StreamJob   plays the same `script` for a job in `jobs`, from after_seq; an
                after_seq beyond the script is RESUME_OUT_OF_RANGE, an unknown job
                NOT_FOUND, as the orchestrator answers
    Submit      adds a queued job to `jobs` ("task-0001", ...); an Idempotency-Key
                seen before returns that job with existing=True if the spec is the
                same, IDEMPOTENCY_CONFLICT if not (the orchestrator's rule)
    GetJob      `jobs[job_id]`, or NOT_FOUND
    CancelJob   marks an unfinished job cancelled; a finished one is returned as is
    WatchFacts  plays `facts` filtered by kinds, job_id and after_id, as the
                orchestrator filters them
    ListJobs    `jobs` filtered by status, in pages of page_size (token: the offset)
    GetClusterSnapshot  `snapshot` (tests/gateway/scripted_admin.py), or
                `snapshot_error`

Its AdminService is `admin` (tests/gateway/scripted_admin.py), over the same models.

`HOLD` in a script or in `facts` means: stop here and wait until the caller cancels;
`PAUSE` in a script: wait until the test sets `resume`; an OrchError in a script ends
the call with that error there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from llama_orch.v1 import client_pb2, client_pb2_grpc, common_pb2, errors_pb2, events_pb2

from common.errors import OrchError, code_value
from tests.gateway.scripted_admin import ScriptedAdmin, cluster_snapshot

JOB_ID = "job-0001"
CREATED = 1_700_000_000
DEFAULT_SEED = 4242
HOLD = object()
PAUSE = object()
TERMINAL = frozenset({common_pb2.JOB_STATUS_SUCCEEDED, common_pb2.JOB_STATUS_FAILED,
                      common_pb2.JOB_STATUS_CANCELLED})


def queued() -> events_pb2.JobEvent:
    return events_pb2.JobEvent(
        queued=events_pb2.JobQueued(priority=common_pb2.PRIORITY_INTERACTIVE))


def started(prompt_tokens: int = 5) -> events_pb2.JobEvent:
    return events_pb2.JobEvent(started=events_pb2.JobStarted(prompt_tokens=prompt_tokens,
                                                             model_ref="file:/m/tiny"))


def tokens(text: str, index: int = 0, ids: int = 1,
           logprobs: list[events_pb2.TokenLogprobs] | None = None) -> events_pb2.JobEvent:
    return events_pb2.JobEvent(tokens=events_pb2.JobTokens(
        text=text, token_ids=list(range(ids)), logprobs=logprobs or [], choice_index=index))


def logprob(token: str, lp: float, top: dict[str, float] | None = None) -> events_pb2.TokenLogprobs:
    return events_pb2.TokenLogprobs(token=token, logprob=lp, top=[
        events_pb2.TokenLogprob(token=t, logprob=v) for t, v in (top or {}).items()])


def end(reason: str = "stop", prompt: int = 5, completion: int = 2, index: int = 0,
        engine: str = "sim") -> events_pb2.JobEvent:
    return events_pb2.JobEvent(end=events_pb2.JobEnd(
        finish_reason=reason, choice_index=index,
        usage=common_pb2.Usage(prompt_tokens=prompt, completion_tokens=completion,
                               total_tokens=prompt + completion),
        proof=common_pb2.ProofRecord(engine=engine, engine_version="1.0", model_digest="abc")))


def error(code: str, message: str = "it broke") -> events_pb2.JobEvent:
    return events_pb2.JobEvent(error=errors_pb2.ErrorDetail(code=code_value(code), message=message))


def hello_script(n: int = 1) -> list:
    """Every choice says "Hello world" (5 prompt tokens, 2 completion tokens)."""
    return [queued(), started(5),
            *(tokens(t, index=i) for i in range(n) for t in ("Hello", " world")),
            *(end("stop", 5, 2, index=i) for i in range(n))]


def model(id: str, created: int = CREATED, owned_by: str = "llama-orch",
          engine: str = "hf") -> common_pb2.ModelInfo:
    return common_pb2.ModelInfo(id=id, ref=f"file:/models/{id}", created=Timestamp(seconds=created),
                                owned_by=owned_by, context_length=2048, engine=engine,
                                supports_logprobs=True, supports_penalties=engine == "hf")


def job_record(job_id: str = JOB_ID, status: int = common_pb2.JOB_STATUS_SUCCEEDED,
               **fields) -> common_pb2.Job:
    """A Job as GetJob returns it; finished (hello_script's outcome) by default."""
    defaults = {"model_ref": "file:/m/tiny", "attempts": 1, "seed": DEFAULT_SEED,
                "last_seq": len(hello_script()),
                "spec": common_pb2.JobSpec(model="tiny", prompt="Once upon",
                                           priority=common_pb2.PRIORITY_INTERACTIVE)}
    job = common_pb2.Job(job_id=job_id, status=status, **{**defaults, **fields})
    job.created_at.FromSeconds(CREATED)
    job.updated_at.FromSeconds(CREATED + 2)
    if status != common_pb2.JOB_STATUS_QUEUED:
        job.started_at.FromSeconds(CREATED + 1)
    if status in TERMINAL:
        job.finished_at.FromSeconds(CREATED + 2)
    return job


def fact(id: int, kind: int, message: str = "", **fields) -> events_pb2.Fact:
    """A Fact; its code follows the orchestrator's rule (WORKER_FAILED -> worker.failed)."""
    attributes = fields.pop("attributes", None)
    name = events_pb2.FactKind.Name(kind).removeprefix("FACT_KIND_").lower()
    head, _, tail = name.partition("_")
    f = events_pb2.Fact(id=id, kind=kind, code=f"{head}.{tail}", message=message,
                        level=events_pb2.FACT_LEVEL_INFO, component="orchestrator", **fields)
    f.time.FromSeconds(CREATED + id)
    if attributes:
        f.attributes.update(attributes)
    return f


def fact_script() -> list:
    return [fact(1, events_pb2.FACT_KIND_JOB_ADMITTED, "admitted", job_id=JOB_ID),
            fact(2, events_pb2.FACT_KIND_WORKER_FAILED, "worker exited", worker_id="w-1",
                 pool_id="local", attributes={"exit_code": 137}),
            fact(3, events_pb2.FACT_KIND_JOB_FINISHED, "finished", job_id=JOB_ID)]


@dataclass
class ScriptedOrchestrator(client_pb2_grpc.ClientServiceServicer):
    models: list[common_pb2.ModelInfo] = field(
        default_factory=lambda: [model("tiny"), model("org/big-model", owned_by="")])
    script: list | None = None
    script_of: Callable[[client_pb2.GenerateRequest], list] | None = None
    # Raised before any event, as admission failures are.
    admission_error: OrchError | None = None
    requests: list[client_pb2.GenerateRequest] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    cancellations: int = 0  # calls (Generate, StreamJob) the client cancelled
    holding: asyncio.Event = field(default_factory=asyncio.Event)
    resume: asyncio.Event = field(default_factory=asyncio.Event)
    # The native API's state and what it received.
    jobs: dict[str, common_pb2.Job] = field(default_factory=lambda: {JOB_ID: job_record()})
    facts: list = field(default_factory=fact_script)
    submits: list[client_pb2.SubmitRequest] = field(default_factory=list)
    stream_requests: list[client_pb2.StreamJobRequest] = field(default_factory=list)
    watch_requests: list[client_pb2.WatchFactsRequest] = field(default_factory=list)
    cancel_requests: list[str] = field(default_factory=list)
    idempotency: dict[str, str] = field(default_factory=dict)
    snapshot: client_pb2.GetClusterSnapshotResponse | None = None
    snapshot_error: OrchError | None = None
    list_requests: list[client_pb2.ListJobsRequest] = field(default_factory=list)
    admin: ScriptedAdmin | None = None

    def __post_init__(self) -> None:
        if self.snapshot is None:
            queued_job = job_record("job-q", common_pb2.JOB_STATUS_QUEUED,
                                    waiting_reason="no ready worker")
            self.snapshot = cluster_snapshot(self.models, [queued_job])
        if self.admin is None:
            self.admin = ScriptedAdmin(self.models)

    def _record(self, context: grpc.aio.ServicerContext) -> None:
        self.metadata.append({k: v for k, v in context.invocation_metadata()})

    async def ListModels(self, request, context):
        self._record(context)
        return client_pb2.ListModelsResponse(models=self.models)

    async def GetModel(self, request, context):
        self._record(context)
        for m in self.models:
            if m.id == request.model:
                return client_pb2.GetModelResponse(model=m)
        await OrchError("MODEL_NOT_FOUND", f"model {request.model!r} is not known",
                        param="model").abort(context)

    async def Generate(self, request, context):
        self._record(context)
        self.requests.append(request)
        if self.admission_error is not None:
            await self.admission_error.abort(context)
        job_id = f"job-{len(self.requests):04d}"
        script = (self.script_of(request) if self.script_of is not None
                  else self.script_for(request.spec.sampling.n or 1))
        async for ev in self._play(job_id, 0, context, script):
            yield client_pb2.GenerateResponse(event=ev)

    def script_for(self, n: int = 1) -> list:
        return self.script if self.script is not None else hello_script(n)

    async def _play(self, job_id: str, after_seq: int, context, script: list):
        """The script's events with seq > after_seq; HOLD waits for cancellation, an
        OrchError ends the call with that error (a broken stream, not a job's error;
        first in a script, it is an admission refusal)."""
        try:
            seq = 0
            for event in script:
                if event is HOLD:
                    self.holding.set()
                    await asyncio.Event().wait()  # until the client cancels
                if event is PAUSE:
                    self.holding.set()
                    await self.resume.wait()
                    continue
                if isinstance(event, OrchError):
                    await event.abort(context)
                seq += 1
                if seq <= after_seq:
                    continue
                ev = events_pb2.JobEvent()
                ev.CopyFrom(event)
                ev.job_id, ev.seq = job_id, seq
                ev.time.FromSeconds(CREATED)
                yield ev
        except asyncio.CancelledError:
            self.cancellations += 1
            self.cancelled.set()
            raise

    async def Submit(self, request, context):
        self._record(context)
        self.submits.append(request)
        if self.admission_error is not None:
            await self.admission_error.abort(context)
        key = request.idempotency_key
        if key and key in self.idempotency:
            job = self.jobs[self.idempotency[key]]
            if job.spec != request.spec:
                await OrchError("IDEMPOTENCY_CONFLICT",
                                "this Idempotency-Key was used for a different request",
                                param="idempotency_key").abort(context)
            return client_pb2.SubmitResponse(job=job, existing=True)
        job_id = f"task-{len(self.submits):04d}"
        seed = request.spec.sampling.seed if request.spec.sampling.HasField("seed") \
            else DEFAULT_SEED
        job = common_pb2.Job(job_id=job_id, spec=request.spec, status=common_pb2.JOB_STATUS_QUEUED,
                             model_ref="file:/m/tiny", seed=seed, last_seq=1,
                             idempotency_key=key, waiting_reason="no ready worker",
                             correlation_id=dict(context.invocation_metadata()).get(
                                 "x-correlation-id", ""))
        job.created_at.FromSeconds(CREATED)
        job.updated_at.FromSeconds(CREATED)
        self.jobs[job_id] = job
        if key:
            self.idempotency[key] = job_id
        return client_pb2.SubmitResponse(job=job, existing=False)

    async def _job(self, job_id: str, context) -> common_pb2.Job:
        if job_id not in self.jobs:
            await OrchError("NOT_FOUND", f"no job {job_id!r}", param="job_id").abort(context)
        return self.jobs[job_id]

    async def GetJob(self, request, context):
        self._record(context)
        return client_pb2.GetJobResponse(job=await self._job(request.job_id, context))

    async def CancelJob(self, request, context):
        self._record(context)
        self.cancel_requests.append(request.job_id)
        job = await self._job(request.job_id, context)
        if job.status not in TERMINAL:
            job.status = common_pb2.JOB_STATUS_CANCELLED
            job.error.CopyFrom(OrchError("CANCELLED", "cancelled by the client").to_detail())
            job.finished_at.FromSeconds(CREATED + 9)
        return client_pb2.CancelJobResponse(job=job)

    async def StreamJob(self, request, context):
        self._record(context)
        self.stream_requests.append(request)
        await self._job(request.job_id, context)
        available = sum(1 for e in self.script_for() if isinstance(e, events_pb2.JobEvent))
        if request.after_seq > available:
            await OrchError("RESUME_OUT_OF_RANGE", f"after_seq {request.after_seq} is beyond "
                            f"the last event ({available})", param="after_seq").abort(context)
        async for ev in self._play(request.job_id, request.after_seq, context, self.script_for()):
            yield client_pb2.StreamJobResponse(event=ev)

    async def WatchFacts(self, request, context):
        self._record(context)
        self.watch_requests.append(request)
        kinds = set(request.kinds)
        try:
            for f in self.facts:
                if f is HOLD:
                    self.holding.set()
                    await asyncio.Event().wait()
                if f.id > request.after_id and (not kinds or f.kind in kinds) and (
                        not request.job_id or f.job_id == request.job_id):
                    yield client_pb2.WatchFactsResponse(fact=f)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def ListJobs(self, request, context):
        self._record(context)
        self.list_requests.append(request)
        wanted = set(request.statuses)
        jobs = [j for j in self.jobs.values() if not wanted or j.status in wanted]
        # As the orchestrator: a token that is not an offset starts from the beginning.
        start = int(request.page_token) if request.page_token.isdigit() else 0
        end = start + (request.page_size or 100)
        return client_pb2.ListJobsResponse(jobs=jobs[start:end],
                                           next_page_token=str(end) if end < len(jobs) else "")

    async def GetClusterSnapshot(self, request, context):
        self._record(context)
        if self.snapshot_error is not None:
            await self.snapshot_error.abort(context)
        return self.snapshot
