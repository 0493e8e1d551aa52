"""Realistic Job and JobEvent messages for the store's tests."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from llama_orch.v1 import common_pb2, errors_pb2, events_pb2

QUEUED = common_pb2.JOB_STATUS_QUEUED
DISPATCHED = common_pb2.JOB_STATUS_DISPATCHED
RUNNING = common_pb2.JOB_STATUS_RUNNING
SUCCEEDED = common_pb2.JOB_STATUS_SUCCEEDED
FAILED = common_pb2.JOB_STATUS_FAILED
CANCELLED = common_pb2.JOB_STATUS_CANCELLED


def ts(seconds: float) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromNanoseconds(int(seconds * 1e9))
    return t


def make_job(i: int, *, status: int = QUEUED, key: str = "", **fields) -> common_pb2.Job:
    """A queued chat job as admission would build it."""
    spec = common_pb2.JobSpec(
        model="tiny", priority=common_pb2.PRIORITY_INTERACTIVE,
        chat=common_pb2.ChatMessages(messages=[
            common_pb2.ChatMessage(role="system", content="You are terse."),
            common_pb2.ChatMessage(role="user", content=f"Question {i}: why is the sky blue?"),
        ]),
        sampling=common_pb2.SamplingParams(temperature=0.7, seed=1000 + i, max_tokens=64),
        labels={"suite": "store"})
    job = common_pb2.Job(job_id=f"job-{i:06d}", spec=spec, status=status,
                         model_ref="file:/models/tiny", seed=1000 + i,
                         created_at=ts(1_700_000_000 + i), updated_at=ts(1_700_000_000 + i),
                         correlation_id=f"corr-{i}", idempotency_key=key)
    for name, value in fields.items():
        if isinstance(value, timestamp_pb2.Timestamp):
            getattr(job, name).CopyFrom(value)
        else:
            setattr(job, name, value)
    return job


def finished_job(i: int) -> common_pb2.Job:
    """A job with every kind of field set: the round-trip must keep all of it."""
    job = make_job(i, status=FAILED, key=f"key-{i}")
    job.spec.keep_output = True
    job.tenant_id = "tenant-a"
    job.attempts = 3
    job.started_at.CopyFrom(ts(1_700_000_010.25))
    job.finished_at.CopyFrom(ts(1_700_000_020.5))
    job.worker_id, job.pool_id = "w-1", "pool-1"
    job.error.CopyFrom(errors_pb2.ErrorDetail(code=errors_pb2.ERROR_CODE_WORKER_CRASHED,
                                              message="worker exited with signal 9"))
    job.usage.CopyFrom(common_pb2.Usage(prompt_tokens=12, completion_tokens=5, total_tokens=17))
    job.output = "Rayleigh scattering. ünïcødé ✓"
    job.finish_reason = "length"
    job.proof.CopyFrom(common_pb2.ProofRecord(seed=1000 + i, model_ref="file:/models/tiny",
                                              model_digest="sha256:ab", engine="hf",
                                              engine_version="5.23", device="cpu",
                                              token_hash="cd" * 32, token_count=5))
    job.last_seq = 7
    job.waiting_reason = ""
    return job


def event(job_id: str, seq: int) -> events_pb2.JobEvent:
    return events_pb2.JobEvent(job_id=job_id, seq=seq, time=ts(1_700_000_000 + seq),
                               tokens=events_pb2.JobTokens(text=f"t{seq}", token_ids=[seq]))
