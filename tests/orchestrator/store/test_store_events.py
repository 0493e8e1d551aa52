"""Job events: write-behind, flush, resume after a seq."""

from __future__ import annotations

import pytest

from orchestrator.store import StoreError
from tests.orchestrator.store.job_factory import event


async def test_append_flush_and_read_after_seq(store):
    store.append_events([event("a", s) for s in (1, 2, 3)])
    store.append_events([event("b", 1)])
    store.append_events([event("a", s) for s in (4, 5)])
    await store.flush()
    assert [e.seq for e in await store.events("a")] == [1, 2, 3, 4, 5]
    assert [e.seq for e in await store.events("a", after_seq=3)] == [4, 5]
    assert await store.events("a", after_seq=5) == []
    assert await store.events("b") == [event("b", 1)]  # the message round-trips


async def test_events_come_back_in_seq_order_whatever_the_write_order(store):
    store.append_events([event("a", s) for s in (3, 1, 2)])
    await store.flush()
    assert [e.seq for e in await store.events("a")] == [1, 2, 3]


async def test_close_flushes_queued_events(target):
    store = await target.open()
    store.append_events([event("a", s) for s in range(1, 101)])
    await store.close()
    store = await target.open()
    try:
        assert len(await store.events("a")) == 100
    finally:
        await store.close()


async def test_a_failed_write_behind_surfaces_at_the_next_flush_only(store):
    store.append_events([event("a", 1)])
    await store.flush()
    store.append_events([event("a", 1)])  # duplicate (job_id, seq)
    store.append_events([event("a", 2)])  # same batch, still written
    with pytest.raises(StoreError, match="write-behind failed"):
        await store.flush()
    await store.flush()  # reported once
    assert [e.seq for e in await store.events("a")] == [1, 2]


async def test_append_nothing_is_a_no_op(store):
    store.append_events([])
    await store.flush()
