"""Restart: rebuild jobs from the store.

On start, unfinished jobs come back: QUEUED ones wait again in their old order;
DISPATCHED/RUNNING ones were cut off by the crash and are requeued under the retry
policy (same seed; tokens the client already has are not sent again). Events are
shown before they are stored, so a client may have seen events the crash lost: an
unfinished job therefore continues above its reserved seqs, starting with one
JobDivergence per choice that says where the stored text ends. Finished jobs
are loaded on demand and return their recorded outcome; if the crash fell between
recording the outcome and writing its final event, that event is written now.
"""

from __future__ import annotations

import time
import typing

from common.errors import OrchError
from common.timestamps import to_seconds
from llama_orch.v1 import common_pb2, events_pb2
from orchestrator import admission
from orchestrator.catalog import CatalogModel
from orchestrator.jobs import STATE_OF_STATUS, JobRecord
from orchestrator.store import JobRow
from orchestrator.types import JobState

if typing.TYPE_CHECKING:
    from orchestrator.core import Orchestrator

_STATE = STATE_OF_STATUS


async def _record(orch: "Orchestrator", row: JobRow) -> tuple[JobRecord, OrchError | None]:
    pb = row.job
    spec = common_pb2.JobSpec()
    spec.CopyFrom(pb.spec)
    seeded = common_pb2.JobSpec()
    seeded.CopyFrom(pb.spec)
    seeded.sampling.seed = pb.seed  # the recorded seed: a replay must sample the same way
    problem = None
    try:
        admitted = admission.admit(seeded, orch.catalog, orch.cfg.orchestrator)
    except OrchError as err:  # the catalog changed under the job
        problem = err
        placeholder = CatalogModel(name=row.model_ref, ref=row.model_ref, engine="", context_length=0,
                                   path=None)
        admitted = admission.Admitted(model=placeholder, prompt="", prompt_ids=(), sampling=seeded.sampling,
                                      priority=admission.Priority(min(1, max(0, row.priority))),
                                      deadline_ms=orch.cfg.orchestrator.default_deadline_ms,
                                      seed=pb.seed)
    job = JobRecord(pb.job_id, spec, admitted, correlation_id=pb.correlation_id,
                    idempotency_key=pb.idempotency_key, tenant_id=pb.tenant_id or row.tenant_id,
                    order=row.queue_order,
                    state=_STATE.get(pb.status, JobState.QUEUED), attempts=pb.attempts,
                    worker_id=pb.worker_id, pool_id=pb.pool_id,
                    created_at=to_seconds(pb.created_at), started_at=to_seconds(pb.started_at),
                    finished_at=to_seconds(pb.finished_at),
                    finish_reason=pb.finish_reason, waiting_reason=pb.waiting_reason,
                    not_before=row.not_before)
    job.usage.CopyFrom(pb.usage)
    if pb.HasField("proof"):
        job.proof = pb.proof
    if pb.HasField("error") and pb.error.code:
        job.error = OrchError.from_detail(pb.error)
    job.output = [pb.output] if pb.output else []
    job.events = await orch.store.events(pb.job_id)
    last = job.events[-1].seq if job.events else 0
    job.next_seq, job.visible_seq = last + 1, last
    job.seq_reserved = job.reserved_durable = max(pb.seq_reserved, last)
    for event in job.events:
        kind = event.WhichOneof("kind")
        if kind == "tokens":
            job.replay.on_tokens(event.tokens)
        elif kind == "end":
            job.replay.on_end(event.end.choice_index)
        elif kind == "divergence":
            job.replay.begin_attempt()
    job.replay.begin_attempt()
    return job, problem


async def recover(orch: "Orchestrator") -> None:
    rows = await orch.store.load_unfinished()
    orch._order = max(orch._order, await orch.store.max_queue_order())
    requeued = 0
    for row in rows:
        job, problem = await _record(orch, row)
        if problem is not None:
            job.state = JobState.QUEUED
            orch.jobs[job.job_id] = job
            orch.durability.track(job)
            # Above the reservation, as a job that runs on: clients may have seen seqs
            # past the stored log, and the failure must not take one of them.
            job.skip_to(job.seq_reserved + 1)
            _realign(job)
            orch._finish(job, JobState.FAILED, problem)
            continue
        cut_off = job.state in (JobState.DISPATCHED, JobState.RUNNING)
        job.state, job.worker_id, job.pool_id = JobState.QUEUED, "", ""
        job.skip_to(job.seq_reserved + 1)
        orch._track(job)
        _realign(job)
        if cut_off:
            requeued += 1
            cause = OrchError("UNAVAILABLE", "the orchestrator restarted while the job ran")
            if orch.retry.should_retry(job.attempts, True):
                orch._requeue(job, cause)
            else:
                orch._finish(job, JobState.FAILED, OrchError(
                    "RETRIES_EXHAUSTED", f"gave up after {job.attempts} attempts; last: {cause.message}"))
    orch.facts.publish(events_pb2.FACT_KIND_COMPONENT_STARTED,
                       f"recovered {len(rows)} unfinished jobs ({requeued} were running)",
                       recovered=len(rows), requeued=requeued)


def _realign(job: JobRecord) -> None:
    """Tell clients where the stored stream ends, per choice (see the module docstring)."""
    for index in range(max(1, job.admitted.sampling.n)):
        tokens, chars = job.replay.sent(index)
        job.append(divergence=events_pb2.JobDivergence(
            choice_index=index, token_index=tokens, char_offset=chars,
            message=f"the orchestrator restarted: the stream continues after token {tokens} "
                    f"(character {chars}); anything seen after that point is replaced"))


async def finished_record(orch: "Orchestrator", row: JobRow) -> JobRecord:
    """A read-only record of a job that is not live (finished, or from before a restart)."""
    job, _ = await _record(orch, row)
    if job.state.terminal and job.events:
        last = job.events[-1].WhichOneof("kind")
        if last not in ("end", "error") or (last == "end" and _ends(job) < max(1, job.admitted.sampling.n)):
            orch.durability.track(job)
            if job.error is not None:
                job.append(error=job.error.to_detail(), final=True)
            else:
                job.append(end=events_pb2.JobEnd(finish_reason=job.finish_reason, usage=job.usage,
                                                 proof=job.proof), final=True)
    job._closed = True
    job.updated_at = job.updated_at or time.time()
    return job


def _ends(job: JobRecord) -> int:
    return sum(1 for e in job.events if e.WhichOneof("kind") == "end")
