"""Group commit: many callers, few commits, every error reaches its caller."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.store import JobRow, StoreClosed, StoreError
from orchestrator.store import writer as writer_module
from tests.orchestrator.store.job_factory import QUEUED, event, make_job

# Only a guard against hangs; no test asserts on timing.
HANG_GUARD_S = 60


def row(i: int) -> JobRow:
    return JobRow.from_job(make_job(i, key=f"k-{i}"), queue_order=i, priority=0)


@pytest.mark.parametrize("n", [2_000, 10_000], ids=["2k", "10k-burst"])
async def test_concurrent_inserts_are_durable_in_few_commits(target, n):
    store = await target.open()
    before = store.commits
    await asyncio.wait_for(asyncio.gather(*(store.insert_job(row(i)) for i in range(n))),
                           HANG_GUARD_S)
    commits = store.commits - before
    await store.close()
    # 512-row batches would need n/512; anything near n means no grouping at all.
    assert commits <= n // 20
    reopened = await target.open()
    try:
        assert await reopened.count_by_status() == {QUEUED: n}
        assert await reopened.max_queue_order() == n - 1
    finally:
        await reopened.close()


async def test_batches_never_exceed_batch_size(target):
    store = await target.open(batch_size=8)
    try:
        before = store.commits
        await asyncio.gather(*(store.insert_job(row(i)) for i in range(100)))
        assert store.commits - before >= 100 // 8
    finally:
        await store.close()


async def test_a_lone_write_commits_at_once(store):
    before = store.commits
    await asyncio.wait_for(store.insert_job(row(1)), HANG_GUARD_S)
    assert store.commits == before + 1


async def test_a_dropped_table_reaches_the_callers_and_the_writer_survives(store, target):
    engine = target.engine()
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("DROP TABLE jobs")
    finally:
        await engine.dispose()
    results = await asyncio.wait_for(
        asyncio.gather(*(store.insert_job(row(i)) for i in range(20)), return_exceptions=True),
        HANG_GUARD_S)
    assert all(isinstance(r, StoreError) for r in results), results
    assert results[0].__cause__ is not None  # the driver's error travels along
    with pytest.raises(StoreError):
        await asyncio.wait_for(store.get_job("job-000001"), HANG_GUARD_S)
    # The writer is still there: job_events is intact.
    store.append_events([event("a", 1)])
    await asyncio.wait_for(store.flush(), HANG_GUARD_S)
    assert len(await store.events("a")) == 1


async def test_a_closed_store_refuses_everything(target):
    store = await target.open()
    await store.close()
    with pytest.raises(StoreClosed):
        await asyncio.wait_for(store.insert_job(row(1)), HANG_GUARD_S)
    with pytest.raises(StoreClosed):
        await store.update_job(row(1))
    with pytest.raises(StoreClosed):
        store.append_events([event("a", 1)])
    with pytest.raises(StoreClosed):
        await store.get_job("job-000001")


async def test_a_dead_writer_fails_pending_and_later_writes(store):
    waiting = [asyncio.ensure_future(store.insert_job(row(i))) for i in range(50)]
    store._writer._task.cancel()  # noqa: SLF001 - simulate the task dying
    results = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True),
                                     HANG_GUARD_S)
    assert all(r is None or isinstance(r, StoreClosed) for r in results)
    with pytest.raises(StoreClosed):
        await asyncio.wait_for(store.insert_job(row(99)), HANG_GUARD_S)


async def test_a_cancelled_caller_does_not_withdraw_its_write(store):
    pending = asyncio.ensure_future(store.insert_job(row(1)))
    await asyncio.sleep(0)  # queued
    pending.cancel()
    await store.flush()
    assert await store.get_job("job-000001") is not None


def flaky(store, failures: int) -> list[int]:
    """The next `failures` batches fail as a whole (a lock held too long, a disk error);
    returns the list that counts them."""
    writer = store._writer  # noqa: SLF001 - a failure the database gives only rarely
    real, failed = writer._in_transaction, []

    async def in_transaction(fn, **kwargs):
        if len(failed) < failures:
            failed.append(1)
            raise OSError("disk I/O error")
        return await real(fn, **kwargs)
    writer._in_transaction = in_transaction
    return failed


async def test_write_behind_events_of_a_failed_batch_are_written_on_a_retry(store, monkeypatch):
    # Events are shown to clients before they are written: one failed batch used to
    # drop them, leaving a hole in the stored log that no crash explains.
    monkeypatch.setattr(writer_module, "WRITE_BEHIND_RETRY_S", 0.01)
    failed = flaky(store, 2)
    store.append_events([event("a", 1), event("a", 2)])
    store.append_events([event("a", 3)])
    await asyncio.wait_for(store.flush(), HANG_GUARD_S)  # nothing to report: all written
    assert len(failed) == 2
    assert [e.seq for e in await store.events("a")] == [1, 2, 3]


async def test_write_behind_that_keeps_failing_is_reported_by_the_next_flush(store, monkeypatch):
    monkeypatch.setattr(writer_module, "WRITE_BEHIND_RETRY_S", 0.01)
    failed = flaky(store, writer_module.WRITE_BEHIND_TRIES)
    store.append_events([event("a", 1)])
    while len(failed) < writer_module.WRITE_BEHIND_TRIES:
        await asyncio.sleep(0.01)
    with pytest.raises(StoreError, match="write-behind failed"):
        await asyncio.wait_for(store.flush(), HANG_GUARD_S)
    assert await store.events("a") == []
    await store.flush()  # said once; the store works
