"""Jobs and their event logs.

A JobRecord is owned by the orchestrator's loop; every change to it is appended as a
JobEvent with the next per-job sequence number (1, 2, 3, ... with no gaps), so a client
that lost its stream resumes after the last seq it saw and gets exactly what it missed.
Terminal events are always last.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from google.protobuf import timestamp_pb2

from common.errors import OrchError
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


def new_job_id() -> str:
    return "job-" + uuid.uuid4().hex[:20]


def _ts(seconds: float) -> timestamp_pb2.Timestamp | None:
    if not seconds:
        return None
    t = timestamp_pb2.Timestamp()
    t.FromNanoseconds(int(seconds * 1e9))
    return t


@dataclass(eq=False)
class JobRecord:
    job_id: str
    spec: common_pb2.JobSpec
    admitted: Admitted
    correlation_id: str = ""
    idempotency_key: str = ""
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
    # Events up to this seq are committed; only those are streamed to clients.
    durable_seq: int = 0
    # Called with each appended event (persistence); None keeps events in memory only.
    on_append: object = None
    # Earliest time a requeued job may run again (retry backoff), epoch seconds.
    not_before: float = 0.0

    @property
    def priority(self) -> Priority:
        return self.admitted.priority

    @property
    def model_ref(self) -> str:
        return self.admitted.model.ref

    @property
    def last_seq(self) -> int:
        return len(self.events)

    def append(self, *, final: bool = False, **kind: object) -> events_pb2.JobEvent:
        """Append one event (e.g. append(tokens=JobTokens(...))) with the next seq.

        `final` marks the job's last event; nothing may follow it."""
        if self._closed:
            raise RuntimeError(f"{self.job_id}: event after the final event")
        now = time.time()
        event = events_pb2.JobEvent(job_id=self.job_id, seq=len(self.events) + 1,
                                    time=_ts(now), **kind)
        self.events.append(event)
        self.updated_at = now
        self._closed = final
        if self.on_append is None:
            self.mark_durable(event.seq)
        else:
            self.on_append(self, event)
        return event

    def mark_durable(self, seq: int) -> None:
        if seq > self.durable_seq:
            self.durable_seq = seq
            self._changed.set()
            self._changed = asyncio.Event()

    @property
    def done(self) -> bool:
        return self.state.terminal

    async def follow(self, after_seq: int = 0) -> AsyncIterator[events_pb2.JobEvent]:
        """Events with seq > after_seq, live, until the terminal state is reached."""
        if after_seq > self.last_seq:
            raise OrchError("RESUME_OUT_OF_RANGE",
                            f"after_seq {after_seq} is beyond the last event ({self.last_seq})",
                            param="after_seq")
        sent = after_seq
        while True:
            while sent < self.durable_seq:
                sent += 1
                yield self.events[sent - 1]
            if self._closed and sent >= len(self.events):
                return
            await self._changed.wait()

    def to_proto(self) -> common_pb2.Job:
        job = common_pb2.Job(
            job_id=self.job_id, spec=self.spec, status=_STATUS[self.state],
            model_ref=self.model_ref, attempts=self.attempts, worker_id=self.worker_id,
            pool_id=self.pool_id, created_at=_ts(self.created_at),
            updated_at=_ts(self.updated_at or self.created_at), started_at=_ts(self.started_at),
            finished_at=_ts(self.finished_at), usage=self.usage, finish_reason=self.finish_reason,
            seed=self.admitted.seed, last_seq=self.last_seq, correlation_id=self.correlation_id,
            idempotency_key=self.idempotency_key, waiting_reason=self.waiting_reason)
        if self.error is not None:
            job.error.CopyFrom(self.error.to_detail())
        if self.proof is not None:
            job.proof.CopyFrom(self.proof)
        if self.spec.keep_output and self.state.terminal:
            job.output = "".join(self.output)
        return job
