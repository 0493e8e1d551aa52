"""Tenants, API keys and the append-only audit log (revision 0002), on both backends."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.store import DuplicateKey, JobRow, StoreError
from orchestrator.store.store import ApiKeyRow, AuditRow, TenantRow
from tests.orchestrator.store.job_factory import make_job
from tests.orchestrator.store.migrations_helper import HEAD, db_state


def tenant(i: int, **kw) -> TenantRow:
    return TenantRow(id=f"t-{i:04d}", name=f"tenant-{i}", created_at=1_700_000_000 + i, **kw)


def key(i: int, tenant_id: str = "t-0001", scope: str = "client", **kw) -> ApiKeyRow:
    return ApiKeyRow(id=f"{i:016x}", tenant_id=tenant_id, scope=scope, prefix=f"lo_{i:016x}",
                     salt="ab" * 16, hash="cd" * 32, created_at=1_700_000_100 + i, **kw)


def entry(i: int, **kw) -> AuditRow:
    return AuditRow(time=1_700_000_200 + i, principal=f"key-{i}", action="AdminService/ListApiKeys",
                    outcome="OK", target=f"target-{i}", correlation_id=f"c-{i}", **kw)


async def test_migrations_through_0002_reach_head_and_agree_with_schema_py(store, target):
    revision, tables, diff = await db_state(target)
    assert revision == HEAD  # 0002 or a later migration on top of it
    assert {"tenants", "api_keys", "audit_log"} <= tables
    assert diff == []


async def test_tenants_round_trip_with_quota_columns_and_unique_names(store):
    await store.create_tenant(tenant(1))
    await store.create_tenant(tenant(2, max_concurrent_jobs=4, vram_ceiling_bytes=8 << 30,
                                     token_budget=10**9, credit_tokens=5, auto_refill=True))
    assert await store.list_tenants() == [
        tenant(1), tenant(2, max_concurrent_jobs=4, vram_ceiling_bytes=8 << 30,
                          token_budget=10**9, credit_tokens=5, auto_refill=True)]
    assert (await store.get_tenant("t-0001")) == tenant(1)
    assert (await store.find_tenant("tenant-2")).id == "t-0002"
    assert await store.get_tenant("t-9999") is None
    with pytest.raises(DuplicateKey) as dup:
        await store.create_tenant(dataclasses.replace(tenant(3), name="tenant-1"))
    assert dup.value.column == "name"
    with pytest.raises(DuplicateKey) as dup:
        await store.create_tenant(dataclasses.replace(tenant(1), name="other"))
    assert dup.value.column == "id"
    assert len(await store.list_tenants()) == 2


async def test_api_keys_are_listed_per_tenant_and_revoked_once(store):
    await store.create_tenant(tenant(1))
    await store.create_tenant(tenant(2))
    await store.insert_api_key(key(1))
    await store.insert_api_key(key(2, tenant_id="t-0002", scope="admin", name="ops"))
    assert [k.id for k in await store.list_api_keys()] == [key(1).id, key(2).id]
    assert await store.list_api_keys("t-0002") == [key(2, tenant_id="t-0002", scope="admin",
                                                       name="ops")]
    first = await store.revoke_api_key(key(1).id, at=1_800_000_000)
    again = await store.revoke_api_key(key(1).id, at=1_900_000_000)
    assert first.revoked and again.revoked_at == 1_800_000_000
    assert await store.revoke_api_key("nope") is None
    assert not (await store.get_api_key(key(2).id)).revoked


async def test_api_key_ids_are_unique_and_need_an_existing_tenant(store):
    await store.create_tenant(tenant(1))
    await store.insert_api_key(key(1))
    with pytest.raises(DuplicateKey):
        await store.insert_api_key(key(1))
    with pytest.raises(StoreError):
        await store.insert_api_key(key(2, tenant_id="t-missing"))
    with pytest.raises(StoreError):  # the CHECK constraint
        await store.insert_api_key(key(3, scope="root"))
    assert [k.id for k in await store.list_api_keys()] == [key(1).id]


async def test_last_use_is_written_behind(store):
    await store.create_tenant(tenant(1))
    await store.insert_api_key(key(1))
    store.touch_api_key(key(1).id, 1_700_000_500.25)
    await store.flush()
    assert (await store.get_api_key(key(1).id)).last_used_at == 1_700_000_500.25


async def test_audit_entries_get_increasing_ids_in_few_commits_and_page(store):
    before = store.commits
    for i in range(50):
        store.append_audit([entry(i)])
    await store.settle()
    assert store.commits - before < 50  # write-behind batches them
    page = await store.audit_entries(limit=20)
    assert [e.principal for e in page] == [f"key-{i}" for i in range(20)]
    ids = [e.id for e in page]
    assert ids == sorted(ids) and len(set(ids)) == 20
    rest = await store.audit_entries(after_id=ids[-1], limit=1000)
    assert [e.principal for e in rest] == [f"key-{i}" for i in range(20, 50)]
    assert dataclasses.replace(rest[0], id=0) == entry(20)


async def test_oversized_audit_fields_are_cut_not_lost(store):
    store.append_audit([AuditRow(time=1.0, principal="p" * 500, action="a", outcome="o" * 100,
                                 target="t" * 1000, detail="d" * 10_000)])
    await store.settle()
    [got] = await store.audit_entries()
    assert (len(got.principal), len(got.outcome), len(got.target), len(got.detail)) == (
        128, 64, 255, 10_000)


@pytest.mark.parametrize("statement", [
    "UPDATE audit_log SET outcome = 'OK_FORGED'",
    "DELETE FROM audit_log",
], ids=["update", "delete"])
async def test_the_database_refuses_to_rewrite_the_audit_log(store, target, statement):
    store.append_audit([entry(1)])
    await store.settle()
    engine = target.engine()
    try:
        with pytest.raises(Exception, match="append-only"):
            async with engine.begin() as conn:
                await conn.exec_driver_sql(statement)
    finally:
        await engine.dispose()
    assert [e.outcome for e in await store.audit_entries()] == ["OK"]


async def test_truncate_of_the_audit_log_is_refused_on_postgresql(store, target):
    if target.backend != "postgresql":
        pytest.skip("SQLite has no TRUNCATE")
    store.append_audit([entry(1)])
    await store.settle()
    engine = target.engine()
    try:
        with pytest.raises(Exception, match="append-only"):
            async with engine.begin() as conn:
                await conn.exec_driver_sql("TRUNCATE audit_log")
    finally:
        await engine.dispose()
    assert len(await store.audit_entries()) == 1


async def test_audit_entries_survive_a_batch_where_another_caller_collides(store):
    await store.insert_job(JobRow.from_job(make_job(1, key="k"), queue_order=1, priority=0))
    clash = store.insert_job(JobRow.from_job(make_job(2, key="k"), queue_order=2, priority=0))
    store.append_audit([entry(1)])  # queued into the same batch as the colliding insert
    with pytest.raises(DuplicateKey):
        await clash
    await store.flush()
    assert [e.principal for e in await store.audit_entries()] == ["key-1"]
