"""Store: the orchestrator's durable state (jobs and their events).

    store = await Store.open(url_for_data_dir(data_dir))   # migrates to head
    await store.insert_job(JobRow.from_job(job, queue_order=n, priority=p))
    store.append_events([event])                           # write-behind
    ...
    await store.close()                                    # flushes

Writes go through one group-commit writer (writer.py): insert_job and update_job
return once their row is committed (many concurrent callers share one commit);
append_events returns at once and is committed with the next batch; flush() waits
for everything queued so far. Reads run on the connection pool and see what has been
committed, so call flush() before reading events you just appended.

Every failure is a StoreError (errors.py); nothing waits forever.

Tenants and API keys (rare, operator-paced writes) commit in their own transaction and
return once durable. The audit log is append-only: append_audit is write-behind through
the same group-commit writer (an audited call never waits for a commit), and nothing
here updates or deletes an entry (the database refuses that too; see schema.py).

The usage ledger (0003) is written behind the same way (append_usage: an upsert on
job_id, so a job recorded again replaces its row) and read in aggregate for billing
exports (usage_records) and provider earnings (earnings, summed in the database),
over a period [start, end) of finished_at.

Pins (0005) are operator-paced like tenants: set_pin and delete_pins commit in their own
transaction and return once durable; load_pins reads them all back at start.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from llama_orch.v1 import events_pb2
from orchestrator.store.engine import make_engine, make_writer_engine, migrate
from orchestrator.store.errors import DuplicateKey, StoreClosed, StoreError
from orchestrator.store.rows import UNFINISHED, JobRow
from orchestrator.store.schema import (api_keys, audit_log, job_events, jobs, pins,
                                       policy_versions, tenants, usage_records)
from orchestrator.store.writer import Kind, Writer

DEFAULT_BATCH_SIZE = 512
# A streaming job's events wait this long for company before they commit.
DEFAULT_LINGER_S = 0.05


def url_for_data_dir(data_dir: Path) -> str:
    """The embedded default: `sqlite+aiosqlite:///<data_dir>/state.db` (absolute)."""
    return f"sqlite+aiosqlite:///{(Path(data_dir).expanduser().resolve() / 'state.db')}"


class Store:
    """Durable jobs and job events on SQLite or PostgreSQL. Create with `Store.open`."""

    def __init__(self, engine: AsyncEngine, writer: Writer):
        self._engine = engine
        self._writer = writer
        self._closed = False
        self._upsert_usage = _usage_upsert(engine.dialect.name)

    @classmethod
    async def open(cls, url: str, *, schema: str | None = None,
                   batch_size: int = DEFAULT_BATCH_SIZE,
                   linger_s: float = DEFAULT_LINGER_S) -> Store:
        """Connect, apply pending migrations, start the writer.

        `url`: sqlite+aiosqlite:///path (parent folders are created) or
        postgresql+asyncpg://user:pw@host/db. `schema`: PostgreSQL only, a schema of
        its own (created if missing). `batch_size`: most units per commit.
        `linger_s`: how long write-behind work may wait for company (store/writer.py)."""
        engine = make_engine(url, schema=schema)
        try:
            await migrate(engine, schema=schema)
        except Exception as e:
            await engine.dispose()
            raise StoreError(f"cannot open the store: {type(e).__name__}: {e}") from e
        return cls(engine, Writer(engine, batch_size=batch_size, linger_s=linger_s,
                                  sync_engine=make_writer_engine(url)))

    async def close(self) -> None:
        """Flush queued writes, stop the writer, release connections. Idempotent; raises
        the flush's StoreError (after releasing everything) if write-behind failed."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._writer.stop()
        finally:
            await self._engine.dispose()

    @property
    def dialect(self) -> str:
        """"sqlite" or "postgresql"."""
        return self._engine.dialect.name

    @property
    def commits(self) -> int:
        """Transactions the writer has committed (group commit: far fewer than writes)."""
        return self._writer.commits

    # ---- writes ------------------------------------------------------------------------

    async def insert_job(self, row: JobRow) -> None:
        """Insert a new job; durable when it returns. DuplicateKey if its
        idempotency_key (or job_id) is already taken — nothing written then."""
        await self._submit(Kind.INSERT, row.to_values())

    async def update_job(self, row: JobRow, *, urgent: bool = True) -> None:
        """Write the row's mutable columns (status, attempts, times, order, the Job
        message...) — an upsert on job_id; durable when it returns. Not `urgent`: it
        may wait for the writer's linger (store/writer.py) and share its commit."""
        await self._submit(Kind.UPSERT, row.to_values(), urgent=urgent)

    def append_events(self, events: Iterable[events_pb2.JobEvent]) -> None:
        """Queue events for writing and return at once (write-behind). A failure is
        logged and raised by the next flush(). StoreClosed after close()."""
        values = [{"job_id": e.job_id, "seq": e.seq, "event": e.SerializeToString()}
                  for e in events]
        if not values:
            return
        self._check_open()
        self._writer.submit(Kind.EVENTS, values, units=len(values), wait=False)

    async def flush(self) -> None:
        """Return once everything queued before the call is committed; raises StoreError
        if write-behind events failed since the previous flush."""
        self._check_open()
        await self._writer.flush()

    async def _submit(self, kind: Kind, values: dict, *, urgent: bool = True) -> None:
        self._check_open()
        await self._writer.submit(kind, values, urgent=urgent)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the store is closed")

    # ---- reads -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        self._check_open()
        try:
            async with self._engine.connect() as conn:
                yield conn
        except SQLAlchemyError as e:
            raise StoreError(f"database read failed: {type(e).__name__}: {e}") from e

    async def get_job(self, job_id: str) -> JobRow | None:
        async with self._read() as conn:
            r = (await conn.execute(select(jobs).where(jobs.c.job_id == job_id))).first()
        return JobRow.from_db(r) if r is not None else None

    async def find_by_idempotency_key(self, key: str) -> JobRow | None:
        async with self._read() as conn:
            r = (await conn.execute(select(jobs).where(jobs.c.idempotency_key == key))).first()
        return JobRow.from_db(r) if r is not None else None

    async def load_unfinished(self) -> list[JobRow]:
        """Jobs QUEUED, DISPATCHED or RUNNING, by (priority, queue_order) — what a
        restarting orchestrator resumes or requeues."""
        q = (select(jobs).where(jobs.c.status.in_(UNFINISHED))
             .order_by(jobs.c.priority, jobs.c.queue_order, jobs.c.job_id))
        async with self._read() as conn:
            rows = (await conn.execute(q)).all()
        return [JobRow.from_db(r) for r in rows]

    async def events(self, job_id: str, after_seq: int = 0) -> list[events_pb2.JobEvent]:
        """The job's committed events with seq > after_seq, in seq order."""
        q = (select(job_events.c.event)
             .where(job_events.c.job_id == job_id, job_events.c.seq > after_seq)
             .order_by(job_events.c.seq))
        async with self._read() as conn:
            blobs = (await conn.execute(q)).scalars().all()
        return [events_pb2.JobEvent.FromString(b) for b in blobs]

    async def max_queue_order(self) -> int:
        """Highest queue_order ever stored (0 when empty): continue numbering after it."""
        async with self._read() as conn:
            return int((await conn.execute(
                select(func.coalesce(func.max(jobs.c.queue_order), 0)))).scalar_one())

    async def count_by_status(self) -> dict[int, int]:
        """{JobStatus value: number of jobs}; statuses with no jobs are absent."""
        async with self._read() as conn:
            rows = (await conn.execute(
                select(jobs.c.status, func.count()).group_by(jobs.c.status))).all()
        return {int(status): int(n) for status, n in rows}

    # ---- tenants and API keys (revision 0002) ------------------------------------------

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        self._check_open()
        try:
            async with self._engine.execution_options(sqlite_begin="IMMEDIATE").begin() as conn:
                yield conn
        except IntegrityError:
            raise
        except SQLAlchemyError as e:
            raise StoreError(f"database write failed: {type(e).__name__}: {e}") from e

    async def create_tenant(self, row: TenantRow) -> None:
        """Insert a tenant; durable when it returns. DuplicateKey("name") if the name
        (or "id" if the id) is taken."""
        try:
            async with self._transaction() as conn:
                if (await conn.execute(select(tenants.c.id).where(
                        tenants.c.name == row.name))).first() is not None:
                    raise DuplicateKey("name", row.name)
                await conn.execute(insert(tenants), row.to_values())
        except IntegrityError as e:
            raise DuplicateKey("id", row.id) from e

    async def get_tenant(self, tenant_id: str) -> TenantRow | None:
        async with self._read() as conn:
            r = (await conn.execute(select(tenants).where(tenants.c.id == tenant_id))).first()
        return TenantRow.from_db(r) if r is not None else None

    async def find_tenant(self, name: str) -> TenantRow | None:
        async with self._read() as conn:
            r = (await conn.execute(select(tenants).where(tenants.c.name == name))).first()
        return TenantRow.from_db(r) if r is not None else None

    async def list_tenants(self) -> list[TenantRow]:
        """Every tenant, oldest first."""
        async with self._read() as conn:
            rows = (await conn.execute(
                select(tenants).order_by(tenants.c.created_at, tenants.c.id))).all()
        return [TenantRow.from_db(r) for r in rows]

    async def insert_api_key(self, row: ApiKeyRow) -> None:
        """Insert a key (its hash, never the secret); durable when it returns.
        DuplicateKey("id") on an id collision; StoreError if the tenant does not exist."""
        try:
            async with self._transaction() as conn:
                await conn.execute(insert(api_keys), row.to_values())
        except IntegrityError as e:
            async with self._read() as conn:
                taken = (await conn.execute(select(api_keys.c.id).where(
                    api_keys.c.id == row.id))).first() is not None
            if taken:
                raise DuplicateKey("id", row.id) from e
            raise StoreError(f"api key {row.id} not written: {e.orig}") from e

    async def get_api_key(self, key_id: str) -> ApiKeyRow | None:
        async with self._read() as conn:
            r = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        return ApiKeyRow.from_db(r) if r is not None else None

    async def list_api_keys(self, tenant_id: str = "") -> list[ApiKeyRow]:
        """Keys (revoked ones too), oldest first; only `tenant_id`'s when given."""
        q = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if tenant_id:
            q = q.where(api_keys.c.tenant_id == tenant_id)
        async with self._read() as conn:
            rows = (await conn.execute(q)).all()
        return [ApiKeyRow.from_db(r) for r in rows]

    async def revoke_api_key(self, key_id: str, at: float | None = None) -> ApiKeyRow | None:
        """Mark the key revoked (idempotent: the first revocation time stays); the row
        as it is now, or None when there is no such key."""
        async with self._transaction() as conn:
            await conn.execute(update(api_keys)
                               .where(api_keys.c.id == key_id, api_keys.c.revoked_at == 0)
                               .values(revoked_at=at or time.time()))
            r = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        return ApiKeyRow.from_db(r) if r is not None else None

    def touch_api_key(self, key_id: str, at: float) -> None:
        """Record a key's last use, write-behind (callers throttle this)."""
        self._check_open()
        self._writer.submit(Kind.ROWS, (_TOUCH_KEY, [{"key": key_id, "at": at}]), wait=False)

    # ---- the audit log (append-only) ---------------------------------------------------

    def append_audit(self, entries: Iterable[AuditRow]) -> None:
        """Queue audit entries and return at once (write-behind, like events); ids are
        assigned by the database in commit order."""
        values = [e.to_values() for e in entries]
        if not values:
            return
        self._check_open()
        self._writer.submit(Kind.ROWS, (_INSERT_AUDIT, values), units=len(values), wait=False)

    async def audit_entries(self, after_id: int = 0, limit: int = 100) -> list[AuditRow]:
        """Committed entries with id > after_id, oldest first, at most `limit`."""
        q = (select(audit_log).where(audit_log.c.id > after_id)
             .order_by(audit_log.c.id).limit(max(1, limit)))
        async with self._read() as conn:
            rows = (await conn.execute(q)).all()
        return [AuditRow.from_db(r) for r in rows]

    async def settle(self) -> None:
        """Wait until everything queued before the call is committed, like flush(), but
        leave write-behind failures to whoever flushes (they are logged either way)."""
        self._check_open()
        await self._writer.submit(Kind.FLUSH, None, units=0)

    # ---- quotas and credit (revision 0003: submit_rate_per_second) -----------------------

    async def set_quota(self, tenant_id: str, *, max_concurrent_jobs: int | None,
                        vram_ceiling_bytes: int | None, token_budget: int | None,
                        auto_refill: bool, submit_rate_per_second: float | None
                        ) -> TenantRow | None:
        """Replace the tenant's quota as a whole (None = unlimited); the row as it is
        now, or None when there is no such tenant. Durable when it returns."""
        async with self._transaction() as conn:
            await conn.execute(update(tenants).where(tenants.c.id == tenant_id).values(
                max_concurrent_jobs=max_concurrent_jobs, vram_ceiling_bytes=vram_ceiling_bytes,
                token_budget=token_budget, auto_refill=auto_refill,
                submit_rate_per_second=submit_rate_per_second))
            r = (await conn.execute(select(tenants).where(tenants.c.id == tenant_id))).first()
        return TenantRow.from_db(r) if r is not None else None

    async def add_credit(self, tenant_id: str, tokens: int) -> TenantRow | None:
        """Add `tokens` (negative: take away) to the tenant's credit, atomically (two
        concurrent calls both count); the row as it is now, or None for no such tenant."""
        async with self._transaction() as conn:
            await conn.execute(update(tenants).where(tenants.c.id == tenant_id).values(
                credit_tokens=tenants.c.credit_tokens + int(tokens)))
            r = (await conn.execute(select(tenants).where(tenants.c.id == tenant_id))).first()
        return TenantRow.from_db(r) if r is not None else None

    # ---- the usage ledger (revision 0003) ------------------------------------------------

    def append_usage(self, rows: Iterable[UsageRow]) -> None:
        """Queue usage records and return at once (write-behind, like audit entries).
        One row per job: a record for a job already recorded replaces it."""
        values = [r.to_values() for r in rows]
        if not values:
            return
        self._check_open()
        self._writer.submit(Kind.ROWS, (self._upsert_usage, values), units=len(values),
                            wait=False)

    async def usage_records(self, tenant_id: str = "", start: float = 0.0, end: float = 0.0,
                            limit: int = 0) -> list[UsageRow]:
        """Committed records finished in [start, end) (end 0: no bound), one tenant's
        when named, by finished_at then job_id; at most `limit` (0: all)."""
        q = (select(usage_records).where(*_in_period(start, end, tenant_id))
             .order_by(usage_records.c.finished_at, usage_records.c.job_id))
        if limit:
            q = q.limit(limit)
        async with self._read() as conn:
            rows = (await conn.execute(q)).all()
        return [UsageRow.from_db(r) for r in rows]

    async def earnings(self, start: float = 0.0, end: float = 0.0) -> list[EarningRow]:
        """Per (pool, provider), over records finished in [start, end) of jobs that ran
        on a pool (a job cancelled while queued earns nobody anything)."""
        u = usage_records.c
        q = (select(u.pool_id, u.provider_id, func.count(), func.sum(u.prompt_tokens),
                    func.sum(u.completion_tokens), func.sum(u.vram_byte_seconds))
             .where(*_in_period(start, end), u.pool_id != "")
             .group_by(u.pool_id, u.provider_id).order_by(u.provider_id, u.pool_id))
        async with self._read() as conn:
            rows = (await conn.execute(q)).all()
        return [EarningRow(pool, provider, int(n), int(p or 0), int(c or 0), float(v or 0))
                for pool, provider, n, p, c, v in rows]

    # ---- scheduler policy versions (revision 0004) --------------------------------------

    async def add_policy_version(self, language: str, source: str, author: str, *,
                                 activate: bool = True, at: float | None = None
                                 ) -> PolicyVersionRow:
        """Store a new version (numbered after the highest so far) and, by default, make
        it the only active one. Durable when it returns."""
        async with self._transaction() as conn:
            top = (await conn.execute(select(func.max(policy_versions.c.version)))).scalar()
            row = PolicyVersionRow((top or 0) + 1, language, source,
                                   time.time() if at is None else at, author, activate)
            if activate:
                await conn.execute(update(policy_versions).where(
                    policy_versions.c.active.is_(True)).values(active=False))
            await conn.execute(insert(policy_versions), row.to_values())
        return row

    async def list_policy_versions(self) -> list[PolicyVersionRow]:
        """Every stored version, oldest first."""
        async with self._read() as conn:
            rows = (await conn.execute(
                select(policy_versions).order_by(policy_versions.c.version))).all()
        return [PolicyVersionRow.from_db(r) for r in rows]

    async def active_policy_version(self) -> PolicyVersionRow | None:
        """The active version, or None (the built-in scheduler)."""
        async with self._read() as conn:
            r = (await conn.execute(select(policy_versions).where(
                policy_versions.c.active.is_(True)))).first()
        return PolicyVersionRow.from_db(r) if r is not None else None

    async def activate_policy_version(self, version: int) -> PolicyVersionRow | None:
        """Make `version` the only active one (0: none, i.e. the built-in); the row as it
        is now, or None when there is no such version (nothing changes then)."""
        async with self._transaction() as conn:
            r = None
            if version:
                r = (await conn.execute(select(policy_versions).where(
                    policy_versions.c.version == version))).first()
                if r is None:
                    return None
            await conn.execute(update(policy_versions).where(
                policy_versions.c.active.is_(True)).values(active=False))
            if version:
                await conn.execute(update(policy_versions).where(
                    policy_versions.c.version == version).values(active=True))
        return PolicyVersionRow.from_db(r)._replace_active(True) if r is not None else None


    # ---- model pins (revision 0005) ------------------------------------------------------

    async def set_pin(self, model_ref: str, pool_id: str, device_ids: Iterable[str],
                      at: float | None = None) -> None:
        """Pin the model to exactly these devices of the pool, replacing its earlier pin
        there (in one transaction: never half of each). Durable when it returns."""
        at = time.time() if at is None else at
        rows = [{"model_ref": model_ref, "pool_id": pool_id, "device_id": d, "created_at": at}
                for d in sorted(set(device_ids))]
        try:
            async with self._transaction() as conn:
                await conn.execute(delete(pins).where(pins.c.model_ref == model_ref,
                                                      pins.c.pool_id == pool_id))
                if rows:
                    await conn.execute(insert(pins), rows)
        except IntegrityError as e:  # another orchestrator's pin of the same pool won
            raise StoreError(f"pin of {model_ref} on {pool_id} not written: {e.orig}") from e

    async def delete_pins(self, model_ref: str, pool_id: str = "") -> None:
        """Drop the model's pin on one pool ("": on every pool). Idempotent; durable
        when it returns."""
        where = [pins.c.model_ref == model_ref]
        if pool_id:
            where.append(pins.c.pool_id == pool_id)
        async with self._transaction() as conn:
            await conn.execute(delete(pins).where(*where))

    async def load_pins(self) -> dict[str, set[tuple[str, str]]]:
        """Every pin as {model_ref: {(pool_id, device_id)}}, the shape of
        Orchestrator.pins."""
        async with self._read() as conn:
            rows = (await conn.execute(select(pins.c.model_ref, pins.c.pool_id,
                                              pins.c.device_id))).all()
        found: dict[str, set[tuple[str, str]]] = {}
        for model_ref, pool_id, device_id in rows:
            found.setdefault(model_ref, set()).add((pool_id, device_id))
        return found


