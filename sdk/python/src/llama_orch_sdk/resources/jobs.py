"""client.jobs: the native job API (ClientService Submit, Generate, StreamJob, GetJob,
CancelJob, ListJobs).

A job's events are numbered 1, 2, 3, ... with no gaps, so a client that lost its
stream resumes with stream(job_id, from_seq=last_seen + 1) and gets exactly what it
missed. Closing a `generate` stream early cancels the job unless it was detached;
closing a `stream` never does (it only stops watching).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from llama_orch_sdk._gen.llama_orch.v1 import client_pb2, common_pb2
from llama_orch_sdk._transport import Each, Stream
from llama_orch_sdk.records import Job, JobEvent, JobPage
from llama_orch_sdk.resources import _spec
from llama_orch_sdk.resources._base import Resource

_STATUS = {name: common_pb2.JobStatus.Value("JOB_STATUS_" + name.upper())
           for name in ("queued", "dispatched", "running", "succeeded", "failed", "cancelled")}


def _event(response: Any) -> JobEvent:
    return JobEvent._from_proto(response.event)


def _statuses(status: str | Iterable[str] | None) -> list[int]:
    names = [status] if isinstance(status, str) else list(status or ())
    if unknown := [s for s in names if s not in _STATUS]:
        raise _spec.bad(f"unknown job status {unknown[0]!r}; one of {', '.join(_STATUS)}",
                        "status")
    return [_STATUS[s] for s in names]


class Jobs(Resource):
    def _spec(self, model: str, prompt: str | None, messages: Sequence[Any] | None,
              idempotency_key: str | None, **kw: Any) -> tuple[common_pb2.JobSpec, str]:
        if (prompt is None) == (messages is None):
            raise _spec.bad("give exactly one of prompt or messages",
                            "messages" if messages is not None else "prompt")
        job = {k: kw.pop(k) for k in ("priority", "detach", "user", "deadline_ms",
                                      "keep_output", "labels")}
        spec = _spec.job_spec(model, _spec.sampling(**kw), prompt=prompt,
                              messages=_spec.chat(messages) if messages is not None else None,
                              **job)
        return spec, _spec.checked("idempotency_key", idempotency_key, str, optional=True) or ""

    def submit(self, *, model: str, prompt: str | None = None,
               messages: Sequence[Any] | None = None, max_tokens: int | None = None,
               temperature: float | None = None, top_p: float | None = None,
               top_k: int | None = None, seed: int | None = None,
               stop: str | Sequence[str] | None = None, n: int | None = None,
               presence_penalty: float | None = None, frequency_penalty: float | None = None,
               logprobs: bool = False, top_logprobs: int | None = None,
               priority: str = "interactive", detach: bool = False,
               deadline_ms: int | None = None, keep_output: bool = False,
               user: str | None = None, labels: Mapping[str, str] | None = None,
               idempotency_key: str | None = None, timeout: float | None = None) -> str:
        """Admit a job and return its id at once (never refused for lack of capacity).

        Exactly one of `prompt` or `messages`. `keep_output` keeps the final text in the
        job record (jobs.get(id).output). A repeated `idempotency_key` returns the
        earlier job's id; reused for a different request, it raises ConflictError
        (IDEMPOTENCY_CONFLICT). `deadline_ms`: the job's deadline (default 5 min)."""
        spec, key = self._spec(
            model, prompt, messages, idempotency_key, max_tokens=max_tokens,
            temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, stop=stop, n=n,
            presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
            logprobs=logprobs, top_logprobs=top_logprobs, priority=priority, detach=detach,
            deadline_ms=deadline_ms, keep_output=keep_output, user=user, labels=labels)
        return self._t.unary(self._t.client.Submit,
                             client_pb2.SubmitRequest(spec=spec, idempotency_key=key),
                             lambda r: r.job.job_id, timeout=timeout)

    def generate(self, *, model: str, prompt: str | None = None,
                 messages: Sequence[Any] | None = None, max_tokens: int | None = None,
                 temperature: float | None = None, top_p: float | None = None,
                 top_k: int | None = None, seed: int | None = None,
                 stop: str | Sequence[str] | None = None, n: int | None = None,
                 presence_penalty: float | None = None, frequency_penalty: float | None = None,
                 logprobs: bool = False, top_logprobs: int | None = None,
                 priority: str = "interactive", detach: bool = False,
                 deadline_ms: int | None = None, keep_output: bool = False,
                 user: str | None = None, labels: Mapping[str, str] | None = None,
                 idempotency_key: str | None = None,
                 timeout: float | None = None) -> Stream[JobEvent]:
        """Submit and stream the job's events from the first (`queued`) to the last
        (`end` per choice, or `error`). Refusals raise from this call. Closing the stream
        early cancels the job, unless `detach`: then it runs on, and
        stream(job_id, from_seq=...) picks it up again. Arguments as in submit."""
        spec, key = self._spec(
            model, prompt, messages, idempotency_key, max_tokens=max_tokens,
            temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, stop=stop, n=n,
            presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
            logprobs=logprobs, top_logprobs=top_logprobs, priority=priority, detach=detach,
            deadline_ms=deadline_ms, keep_output=keep_output, user=user, labels=labels)
        return self._t.stream(self._t.client.Generate,
                              [client_pb2.GenerateRequest(spec=spec, idempotency_key=key)],
                              Each(_event), prime=True, timeout=timeout)

    def stream(self, job_id: str, *, from_seq: int = 1,
               timeout: float | None = None) -> Stream[JobEvent]:
        """The job's events with seq >= from_seq: those already recorded at once, then
        live ones until the job's last event. from_seq=1 (the default) is the whole
        stream; from_seq=job.last_seq + 1 only what comes next. A finished job's stream
        replays and ends. Errors (NOT_FOUND, RESUME_OUT_OF_RANGE past the last event + 1)
        raise on iteration."""
        if isinstance(from_seq, bool) or not isinstance(from_seq, int) or from_seq < 1:
            raise _spec.bad(f"from_seq must be an integer >= 1, got {from_seq!r}", "from_seq")
        request = client_pb2.StreamJobRequest(job_id=_spec.checked("job_id", job_id, str),
                                              after_seq=from_seq - 1)
        return self._t.stream(self._t.client.StreamJob, [request], Each(_event),
                              timeout=timeout)

    def get(self, job_id: str, *, timeout: float | None = None) -> Job:
        """The job's record; NotFoundError if there is no such job."""
        request = client_pb2.GetJobRequest(job_id=_spec.checked("job_id", job_id, str))
        return self._t.unary(self._t.client.GetJob, request,
                             lambda r: Job._from_proto(r.job), timeout=timeout)

    def cancel(self, job_id: str, *, timeout: float | None = None) -> Job:
        """Ask for cancellation (idempotent) and return the job's record: a running job
        finishes as "cancelled" shortly after; a finished job keeps its outcome."""
        request = client_pb2.CancelJobRequest(job_id=_spec.checked("job_id", job_id, str))
        return self._t.unary(self._t.client.CancelJob, request,
                             lambda r: Job._from_proto(r.job), timeout=timeout)

    def list(self, *, status: str | Iterable[str] | None = None, page_size: int | None = None,
             page_token: str | None = None, timeout: float | None = None) -> JobPage:
        """One page of jobs the orchestrator holds, optionally with the given status(es)
        ("queued", "running", "succeeded", ...)."""
        request = client_pb2.ListJobsRequest(
            statuses=_statuses(status),
            page_size=_spec.checked("page_size", page_size, int, optional=True) or 0,
            page_token=_spec.checked("page_token", page_token, str, optional=True) or "")
        return self._t.unary(self._t.client.ListJobs, request,
                             lambda r: JobPage(data=[Job._from_proto(j) for j in r.jobs],
                                               next_page_token=r.next_page_token),
                             timeout=timeout)
