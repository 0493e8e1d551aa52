"""A submitter that goes away while its job's row is being committed (a client that
disconnects: grpc.aio cancels the handler) leaves no half-admitted job behind.

The commit is slowed in the writer's thread (a busy disk) so the cancel lands while
the insert is in flight; the insert then commits anyway, as the writer promises."""

import asyncio
import time

import pytest

from common.config import Config
from llama_orch.v1 import common_pb2 as C, events_pb2 as E
from orchestrator.core import Orchestrator
from orchestrator.store import Store
from orchestrator.types import JobState


@pytest.fixture
async def orch(tmp_path):
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}")
    o = Orchestrator(Config(), store=store)
    await o.start()
    direct = store._writer._direct
    real = direct.transaction

    def slow(fn):
        time.sleep(0.3)
        return real(fn)
    direct.transaction = slow
    yield o
    direct.transaction = real
    await o.stop()
    await store.close()


async def left_during_insert(orch, **kwargs) -> None:
    task = asyncio.create_task(orch.submit(C.JobSpec(model="tiny", prompt="the fox"), **kwargs))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def until(cond) -> None:
    async def wait():
        while not cond():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(wait(), 5)


async def test_a_retry_with_the_key_gets_the_live_job(orch):
    await left_during_insert(orch, idempotency_key="k1")
    # The retry comes while the first insert is still in flight, and again after it.
    job, existing = await orch.submit(C.JobSpec(model="tiny", prompt="the fox"),
                                      idempotency_key="k1")
    assert existing and job.job_id in orch.jobs and job.job_id in orch.queue
    again, existing = await orch.submit(C.JobSpec(model="tiny", prompt="the fox"),
                                        idempotency_key="k1")
    assert existing and again is job and job.state is JobState.QUEUED
    assert (await orch.store.get_job(job.job_id)) is not None
    assert [e.WhichOneof("kind") for e in job.events] == ["queued"]


async def test_without_a_key_the_committed_job_shows_its_events(orch):
    await left_during_insert(orch)
    (job,) = orch.jobs.values()
    await until(lambda: not job.reserving)
    assert (await orch.store.get_job(job.job_id)) is not None
    job.append(tokens=E.JobTokens(text="x", token_ids=[1]))
    assert job.visible_seq == job.last_seq  # within the committed reservation


async def test_a_streaming_submitter_that_left_has_its_job_cancelled(orch):
    await left_during_insert(orch, abandon_cancels=True)
    (job,) = orch.jobs.values()
    events = [e async for e in job.follow(0)]  # to its final event, once its row is saved
    assert events[-1].error.message == "the client went away before the job was admitted"
    assert job.state is JobState.CANCELLED
    row = await orch.store.get_job(job.job_id)
    assert row.job.status == C.JOB_STATUS_CANCELLED
