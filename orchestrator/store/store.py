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
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from llama_orch.v1 import events_pb2
from orchestrator.store.engine import make_engine, migrate
from orchestrator.store.errors import StoreClosed, StoreError
from orchestrator.store.rows import UNFINISHED, JobRow
from orchestrator.store.schema import job_events, jobs
from orchestrator.store.writer import Kind, Writer

DEFAULT_BATCH_SIZE = 512


def url_for_data_dir(data_dir: Path) -> str:
    """The embedded default: `sqlite+aiosqlite:///<data_dir>/state.db` (absolute)."""
    return f"sqlite+aiosqlite:///{(Path(data_dir).expanduser().resolve() / 'state.db')}"


class Store:
    """Durable jobs and job events on SQLite or PostgreSQL. Create with `Store.open`."""

    def __init__(self, engine: AsyncEngine, writer: Writer):
        self._engine = engine
        self._writer = writer
        self._closed = False

    @classmethod
    async def open(cls, url: str, *, schema: str | None = None,
                   batch_size: int = DEFAULT_BATCH_SIZE) -> Store:
        """Connect, apply pending migrations, start the writer.

        `url`: sqlite+aiosqlite:///path (parent folders are created) or
        postgresql+asyncpg://user:pw@host/db. `schema`: PostgreSQL only, a schema of
        its own (created if missing). `batch_size`: most units per commit."""
        engine = make_engine(url, schema=schema)
        try:
            await migrate(engine, schema=schema)
        except Exception as e:
            await engine.dispose()
            raise StoreError(f"cannot open the store: {type(e).__name__}: {e}") from e
        return cls(engine, Writer(engine, batch_size=batch_size))

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

    async def update_job(self, row: JobRow) -> None:
        """Write the row's mutable columns (status, attempts, times, order, the Job
        message...) — an upsert on job_id; durable when it returns."""
        await self._submit(Kind.UPSERT, row.to_values())

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

    async def _submit(self, kind: Kind, values: dict) -> None:
        self._check_open()
        await self._writer.submit(kind, values)

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
