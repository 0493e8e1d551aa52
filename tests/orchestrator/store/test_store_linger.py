"""Write-behind lingers: a stream of events is a few commits, never one per event, and
anything a caller waits on still commits at once (store/writer.py).

A linger of an hour makes "still waiting" observable without a clock: nothing here
waits for the linger to pass."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.store import JobRow
from tests.orchestrator.store.job_factory import event, make_job

HANG_GUARD_S = 60
HOUR = 3600.0


def row(i: int) -> JobRow:
    return JobRow.from_job(make_job(i), queue_order=i, priority=0)


async def settle() -> None:
    for _ in range(50):  # let the writer task run as far as it can without a timer
        await asyncio.sleep(0)


async def test_events_linger_until_an_awaited_write_takes_them_along(target):
    store = await target.open(linger_s=HOUR)
    try:
        await store.insert_job(row(1))
        before = store.commits
        for seq in range(1, 101):
            store.append_events([event(make_job(1).job_id, seq)])
            await asyncio.sleep(0)
        await settle()
        assert store.commits == before  # 100 events, no commit yet: they linger
        await asyncio.wait_for(store.update_job(row(1)), HANG_GUARD_S)
        assert store.commits == before + 1  # one commit: the row and all 100 events
        assert [e.seq for e in await store.events(make_job(1).job_id)] == list(range(1, 101))
    finally:
        await store.close()


async def test_a_non_urgent_write_lingers_and_shares_the_next_commit(target):
    store = await target.open(linger_s=HOUR)
    try:
        await store.insert_job(row(1))
        before = store.commits
        lazy = asyncio.ensure_future(store.update_job(row(1), urgent=False))
        await settle()
        assert not lazy.done() and store.commits == before
        await asyncio.wait_for(store.insert_job(row(2)), HANG_GUARD_S)
        await asyncio.wait_for(lazy, HANG_GUARD_S)
        assert store.commits == before + 1
    finally:
        await store.close()


async def test_a_full_batch_does_not_wait(target):
    store = await target.open(linger_s=HOUR, batch_size=16)
    try:
        await store.insert_job(row(1))
        before = store.commits
        store.append_events([event(make_job(1).job_id, seq) for seq in range(1, 17)])
        await asyncio.wait_for(_until(lambda: store.commits > before), HANG_GUARD_S)
    finally:
        await store.close()


async def test_close_commits_lingering_events(target):
    store = await target.open(linger_s=HOUR)
    await store.insert_job(row(1))
    store.append_events([event(make_job(1).job_id, 1)])
    await asyncio.wait_for(store.close(), HANG_GUARD_S)
    reopened = await target.open()
    try:
        assert [e.seq for e in await reopened.events(make_job(1).job_id)] == [1]
    finally:
        await reopened.close()


@pytest.mark.parametrize("linger", [-1.0])
async def test_a_negative_linger_is_refused(target, linger):
    with pytest.raises(ValueError, match="linger_s"):
        await target.open(linger_s=linger)


async def _until(check) -> None:
    while not check():
        await asyncio.sleep(0.01)
