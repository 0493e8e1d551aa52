"""The Orchestrator in-process over a real SQLite store (no pools: nothing is dispatched)."""

import asyncio

import pytest

from common.config import Config
from common.errors import OrchError
from llama_orch.v1 import common_pb2 as C, errors_pb2, events_pb2 as E
from orchestrator.core import Orchestrator
from orchestrator.store import Store
from orchestrator.types import JobState


def spec(prompt="the fox", **sampling):
    return C.JobSpec(model="tiny", prompt=prompt, sampling=C.SamplingParams(**sampling))


@pytest.fixture
async def make(tmp_path):
    made = []

    async def factory(**orchestrator):
        cfg = Config()
        for k, v in orchestrator.items():
            setattr(cfg.orchestrator, k, v)
        store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}")
        orch = Orchestrator(cfg, store=store)
        await orch.start()
        made.append((orch, store))
        return orch, store
    yield factory
    for orch, store in made:
        await orch.stop()
        await store.close()


async def test_invalid_input_stores_nothing(make):
    orch, store = await make()
    with pytest.raises(OrchError) as err:
        await orch.submit(spec(temperature=9))
    assert err.value.code == "INVALID_ARGUMENT"
    assert await store.count_by_status() == {}


async def test_submit_is_durable_and_never_refused_for_capacity(make):
    orch, store = await make()
    jobs = [(await orch.submit(spec(seed=i)))[0] for i in range(50)]  # no pool at all
    assert all(j.state is JobState.QUEUED for j in jobs)
    assert (await store.count_by_status())[C.JOB_STATUS_QUEUED] == 50


async def test_idempotency_key_returns_the_same_job_or_refuses_a_different_request(make):
    orch, _ = await make()
    first, existing = await orch.submit(spec(), idempotency_key="k1")
    again, existing2 = await orch.submit(spec(), idempotency_key="k1")
    assert (again.job_id, existing, existing2) == (first.job_id, False, True)
    with pytest.raises(OrchError) as err:
        await orch.submit(spec("another prompt"), idempotency_key="k1")
    assert err.value.code == "IDEMPOTENCY_CONFLICT"


async def test_cancel_unknown_is_not_found_and_cancel_is_idempotent(make):
    orch, store = await make()
    with pytest.raises(OrchError) as err:
        await orch.cancel("job-nope")
    assert err.value.code == "NOT_FOUND"
    job, _ = await orch.submit(spec())
    await orch.cancel(job.job_id)
    again = await orch.cancel(job.job_id)  # a finished job: its recorded outcome
    assert again.state is JobState.CANCELLED
    events = [e async for e in job.follow(0)]
    assert events[-1].WhichOneof("kind") == "error" and events[-1].error.code == errors_pb2.ERROR_CODE_CANCELLED
    assert (await store.get_job(job.job_id)).job.status == C.JOB_STATUS_CANCELLED


async def test_a_deadline_expires_a_queued_job(make):
    orch, store = await make()
    job, _ = await orch.submit(C.JobSpec(model="tiny", prompt="the fox", deadline_ms=50))
    final = [e async for e in job.follow(0)][-1]
    assert final.WhichOneof("kind") == "error"
    assert job.state is JobState.FAILED and job.error.code == "DEADLINE_EXCEEDED"


async def test_restart_resumes_queued_jobs_in_order_with_their_events(make):
    orch, store = await make()
    ids = [(await orch.submit(spec(seed=i), idempotency_key=f"r{i}"))[0].job_id for i in range(3)]
    await orch.stop()
    again, _ = await make()
    assert list(again.queue) == ids
    job = await again.get(ids[1])
    assert job.state is JobState.QUEUED and job.events[0].WhichOneof("kind") == "queued"
    assert job.admitted.seed == 1
    same, existing = await again.submit(spec(seed=1), idempotency_key="r1")  # key survives restart
    assert existing and same.job_id == ids[1]
    later, _ = await again.submit(spec(seed=9))
    assert later.order > job.order


async def test_the_optimizer_runs_while_the_queue_is_deep(make):
    orch, _ = await make(optimizer_interval_s=0.05, optimizer_threshold=2)
    for i in range(5):
        await orch.submit(spec(seed=i))
    runs = orch.facts.watch([E.FACT_KIND_OPTIMIZER_RUN])
    fact = await asyncio.wait_for(anext(runs), 10)
    assert fact.attributes["queued"] == 5


async def test_only_the_newest_finished_jobs_stay_in_memory_older_ones_come_from_the_store(make):
    from orchestrator.core import FINISHED_IN_MEMORY
    orch, store = await make()
    jobs = []
    for i in range(FINISHED_IN_MEMORY + 5):
        job, _ = await orch.submit(spec(seed=i))
        await orch.cancel(job.job_id)
        jobs.append(job)
    # A cancelled job retires once its outcome is committed: wait until the last did.
    async with asyncio.timeout(30):
        while not orch._finished or orch._finished[-1] != jobs[-1].job_id:  # noqa: SLF001
            await asyncio.sleep(0.01)
    finished_in_memory = [j for j in jobs if j.job_id in orch.jobs]
    assert finished_in_memory == jobs[-FINISHED_IN_MEMORY:]
    oldest = await orch.get(jobs[0].job_id)  # from the store, with its whole event log
    assert oldest is not jobs[0] and oldest.state is JobState.CANCELLED
    assert [e.seq for e in oldest.events] == [e.seq for e in jobs[0].events]
    assert oldest.events[-1].WhichOneof("kind") == "error"
