"""Events are visible before they are stored, within a committed seq reservation; a job
recovered after a crash continues above its reservation and says where its stored text
ends (orchestrator/jobs.py). Real SQLite store, in-process orchestrator, no pools."""

import asyncio
import contextlib
import sqlite3
import time

import pytest

from common.config import Config
from llama_orch.v1 import common_pb2 as C, events_pb2 as E
from orchestrator.core import Orchestrator
from orchestrator.jobs import SEQ_BLOCK
from orchestrator.store import Store, StoreClosed, StoreError
from orchestrator.types import JobState


@pytest.fixture
async def make(tmp_path):
    made = []

    async def factory():
        store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}")
        orch = Orchestrator(Config(), store=store)
        await orch.start()
        made.append((orch, store))
        return orch, store
    yield factory
    for orch, store in made:
        await orch.stop()
        await store.close()


def spec(seed=1):
    return C.JobSpec(model="tiny", prompt="the fox", sampling=C.SamplingParams(seed=seed))


def tokens(text: str, *ids: int) -> E.JobTokens:
    return E.JobTokens(text=text, token_ids=list(ids))


def fail_next_transaction(store: Store, error: str, *, after_s: float = 0.0) -> list[bool]:
    """The writer's next transaction fails with sqlite3's `error` (after `after_s`, a
    slow disk); later ones run. Returns a list that holds True once it failed."""
    direct = store._writer._direct  # noqa: SLF001 - a failure SQLite gives only rarely
    real, failed = direct.transaction, []

    def transaction(fn):
        if not failed:
            failed.append(True)
            time.sleep(after_s)
            raise sqlite3.OperationalError(error)
        return real(fn)
    direct.transaction = transaction
    return failed


async def test_an_event_is_visible_without_waiting_for_a_commit(make):
    orch, store = await make()
    job, _ = await orch.submit(spec())
    commits = store.commits
    event = job.append(tokens=tokens("once", 7))
    # No await since the append: nothing can have been committed, yet the event shows.
    assert store.commits == commits
    assert job.visible_seq == event.seq
    await store.flush()
    assert [e.seq for e in await store.events(job.job_id)][-1] == event.seq


async def test_events_past_the_reservation_wait_for_the_row_to_reserve_more(make):
    orch, store = await make()
    job, _ = await orch.submit(spec())
    while job.last_seq < SEQ_BLOCK:
        job.append(tokens=tokens("a", 1))
    assert job.visible_seq == SEQ_BLOCK
    beyond = job.append(tokens=tokens("b", 2))
    assert job.visible_seq == SEQ_BLOCK  # not shown before the bigger reservation commits
    seen = [e async for e in _until(job.follow(SEQ_BLOCK - 1), beyond.seq)]
    assert [e.seq for e in seen] == [SEQ_BLOCK, beyond.seq]
    row = await store.get_job(job.job_id)
    assert row.job.seq_reserved >= beyond.seq


async def _until(stream, seq):
    async for event in stream:
        yield event
        if event.seq >= seq:
            return


async def test_a_restart_continues_above_the_reservation_and_realigns_clients(make):
    orch, store = await make()
    job, _ = await orch.submit(spec())
    job.append(tokens=tokens("The fox", 5, 6))
    await store.flush()
    stored = job.last_seq
    # Two more events reach clients but never the store: the crash loses them.
    job.on_append = lambda *_: None
    job.append(tokens=tokens(" ran", 8))
    job.append(tokens=tokens(" off", 9))
    seen_by_client = job.last_seq
    again, _ = await make()
    back = await again.get(job.job_id)
    seqs = [e.seq for e in back.events]
    assert seqs[:stored] == list(range(1, stored + 1))
    realign = back.events[stored]
    assert realign.seq == SEQ_BLOCK + 1  # above anything any client can have seen
    assert realign.divergence.token_index == 2 and realign.divergence.char_offset == len("The fox")
    # A client that saw the lost events resumes from its last seq and gets the realignment.
    resumed = await asyncio.wait_for(anext(back.follow(seen_by_client)), 5)
    assert resumed.seq == realign.seq and resumed.WhichOneof("kind") == "divergence"
    row = await store.get_job(job.job_id)
    assert row.job.seq_reserved > SEQ_BLOCK  # the new block is committed before it shows


async def test_a_job_whose_row_the_store_refuses_is_withdrawn(make):
    orch, store = await make()
    facts = orch.facts.watch([E.FACT_KIND_JOB_FAILED])
    await store.close()
    with pytest.raises(Exception) as err:
        await orch.submit(spec())
    assert getattr(err.value, "code", None) == "UNAVAILABLE"
    assert not orch.queue and not orch.jobs  # nothing left to schedule or to look up
    fact = await asyncio.wait_for(anext(facts), 5)
    assert fact.attributes["error_code"] == "UNAVAILABLE"


def _count_row_writes(store: Store) -> list[str]:
    """job_ids of update_job calls from now on (the store still writes them)."""
    written: list[str] = []
    real = store.update_job

    async def update_job(row, **kw):
        written.append(row.job_id)
        return await real(row, **kw)
    store.update_job = update_job
    return written


