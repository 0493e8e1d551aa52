"""The native API's records: jobs, their events, facts and workers, as frozen
dataclasses read from the orchestrator's messages, so protobuf never reaches callers.

Enums are short lower-case strings:
- Job.status: "queued", "dispatched", "running", "succeeded", "failed", "cancelled".
- Job.priority: "interactive" or "batch".
- JobEvent.type: "queued", "dispatched", "started", "tokens", "metrics", "divergence",
  "retrying", "end" or "error" (events.proto JobEvent.kind). A job's events carry
  seq 1, 2, 3, ... with no gaps; `end` (one per choice) or `error` come last.
- Fact.code: the stable dotted event code ("job.admitted", "worker.failed").
Times are seconds since the epoch (float), None when not reached yet.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from llama_orch_sdk import errors
from llama_orch_sdk._convert import enum_name, plain, seconds
from llama_orch_sdk._gen.llama_orch.v1 import common_pb2, errors_pb2, events_pb2
from llama_orch_sdk.types import ChatCompletionTokenLogprob, CompletionUsage, TopLogprob, _Object


def _usage(u: common_pb2.Usage) -> CompletionUsage:
    return CompletionUsage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
                           total_tokens=u.total_tokens)


def _logprob(e: events_pb2.TokenLogprobs) -> ChatCompletionTokenLogprob:
    return ChatCompletionTokenLogprob(
        token=e.token, logprob=e.logprob, bytes=list(e.token.encode()),
        top_logprobs=[TopLogprob(t.token, t.logprob, list(t.token.encode())) for t in e.top])


@dataclass(frozen=True)
class ErrorDetail(_Object):
    """Why a job failed (or why a retry happened): errors.proto ErrorDetail."""

    code: str
    message: str
    param: str = ""
    retryable: bool = False

    def exception(self) -> errors.LlamaOrchError:
        """The typed exception for this error, ready to raise."""
        return errors.error_for(self.code, self.message, param=self.param,
                                retryable=self.retryable)

    @classmethod
    def _from_proto(cls, d: errors_pb2.ErrorDetail) -> ErrorDetail:
        err = errors.from_detail(d)
        return cls(code=err.code, message=err.message, param=err.param, retryable=err.retryable)


@dataclass(frozen=True)
class Job(_Object):
    id: str
    status: str
    model: str
    model_ref: str = ""
    priority: str = "interactive"
    detach: bool = False
    seed: int = 0
    attempts: int = 0
    worker_id: str = ""
    pool_id: str = ""
    created_at: float | None = None
    updated_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    finish_reason: str = ""
    usage: CompletionUsage | None = None
    # The final text, when the job was submitted with keep_output.
    output: str = ""
    error: ErrorDetail | None = None
    # Highest event seq so far: stream(id, from_seq=last_seq + 1) gives only new events.
    last_seq: int = 0
    idempotency_key: str = ""
    correlation_id: str = ""
    # Why a queued job waits ("no ready worker", "quota", "retry backoff").
    waiting_reason: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")

    @classmethod
    def _from_proto(cls, j: common_pb2.Job) -> Job:
        return cls(
            id=j.job_id, status=enum_name(common_pb2.JobStatus.DESCRIPTOR, j.status, "JOB_STATUS_"),
            model=j.spec.model, model_ref=j.model_ref,
            priority=enum_name(common_pb2.Priority.DESCRIPTOR, j.spec.priority, "PRIORITY_")
            or "interactive",
            detach=j.spec.detach, seed=j.seed, attempts=j.attempts, worker_id=j.worker_id,
            pool_id=j.pool_id, created_at=seconds(j.created_at), updated_at=seconds(j.updated_at),
            started_at=seconds(j.started_at), finished_at=seconds(j.finished_at),
            finish_reason=j.finish_reason,
            usage=_usage(j.usage) if j.HasField("usage") else None, output=j.output,
            error=ErrorDetail._from_proto(j.error) if j.HasField("error") else None,
            last_seq=j.last_seq, idempotency_key=j.idempotency_key,
            correlation_id=j.correlation_id, waiting_reason=j.waiting_reason,
            labels=dict(j.spec.labels))


@dataclass(frozen=True)
class JobPage(_Object):
    """One page of `client.jobs.list()`; pass next_page_token back for the next one
    ("" on the last page). Iterating a page yields its jobs."""

    data: list[Job]
    next_page_token: str = ""

    def __iter__(self) -> Iterator[Job]:
        return iter(self.data)


# Fields lifted out of an event's kind into JobEvent's own attributes.
_LIFTED = {"text", "token_ids", "logprobs", "choice_index", "finish_reason", "usage", "cause"}


@dataclass(frozen=True)
class JobEvent(_Object):
    """One event of a job's stream. The common payloads are attributes (`text` of
    tokens, `finish_reason` and `usage` of an end, `error` of an error or a retry);
    everything else the kind carries is in `details` (worker_id and attempt of
    dispatched, prompt_tokens and seed of started, tokens_per_second of metrics,
    proof of end, ...)."""

    job_id: str
    seq: int
    type: str
    time: float | None = None
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[ChatCompletionTokenLogprob] = field(default_factory=list)
    choice_index: int = 0
    finish_reason: str | None = None
    usage: CompletionUsage | None = None
    error: ErrorDetail | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        """Whether this is an `end` or an `error` (with n > 1, one end per choice)."""
        return self.type in ("end", "error")

    @classmethod
    def _from_proto(cls, e: events_pb2.JobEvent) -> JobEvent:
        kind = e.WhichOneof("kind") or ""
        common: dict[str, Any] = {"job_id": e.job_id, "seq": e.seq, "type": kind,
                                  "time": seconds(e.time)}
        if kind == "error":
            return cls(**common, error=ErrorDetail._from_proto(e.error))
        body = getattr(e, kind) if kind else None
        details = {k: v for k, v in plain(body).items() if k not in _LIFTED} if body else {}
        if kind == "tokens":
            t = e.tokens
            return cls(**common, text=t.text, token_ids=list(t.token_ids),
                       logprobs=[_logprob(x) for x in t.logprobs], choice_index=t.choice_index,
                       details=details)
        if kind == "end":
            return cls(**common, finish_reason=e.end.finish_reason or "stop",
                       usage=_usage(e.end.usage), choice_index=e.end.choice_index,
                       details=details)
        if kind == "retrying" and e.retrying.HasField("cause"):
            return cls(**common, error=ErrorDetail._from_proto(e.retrying.cause), details=details)
        return cls(**common, details=details)


@dataclass(frozen=True)
class Fact(_Object):
    """One state change of the system (events.proto Fact), as the fact stream sends it.
    `id` grows monotonically; watch(after_id=fact.id) resumes after it."""

    id: int
    code: str
    time: float | None = None
    level: str = "info"
    component: str = ""
    message: str = ""
    correlation_id: str = ""
    job_id: str = ""
    pool_id: str = ""
    worker_id: str = ""
    model_ref: str = ""
    # Kind-specific details (exit code, signal, stderr tail, decision reason, ...).
    attributes: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def _from_proto(cls, f: events_pb2.Fact) -> Fact:
        return cls(id=f.id, code=f.code, time=seconds(f.time),
                   level=enum_name(events_pb2.FactLevel.DESCRIPTOR, f.level, "FACT_LEVEL_")
                   or "info",
                   component=f.component, message=f.message, correlation_id=f.correlation_id,
                   job_id=f.job_id, pool_id=f.pool_id, worker_id=f.worker_id,
                   model_ref=f.model_ref, attributes=plain(f)["attributes"] or {})


@dataclass(frozen=True)
class Worker(_Object):
    """A worker process: one model on one or more devices of a pool.
    `state`: "starting", "ready", "busy", "draining", "stopping", "stopped", "failed"."""

    id: str
    pool_id: str
    model_ref: str
    state: str
    engine: str = ""
    device_ids: list[str] = field(default_factory=list)
    endpoint: str = ""
    pid: int = 0
    slots: int = 0
    active_jobs: int = 0
    # Bytes actually used on each device, by device id.
    device_bytes: dict[str, int] = field(default_factory=dict)
    started_at: float | None = None

    @classmethod
    def _from_proto(cls, w: common_pb2.WorkerInfo) -> Worker:
        return cls(id=w.worker_id, pool_id=w.pool_id, model_ref=w.model_ref,
                   state=enum_name(common_pb2.WorkerState.DESCRIPTOR, w.state, "WORKER_STATE_"),
                   engine=w.engine, device_ids=list(w.device_ids), endpoint=w.endpoint,
                   pid=w.pid, slots=w.slots, active_jobs=w.active_jobs,
                   device_bytes=dict(w.device_bytes), started_at=seconds(w.started_at))
