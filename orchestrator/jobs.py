"""Jobs and their event logs.

A JobRecord is owned by the orchestrator's loop; every change to it is appended as a
JobEvent with the next per-job sequence number (1, 2, 3, ...), so a client that lost
its stream resumes after the last seq it saw and gets exactly what it missed. Terminal
events are always last.

Visible before durable. Events stream to clients as they happen and are written
behind; waiting for a commit per token would add a commit to every token's latency.
What keeps resume honest across a crash is a durable *reservation*: the job's committed
row says seqs up to `seq_reserved` may be in use (a block of SEQ_BLOCK at a time, so
most jobs never reserve twice), and no event beyond the committed reservation is
shown. A job recovered after a crash continues above its reservation, with one
JobDivergence per choice saying where the stored text ends, so a client that saw
events the crash lost realigns, and no seq is ever reused with other content. Without
a crash the numbers have no gaps.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from bisect import bisect_right
from dataclasses import dataclass, field

from common.errors import OrchError
from common.timestamps import to_timestamp_or_none
from llama_orch.v1 import common_pb2, events_pb2
from orchestrator.admission import Admitted
from orchestrator.replay import Replay
from orchestrator.types import JobState, Priority

_STATUS = {
    JobState.QUEUED: common_pb2.JOB_STATUS_QUEUED,
    JobState.DISPATCHED: common_pb2.JOB_STATUS_DISPATCHED,
    JobState.RUNNING: common_pb2.JOB_STATUS_RUNNING,
    JobState.SUCCEEDED: common_pb2.JOB_STATUS_SUCCEEDED,
    JobState.FAILED: common_pb2.JOB_STATUS_FAILED,
    JobState.CANCELLED: common_pb2.JOB_STATUS_CANCELLED,
}


# The inverse: a stored or requested JobStatus -> the orchestrator's state.
STATE_OF_STATUS = {status: state for state, status in _STATUS.items()}


SEQ_BLOCK = 1024  # event seqs reserved per commit of the job's row


def new_job_id() -> str:
    return "job-" + uuid.uuid4().hex[:20]


@dataclass(eq=False)
class JobRecord:
    job_id: str
    spec: common_pb2.JobSpec
    admitted: Admitted
    correlation_id: str = ""
    idempotency_key: str = ""
    # The submitter's tenant ("" with auth off); see orchestrator/tenancy.py.
    tenant_id: str = ""
    order: int = 0  # FIFO position within a priority class
    state: JobState = JobState.QUEUED
    attempts: int = 0
    worker_id: str = ""
    pool_id: str = ""
    created_at: float = field(default_factory=time.time)
    updated_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    error: OrchError | None = None
    finish_reason: str = ""
    usage: common_pb2.Usage = field(default_factory=common_pb2.Usage)
    proof: common_pb2.ProofRecord | None = None
    output: list[str] = field(default_factory=list)
    waiting_reason: str = ""
    cancel_requested: bool = False
    cancel_error: OrchError | None = None
    # The last choice's end, held until the outcome is committed.
    pending_end: events_pb2.JobEnd | None = None
    events: list[events_pb2.JobEvent] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _closed: bool = False
    # The live Execute call while dispatched, so a cancel past its grace can cut it.
    call: object = None
    replay: Replay = field(default_factory=Replay)
    # Events up to this seq may be streamed (see the module docstring).
    visible_seq: int = 0
    # Seqs reserved in the job's row as written; `reserved_durable` as committed.
    seq_reserved: int = SEQ_BLOCK
    reserved_durable: int = 0
    next_seq: int = 1
    reserving: bool = False
    # Called when an event needs a bigger committed reservation (set with on_append).
    on_reserve: object = None
    # Called with each appended event (persistence); None keeps events in memory only.
    on_append: object = None
    # Earliest time a requeued job may run again (retry backoff), epoch seconds.
    not_before: float = 0.0
    # The store refused its row: it never existed for the client, and nothing more of
    # it is written (row, events, usage, charge).
    refused: bool = False

    @property
    def priority(self) -> Priority:
        return self.admitted.priority

    @property
    def model_ref(self) -> str:
        return self.admitted.model.ref

    @property
    def last_seq(self) -> int:
        return self.next_seq - 1

    def append(self, *, final: bool = False, **kind: object) -> events_pb2.JobEvent:
        """Append one event (e.g. append(tokens=JobTokens(...))) with the next seq.

        `final` marks the job's last event; nothing may follow it."""
        if self._closed:
            raise RuntimeError(f"{self.job_id}: event after the final event")
        now = time.time()
        event = events_pb2.JobEvent(job_id=self.job_id, seq=self.next_seq,
                                    time=to_timestamp_or_none(now), **kind)
        self.next_seq += 1
        self.events.append(event)
        self.updated_at = now
        self._closed = final
        if self.on_append is None:  # in memory only: nothing to wait for
            self.mark_visible(event.seq)
            return event
        self.on_append(self, event)
        if event.seq <= self.reserved_durable:
            self.mark_visible(event.seq)
            return event
        if event.seq > self.seq_reserved:
            self.seq_reserved = event.seq - 1 + SEQ_BLOCK
        if not self.reserving and self.on_reserve is not None:
            self.reserving = True
            self.on_reserve(self)  # commits the row, then calls reservation_committed
        return event

    def reservation_committed(self, reserved: int) -> None:
        self.reserved_durable = max(self.reserved_durable, reserved)
        self.mark_visible(min(self.last_seq, self.reserved_durable))

    def mark_visible(self, seq: int) -> None:
        if seq > self.visible_seq:
            self.visible_seq = seq
            self._changed.set()
            self._changed = asyncio.Event()

    def skip_to(self, seq: int) -> None:
        """Continue numbering at `seq` (after a crash: above the old reservation)."""
        self.next_seq = max(self.next_seq, seq)
        self.seq_reserved = max(self.seq_reserved, seq - 1 + SEQ_BLOCK)

    @property
    def done(self) -> bool:
        return self.state.terminal

    async def follow(self, after_seq: int = 0) -> AsyncIterator[events_pb2.JobEvent]:
        """Events with seq > after_seq, live, until the terminal state is reached."""
        at = self._start(after_seq)
        while True:
            while at < len(self.events) and self.events[at].seq <= self.visible_seq:
                at += 1
                yield self.events[at - 1]
            if self._closed and at >= len(self.events):
                return
            await self._changed.wait()

    async def follow_batches(self, after_seq: int = 0
                             ) -> AsyncIterator[list[events_pb2.JobEvent]]:
        """As follow(), but each step yields every event visible by then (one or more):
        a consumer that fell behind catches up in one step (orchestrator/coalesce.py)."""
        at = self._start(after_seq)
        while True:
            end = at
            while end < len(self.events) and self.events[end].seq <= self.visible_seq:
                end += 1
            if end > at:
                batch, at = self.events[at:end], end
                yield batch
                continue
            if self._closed and at >= len(self.events):
                return
            await self._changed.wait()

    def _start(self, after_seq: int) -> int:
        """Index of the first event with seq > after_seq."""
        if after_seq > self.last_seq:
            raise OrchError("RESUME_OUT_OF_RANGE",
                            f"after_seq {after_seq} is beyond the last event ({self.last_seq})",
                            param="after_seq")
        return bisect_right(self.events, after_seq, key=lambda e: e.seq)

    def to_proto(self) -> common_pb2.Job:
        job = common_pb2.Job(
            job_id=self.job_id, spec=self.spec, status=_STATUS[self.state],
            model_ref=self.model_ref, tenant_id=self.tenant_id, attempts=self.attempts,
            worker_id=self.worker_id,
            pool_id=self.pool_id, created_at=to_timestamp_or_none(self.created_at),
            updated_at=to_timestamp_or_none(self.updated_at or self.created_at),
            started_at=to_timestamp_or_none(self.started_at),
            finished_at=to_timestamp_or_none(self.finished_at), usage=self.usage,
            finish_reason=self.finish_reason,
            seed=self.admitted.seed, last_seq=self.last_seq, correlation_id=self.correlation_id,
            seq_reserved=self.seq_reserved,
            idempotency_key=self.idempotency_key, waiting_reason=self.waiting_reason)
        if self.error is not None:
            job.error.CopyFrom(self.error.to_detail())
        if self.proof is not None:
            job.proof.CopyFrom(self.proof)
        if self.spec.keep_output and self.state.terminal:
            job.output = "".join(self.output)
        return job
