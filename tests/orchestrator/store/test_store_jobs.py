"""Jobs: round-trip, idempotency keys, updates, the unfinished queue."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from orchestrator.store import DuplicateKey, JobRow
from tests.orchestrator.store.job_factory import (CANCELLED, DISPATCHED, QUEUED, RUNNING,
                                                  SUCCEEDED, finished_job, make_job, ts)


def row(i: int, *, queue_order: int | None = None, priority: int = 0, **job_fields) -> JobRow:
    return JobRow.from_job(make_job(i, **job_fields), priority=priority,
                           queue_order=i if queue_order is None else queue_order)


async def test_insert_then_get_round_trips_everything(store):
    job = finished_job(7)
    written = JobRow.from_job(job, queue_order=42, priority=1, not_before=1_700_000_100.5)
    await store.insert_job(written)
    got = await store.get_job(job.job_id)
    assert got.job == job  # the whole message, field for field
    assert got == written  # and every column
    assert (got.tenant_id, got.status, got.attempts, got.finished_at) == (
        "tenant-a", job.status, 3, 1_700_000_020.5)


async def test_get_unknown_job_is_none(store):
    assert await store.get_job("job-nope") is None
    assert await store.find_by_idempotency_key("nope") is None


async def test_find_by_idempotency_key(store):
    await store.insert_job(row(1, key="k-1"))
    await store.insert_job(row(2))
    assert (await store.find_by_idempotency_key("k-1")).job_id == "job-000001"


async def test_duplicate_idempotency_key_is_refused_and_names_the_holder(store):
    await store.insert_job(row(1, key="same"))
    with pytest.raises(DuplicateKey) as e:
        await store.insert_job(row(2, key="same"))
    assert (e.value.column, e.value.value, e.value.existing_job_id) == (
        "idempotency_key", "same", "job-000001")
    assert await store.get_job("job-000002") is None


async def test_jobs_without_a_key_never_collide(store):
    await asyncio.gather(*(store.insert_job(row(i)) for i in range(5)))
    assert (await store.count_by_status()) == {QUEUED: 5}


async def test_a_collision_fails_only_its_own_caller(store):
    # Queued together, so they share one batch: the batch is retried per operation.
    results = await asyncio.gather(
        *(store.insert_job(row(i, key="k" if i in (3, 6) else "")) for i in range(10)),
        return_exceptions=True)
    failed = [i for i, r in enumerate(results) if r is not None]
    assert failed == [6] and isinstance(results[6], DuplicateKey)
    assert results[6].existing_job_id == "job-000003"
    assert (await store.count_by_status()) == {QUEUED: 9}


async def test_duplicate_job_id_is_refused(store):
    await store.insert_job(row(1))
    with pytest.raises(DuplicateKey) as e:
        await store.insert_job(row(1))
    assert (e.value.column, e.value.value) == ("job_id", "job-000001")


async def test_update_job_changes_status_output_attempts(store):
    job = make_job(1, key="k")
    first = JobRow.from_job(job, queue_order=1, priority=0)
    await store.insert_job(first)
    done = make_job(1, key="k", status=SUCCEEDED, attempts=2, output="blue light scatters",
                    finish_reason="stop", finished_at=ts(1_700_000_050), updated_at=ts(1_700_000_050))
    await store.update_job(JobRow.from_job(done, queue_order=1, priority=0))
    got = await store.get_job("job-000001")
    assert (got.status, got.attempts, got.job.output, got.finished_at) == (
        SUCCEEDED, 2, "blue light scatters", 1_700_000_050)
    assert got.job == done
    assert got.created_at == first.created_at
    assert (await store.count_by_status()) == {SUCCEEDED: 1}


async def test_update_job_keeps_admission_columns(store):
    await store.insert_job(JobRow.from_job(make_job(1, key="k"), queue_order=1, priority=0,
                                           tenant_id="t1"))
    changed = dataclasses.replace(await store.get_job("job-000001"), tenant_id="t2",
                                  created_at=1.0, not_before=99.0)
    await store.update_job(changed)
    got = await store.get_job("job-000001")
    assert (got.tenant_id, got.created_at, got.not_before) == ("t1", 1_700_000_001, 99.0)


async def test_updates_of_one_job_in_one_batch_keep_the_last(store):
    await store.insert_job(row(1))
    await asyncio.gather(*(store.update_job(row(1, attempts=n)) for n in range(1, 6)))
    assert (await store.get_job("job-000001")).attempts == 5


async def test_load_unfinished_filters_and_orders_by_priority_then_queue_order(store):
    table = [  # (i, priority, queue_order, status)
        (1, 1, 1, QUEUED), (2, 0, 5, QUEUED), (3, 0, 2, RUNNING), (4, 1, 0, DISPATCHED),
        (5, 0, 1, SUCCEEDED), (6, 0, 3, CANCELLED), (7, 0, 4, QUEUED),
    ]
    await asyncio.gather(*(store.insert_job(row(i, priority=p, queue_order=o, status=s))
                           for i, p, o, s in table))
    got = [(r.priority, r.queue_order, r.job_id) for r in await store.load_unfinished()]
    assert got == [(0, 2, "job-000003"), (0, 4, "job-000007"), (0, 5, "job-000002"),
                   (1, 0, "job-000004"), (1, 1, "job-000001")]


async def test_max_queue_order_and_counts(store):
    assert await store.max_queue_order() == 0
    assert await store.count_by_status() == {}
    await store.insert_job(row(1, queue_order=10))
    await store.insert_job(row(2, queue_order=2**40, status=RUNNING))
    assert await store.max_queue_order() == 2**40
    assert await store.count_by_status() == {QUEUED: 1, RUNNING: 1}


def test_from_job_takes_the_columns_from_the_job():
    job = make_job(1, status=RUNNING, attempts=2, tenant_id="t-job")
    r = JobRow.from_job(job, queue_order=9, priority=1, not_before=5.0)
    assert (r.job_id, r.idempotency_key, r.tenant_id, r.status, r.attempts, r.model_ref) == (
        "job-000001", None, "t-job", RUNNING, 2, "file:/models/tiny")
    assert (r.queue_order, r.priority, r.not_before) == (9, 1, 5.0)
    assert (r.created_at, r.updated_at, r.finished_at) == (1_700_000_001, 1_700_000_001, 0.0)
    assert r.unfinished
    assert JobRow.from_job(job, queue_order=9, priority=1, tenant_id="t-arg").tenant_id == "t-arg"
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.status = SUCCEEDED
