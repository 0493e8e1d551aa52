"""Tenant limits and credit in the store, for orchestrator/quota.py.

    await load(store)              -> {tenant_id: TenantLimits}, every tenant
    await load_one(store, tenant)  -> TenantLimits | None (no such tenant)
    debit(store, tenant, tokens)   write-behind: credit_tokens -= tokens

A debit goes through the store's group-commit writer like the audit log's entries
(store.append_audit): the finishing path never waits for a commit, a burst of finished
jobs shares a few commits, and the UPDATE is relative (credit_tokens - n), so debits
and AddCredit (store.add_credit) never overwrite each other. A debit the store refuses
is logged (`quota.debit_lost`), never raised.
"""

from __future__ import annotations

from sqlalchemy import bindparam, update

from common import log
from orchestrator.quota import TenantLimits
from orchestrator.store import Store, StoreError
from orchestrator.store.schema import tenants
from orchestrator.store.writer import Kind

_DEBIT = (update(tenants).where(tenants.c.id == bindparam("tenant"))
          .values(credit_tokens=tenants.c.credit_tokens - bindparam("tokens")))


async def load(store: Store) -> dict[str, TenantLimits]:
    return {row.id: TenantLimits.of(row) for row in await store.list_tenants()}


async def load_one(store: Store, tenant_id: str) -> TenantLimits | None:
    """The tenant's limits as committed, after everything queued before (debits) is."""
    await store.settle()
    row = await store.get_tenant(tenant_id)
    return None if row is None else TenantLimits.of(row)


def debit(store: Store, tenant_id: str, tokens: int, job_id: str = "") -> None:
    try:
        store._check_open()  # noqa: SLF001 - the store's writer, as its own write-behind uses
        store._writer.submit(Kind.ROWS, (_DEBIT, [{"tenant": tenant_id, "tokens": int(tokens)}]),
                             wait=False)
    except StoreError as exc:
        log.emit("orchestrator", "quota.debit_lost", f"{tokens} tokens of {job_id} not "
                 f"drawn from the tenant's credit: {exc}", level="error", job_id=job_id)
