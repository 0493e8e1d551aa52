"""Runs one dispatched job on one worker and relays its events into the job's log.

The worker's stream (started, tokens*, metrics*, end | error) becomes JobEvents with
the job's own sequence numbers. A stream that breaks without a terminal event means
the worker died: WORKER_CRASHED (retryable). A worker with several slots relays several
jobs at once, each its own Execute stream over the worker's one channel.
"""

from __future__ import annotations

import asyncio
import time

import grpc

from common.errors import OrchError
from llama_orch.v1 import common_pb2, events_pb2, worker_pb2
from orchestrator.jobs import JobRecord
from orchestrator.registry import WorkerRecord


def execute_request(job: JobRecord) -> worker_pb2.ExecuteRequest:
    a = job.admitted
    remaining = int(a.deadline_ms - (time.time() - job.created_at) * 1000)
    return worker_pb2.ExecuteRequest(
        job_id=job.job_id, attempt=job.attempts, prompt=a.prompt,
        prompt_token_ids=list(a.prompt_ids), sampling=a.sampling,
        deadline_ms=max(1, remaining), correlation_id=job.correlation_id)


class Outcome:
    """What the relay ended with: success, or the error that ended it."""

    def __init__(self) -> None:
        self.error: OrchError | None = None
        self.ended = False


def start(job: JobRecord, worker: WorkerRecord) -> grpc.aio.UnaryStreamCall:
    """Begin the job's attempt on the worker: the Execute call, already on its way.
    Called from the scheduling cycle itself, so the request leaves in the loop turn
    that decided it rather than one later, when relay's task first runs."""
    job.replay.begin_attempt()
    job.usage.Clear()
    call = worker.stub().Execute(execute_request(job))
    job.call = call
    return call


async def relay(job: JobRecord, worker: WorkerRecord, call: grpc.aio.UnaryStreamCall,
                outcome: Outcome, on_started) -> None:
    """Stream the started `call`, appending events to `job` until a terminal one."""
    n = max(1, job.admitted.sampling.n)
    ends = 0
    try:
        async for resp in call:
            kind = resp.WhichOneof("event")
            if kind == "started":
                on_started(resp.started)
                job.append(started=resp.started)
            elif kind == "tokens":
                # A retried attempt replays with the same seed: never send a token twice.
                for event in job.replay.on_tokens(resp.tokens):
                    job.append(**event)
            elif kind == "metrics":
                job.append(metrics=resp.metrics)
            elif kind == "end":
                ends += 1
                _account(job, resp.end, first=ends == 1)
                if ends >= n:
                    outcome.ended = True
                    job.output = [job.replay.attempt_text(0)]
                    job.pending_end = resp.end  # appended once the outcome is durable
                    return
                if job.replay.on_end(resp.end.choice_index):
                    job.append(end=resp.end)
            elif kind == "error":
                outcome.error = OrchError.from_detail(resp.error)
                return
    except asyncio.CancelledError:
        # grpc.aio raises CancelledError, not AioRpcError, when we cancel the call
        # ourselves (worker or pool gone, cancel grace over). Only a cancellation of
        # this task itself (shutdown) propagates.
        task = asyncio.current_task()
        if not call.cancelled() or (task is not None and task.cancelling()):
            raise
        outcome.error = job.cancel_error if job.cancel_requested and job.cancel_error else OrchError(
            "WORKER_CRASHED", f"worker {worker.worker_id} went away mid-stream")
        return
    except grpc.aio.AioRpcError as exc:
        err = OrchError.from_rpc_error(exc)
        if err.code in ("UNAVAILABLE", "INTERNAL", "CANCELLED") and not job.cancel_requested:
            err = OrchError("WORKER_CRASHED",
                            f"worker {worker.worker_id} stopped mid-stream: {exc.details()}")
        outcome.error = err
        return
    finally:
        job.call = None
    outcome.error = OrchError("WORKER_CRASHED",
                              f"worker {worker.worker_id} ended the stream without a result")


def _account(job: JobRecord, end: events_pb2.JobEnd, *, first: bool) -> None:
    if first:
        job.finish_reason = end.finish_reason
        job.proof = common_pb2.ProofRecord()
        job.proof.CopyFrom(end.proof)
        job.usage.prompt_tokens = end.usage.prompt_tokens
    job.usage.completion_tokens += end.usage.completion_tokens
    job.usage.total_tokens = job.usage.prompt_tokens + job.usage.completion_tokens