def _in_period(start: float, end: float, tenant_id: str = "") -> list[Any]:
    u = usage_records.c
    where = [u.finished_at >= start]
    if end:
        where.append(u.finished_at < end)
    if tenant_id:
        where.append(u.tenant_id == tenant_id)
    return where


def _usage_upsert(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    stmt = dialect_insert(usage_records)
    return stmt.on_conflict_do_update(
        index_elements=[usage_records.c.job_id],
        set_={c.name: stmt.excluded[c.name] for c in usage_records.c if c.name != "job_id"})


_TOUCH_KEY = (update(api_keys).where(api_keys.c.id == bindparam("key"))
              .values(last_used_at=bindparam("at")))
_INSERT_AUDIT = insert(audit_log)


@dataclass(frozen=True, slots=True)
class TenantRow:
    """A tenant as stored. Quotas: None = unlimited."""

    id: str
    name: str
    created_at: float
    max_concurrent_jobs: int | None = None
    vram_ceiling_bytes: int | None = None
    token_budget: int | None = None
    credit_tokens: int = 0
    auto_refill: bool = False
    submit_rate_per_second: float | None = None  # None = no rate limit (0003)

    def to_values(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__}

    @classmethod
    def from_db(cls, r: Any) -> TenantRow:
        return cls(**{f: getattr(r, f) for f in cls.__slots__})


@dataclass(frozen=True, slots=True)
class ApiKeyRow:
    """An API key as stored: HMAC-SHA256(salt, secret) in `hash`, never the secret.
    scope is "client" or "admin"; revoked_at/last_used_at 0 = never."""

    id: str
    tenant_id: str
    scope: str
    prefix: str
    salt: str
    hash: str
    created_at: float
    name: str = ""
    revoked_at: float = 0.0
    last_used_at: float = 0.0

    @property
    def revoked(self) -> bool:
        return self.revoked_at > 0

    def to_values(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__}

    @classmethod
    def from_db(cls, r: Any) -> ApiKeyRow:
        return cls(**{f: getattr(r, f) for f in cls.__slots__})


# Column widths, so an oversized value is cut rather than failing its whole batch.
_AUDIT_WIDTHS = {"principal": 128, "action": 128, "target": 255, "outcome": 64,
                 "correlation_id": 128}


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One audit entry. `id` is 0 until the database assigns it."""

    time: float
    principal: str
    action: str
    outcome: str
    target: str = ""
    correlation_id: str = ""
    detail: str = ""
    id: int = 0

    def to_values(self) -> dict[str, Any]:
        values = {f: getattr(self, f) for f in self.__slots__ if f != "id"}
        for column, width in _AUDIT_WIDTHS.items():
            values[column] = values[column][:width]
        return values

    @classmethod
    def from_db(cls, r: Any) -> AuditRow:
        return cls(**{f: getattr(r, f) for f in cls.__slots__})


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One finished job's usage (orchestrator/usage.py says how each figure is made).
    status is "succeeded", "failed" or "cancelled"; times are epoch seconds."""

    job_id: str
    tenant_id: str
    model_ref: str
    status: str
    finished_at: float
    created_at: float
    pool_id: str = ""
    provider_id: str = ""
    error_code: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0
    started_at: float = 0.0
    duration_ms: int = 0
    queue_ms: int = 0
    vram_byte_seconds: float = 0.0

    def to_values(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__}

    @classmethod
    def from_db(cls, r: Any) -> UsageRow:
        return cls(**{f: getattr(r, f) for f in cls.__slots__})


@dataclass(frozen=True, slots=True)
class EarningRow:
    """What one pool (of one provider) served over a period: the sums of its records."""

    pool_id: str
    provider_id: str
    jobs: int
    prompt_tokens: int
    completion_tokens: int
    vram_byte_seconds: float


@dataclass(frozen=True, slots=True)
class PolicyVersionRow:
    """One stored scheduler policy version (policy_versions, 0004)."""

    version: int
    language: str  # "lua" | "builtin"
    source: str
    created_at: float
    author: str
    active: bool

    def to_values(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__}

    @classmethod
    def from_db(cls, r: Any) -> PolicyVersionRow:
        return cls(**{f: getattr(r, f) for f in cls.__slots__})

    def _replace_active(self, active: bool) -> PolicyVersionRow:
        return PolicyVersionRow(self.version, self.language, self.source, self.created_at,
                                self.author, active)