async def test_a_new_jobs_first_events_ride_on_its_insert_not_a_second_row_write(make):
    orch, store = await make()
    written = _count_row_writes(store)
    job, _ = await orch.submit(spec())
    job.append(tokens=tokens("a", 1))
    await store.flush()
    await asyncio.sleep(0)  # a reservation task, had one been started, has run
    assert written == []
    assert job.visible_seq == job.last_seq  # shown: the insert's reservation covers them
    assert (await store.get_job(job.job_id)).job.seq_reserved >= SEQ_BLOCK


async def test_a_job_whose_insert_failed_gets_no_row_from_a_later_write(make):
    orch, store = await make()
    fail_next_transaction(store, "disk I/O error")
    facts = orch.facts.watch([E.FACT_KIND_JOB_FAILED])
    with pytest.raises(Exception) as err:
        await orch.submit(spec())
    assert getattr(err.value, "code", None) == "UNAVAILABLE"
    job_id = (await asyncio.wait_for(anext(facts), 5)).job_id
    await store.flush()  # the store works again
    assert await store.get_job(job_id) is None
    assert await store.events(job_id) == []  # its first event was not retried either
    again, _ = await orch.submit(spec(seed=2))
    assert await store.get_job(again.job_id) is not None


async def test_a_refused_job_that_was_already_running_leaves_no_row_or_usage(tmp_path):
    # Without a key a job is dispatched while its insert is in flight. When the store
    # refuses the insert, the job is withdrawn: its later row writes (dispatch's, the
    # outcome's) used to put its row back, with a usage record, for a job the client
    # was told does not exist.
    from tests.orchestrator.scripted_pool import ScriptedPool
    from tests.orchestrator.test_slots import FakeWorker, until
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}")
    cfg = Config()
    cfg.orchestrator.missed_heartbeats = 1000  # the scripted pool sends no heartbeats
    orch = Orchestrator(cfg, store=store)
    await orch.start()
    ScriptedPool(orch, "p", ["sim-0"])
    fake = await FakeWorker(1).start()
    orch.worker_ready("p", C.WorkerInfo(
        worker_id="w1", model_ref=orch.catalog.resolve("tiny").ref, device_ids=["sim-0"],
        endpoint=f"127.0.0.1:{fake.port}", state=C.WORKER_STATE_READY, slots=1), 0)
    # The insert's batch fails, slowly: long enough for the job to be dispatched.
    fail_next_transaction(store, "database is locked", after_s=0.3)
    try:
        facts = orch.facts.watch([E.FACT_KIND_JOB_FAILED])
        with pytest.raises(Exception) as err:
            await orch.submit(spec())
        assert getattr(err.value, "code", None) == "UNAVAILABLE"
        job_id = (await asyncio.wait_for(anext(facts), 5)).job_id
        assert fake.most == 1  # it had reached the worker: dispatched, then withdrawn
        await asyncio.sleep(0.3)  # its close (row write, usage) had its chance
        with contextlib.suppress(StoreError):
            await store.flush()
        await store.flush()
        assert await store.get_job(job_id) is None
        assert [u for u in await store.usage_records() if u.job_id == job_id] == []
        await until(lambda: not fake.gates)
    finally:
        await orch.stop()
        await store.close()
        await fake.stop()


async def test_a_failed_write_of_the_outcome_is_retried_until_it_lands(make):
    # One failed row write as the job ends used to leave it terminal in memory but
    # never closed: no final event (followers waited for good) and its row still
    # QUEUED, so a restart ran a cancelled job again.
    orch, store = await make()
    job, _ = await orch.submit(spec())
    await store.flush()
    failed = fail_next_transaction(store, "database is locked")
    cancelled = await orch.cancel(job.job_id)
    assert cancelled.state is JobState.CANCELLED
    async def to_the_end() -> list[str]:
        return [e.WhichOneof("kind") async for e in job.follow(0)]
    kinds = await asyncio.wait_for(to_the_end(), 10)  # it ends: the retry landed
    assert kinds[-1] == "error" and failed
    assert (await store.get_job(job.job_id)).status == C.JOB_STATUS_CANCELLED


async def test_a_reservation_pending_when_the_store_closes_stops_trying(make):
    # It retried every 0.5 s for good after shutdown, logging an error each time.
    orch, store = await make()
    job, _ = await orch.submit(spec())
    await store.flush()
    calls = []

    async def update_job(row, **kw):  # a failed write, then the store is closing
        calls.append(row.job_id)
        if len(calls) == 1:
            raise StoreError("database write failed: disk I/O error")
        raise StoreClosed("the store is closed")
    store.update_job = update_job
    for i in range(SEQ_BLOCK):  # the last is past the reservation: a row write is wanted
        job.append(tokens=tokens("a", i))
    await asyncio.sleep(1.6)  # three retry periods
    assert len(calls) == 2 and not job.reserving  # gave up once the store was closed
