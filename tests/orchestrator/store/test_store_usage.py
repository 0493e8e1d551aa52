"""The usage ledger, quotas and credit (revision 0003), on both backends."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from orchestrator.store import DuplicateKey, JobRow
from orchestrator.store.store import EarningRow, TenantRow, UsageRow
from tests.orchestrator.store.job_factory import make_job
from tests.orchestrator.store.migrations_helper import HEAD, db_state, insert_old_tenant, migrate_to

T0 = 1_700_000_000.0


def record(i: int, tenant: str = "t-a", at: float = T0, **kw) -> UsageRow:
    values = dict(job_id=f"job-{i:04d}", tenant_id=tenant, model_ref="file:/m", status="succeeded",
                  finished_at=at, created_at=at - 3, pool_id="pool-1", provider_id="pool-1",
                  prompt_tokens=10 + i, completion_tokens=100 + i, attempts=1, started_at=at - 2,
                  duration_ms=2000, queue_ms=1000, vram_byte_seconds=2.5e9)
    return UsageRow(**{**values, **kw})


async def test_migration_0003_is_head_and_agrees_with_schema_py(store, target):
    revision, tables, diff, tenant_columns = await db_state(target, "tenants")
    assert revision == HEAD  # 0003, or a later migration on top of it (0005: pins)
    assert "usage_records" in tables and "submit_rate_per_second" in tenant_columns
    assert diff == []


async def test_0003_upgrades_a_0002_database_and_keeps_its_tenants(target):
    await migrate_to(target, "0002")
    await insert_old_tenant(target)
    store = await target.open()  # migrates to head
    try:
        assert await store.get_tenant("t-old") == TenantRow(
            id="t-old", name="old", created_at=1.0, credit_tokens=7, submit_rate_per_second=None)
        assert await store.usage_records() == []
    finally:
        await store.close()


async def test_records_are_written_behind_in_few_commits_and_read_back(store):
    before = store.commits
    for i in range(40):
        store.append_usage([record(i, at=T0 + i)])
    await store.settle()
    assert store.commits - before < 40
    got = await store.usage_records()
    assert got == [record(i, at=T0 + i) for i in range(40)]


async def test_a_period_is_start_inclusive_end_exclusive_and_a_tenant_filter_applies(store):
    store.append_usage([record(1, "t-a", T0), record(2, "t-b", T0 + 10),
                        record(3, "t-a", T0 + 20), record(4, "t-a", T0 + 30)])
    await store.settle()

    def ids(rows):
        return [r.job_id for r in rows]
    assert ids(await store.usage_records(start=T0 + 10, end=T0 + 30)) == ["job-0002", "job-0003"]
    assert ids(await store.usage_records("t-a", start=T0 + 10)) == ["job-0003", "job-0004"]
    assert ids(await store.usage_records("t-a", end=T0 + 20)) == ["job-0001"]
    assert ids(await store.usage_records("t-nobody")) == []
    assert ids(await store.usage_records(limit=2)) == ["job-0001", "job-0002"]


@pytest.mark.parametrize("settle_between", [False, True], ids=["same-batch", "later-batch"])
async def test_a_job_recorded_again_replaces_its_record_and_never_counts_twice(store,
                                                                              settle_between):
    store.append_usage([record(1, completion_tokens=5)])
    if settle_between:
        await store.settle()
    store.append_usage([record(1, completion_tokens=50, status="failed", error_code="X")])
    await store.settle()
    [got] = await store.usage_records()
    assert (got.completion_tokens, got.status, got.error_code) == (50, "failed", "X")
    [earned] = await store.earnings()
    assert earned.jobs == 1 and earned.completion_tokens == 50


async def test_usage_rows_survive_a_batch_where_another_caller_collides(store):
    await store.insert_job(JobRow.from_job(make_job(1, key="k"), queue_order=1, priority=0))
    clash = store.insert_job(JobRow.from_job(make_job(2, key="k"), queue_order=2, priority=0))
    store.append_usage([record(1)])  # queued into the same batch as the colliding insert
    with pytest.raises(DuplicateKey):
        await clash
    await store.flush()
    assert [r.job_id for r in await store.usage_records()] == ["job-0001"]


async def test_earnings_sum_per_pool_and_provider_over_the_period(store):
    store.append_usage([
        record(1, pool_id="p1", provider_id="ed25519:aa"),
        record(2, pool_id="p2", provider_id="ed25519:aa", vram_byte_seconds=1.0),
        record(3, pool_id="p1", provider_id="ed25519:aa", vram_byte_seconds=0.5),
        record(4, pool_id="p3", provider_id="p3", at=T0 + 100),
        # cancelled while queued: ran nowhere, earns nobody anything
        record(5, pool_id="", provider_id="", status="cancelled", prompt_tokens=0,
               completion_tokens=0, vram_byte_seconds=0.0),
    ])
    await store.settle()
    assert await store.earnings(end=T0 + 100) == [
        EarningRow("p1", "ed25519:aa", 2, 11 + 13, 101 + 103, 2.5e9 + 0.5),
        EarningRow("p2", "ed25519:aa", 1, 12, 102, 1.0),
    ]
    assert [e.pool_id for e in await store.earnings()] == ["p1", "p2", "p3"]
    assert await store.earnings(start=T0 + 101) == []


async def test_set_quota_replaces_the_quota_and_add_credit_counts_every_call(store):
    await store.create_tenant(TenantRow(id="t-a", name="a", created_at=1.0, token_budget=5))
    row = await store.set_quota("t-a", max_concurrent_jobs=3, vram_ceiling_bytes=1 << 30,
                                token_budget=None, auto_refill=True, submit_rate_per_second=2.5)
    assert row == TenantRow(id="t-a", name="a", created_at=1.0, max_concurrent_jobs=3,
                            vram_ceiling_bytes=1 << 30, token_budget=None, auto_refill=True,
                            submit_rate_per_second=2.5)
    assert await store.get_tenant("t-a") == row
    assert await store.set_quota("t-none", max_concurrent_jobs=None, vram_ceiling_bytes=None,
                                 token_budget=None, auto_refill=False,
                                 submit_rate_per_second=None) is None
    await asyncio.gather(*(store.add_credit("t-a", 5) for _ in range(10)))
    after = await store.add_credit("t-a", -20)
    assert after.credit_tokens == 30
    assert dataclasses.replace(after, credit_tokens=0) == row
    assert await store.add_credit("t-none", 5) is None
