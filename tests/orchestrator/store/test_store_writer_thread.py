"""Where the writer's transactions run: on SQLite, the writer's own thread with its own
sqlite3 connection, statements not going through SQLAlchemy's execution layer (one
wake-up of the event loop per batch); elsewhere, the async engine."""

from __future__ import annotations

import asyncio
import threading

import pytest
from sqlalchemy import event

from orchestrator.store import Store
from orchestrator.store.engine import make_writer_engine
from tests.orchestrator.store.job_factory import event as job_event
from tests.orchestrator.store.test_store_writer import row


def _inserting(seen: list[str], statement: str) -> None:
    if statement.lstrip().upper().startswith("INSERT"):
        seen.append(threading.current_thread().name)


def _record_threads(store: Store) -> list[str]:
    """Names of the threads that execute the writer's INSERTs from now on: on SQLite, as
    the driver runs them (its trace callback, on every connection made from now on)."""
    seen: list[str] = []
    writer_engine = store._writer._sync_engine  # noqa: SLF001
    if writer_engine is not None:
        @event.listens_for(writer_engine, "connect")
        def _on_connect(dbapi_conn, _record) -> None:  # noqa: ANN001
            dbapi_conn.set_trace_callback(lambda statement: _inserting(seen, statement))
    else:
        @event.listens_for(store._engine.sync_engine, "before_cursor_execute")  # noqa: SLF001
        def _on_execute(conn, cursor, statement, *args) -> None:  # noqa: ANN001
            _inserting(seen, statement)
    return seen


def _record_sqlalchemy_inserts(engine) -> list[str]:  # noqa: ANN001
    """INSERTs that go through SQLAlchemy's execution layer on `engine` from now on."""
    seen: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _on_execute(conn, cursor, statement, *args) -> None:  # noqa: ANN001
        _inserting(seen, statement)
    return seen


async def test_sqlite_batches_run_on_the_writers_thread(tmp_path):
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/state.db", linger_s=0)
    try:
        seen = _record_threads(store)
        layered = _record_sqlalchemy_inserts(store._writer._sync_engine)  # noqa: SLF001
        await asyncio.gather(*(store.insert_job(row(i)) for i in range(20)))
        store.append_events([job_event(row(1).job_id, 1)])
        await store.flush()
        assert seen and set(seen) == {seen[0]}
        assert seen[0].startswith("store-writer")
        assert seen[0] != threading.current_thread().name
        assert layered == []  # sqlite_direct.py: the driver's connection, used directly
        writer_threads = [t for t in threading.enumerate() if t.name.startswith("store-writer")]
        assert writer_threads
    finally:
        await store.close()
    # close() ends the thread and releases its connection.
    for t in writer_threads:
        t.join(5)
        assert not t.is_alive()
    reopened = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/state.db")
    try:
        assert (await reopened.get_job(row(3).job_id)) is not None
        assert len(await reopened.events(row(1).job_id)) == 1
    finally:
        await reopened.close()


async def test_postgresql_batches_run_through_the_async_engine(target):
    if target.backend != "postgresql":
        pytest.skip("the PostgreSQL variant of the writer thread test")
    store = await target.open(linger_s=0)
    try:
        assert store._writer._sync_engine is None  # noqa: SLF001
        seen = _record_threads(store)
        await store.insert_job(row(1))
        assert seen and not any(name.startswith("store-writer") for name in seen)
    finally:
        await store.close()


@pytest.mark.parametrize("url, shared", [
    ("sqlite+aiosqlite:///{tmp}/state.db", True),
    ("sqlite:///{tmp}/state.db", True),
    ("sqlite+aiosqlite:///:memory:", False),  # a second connection would see another db
    ("sqlite+aiosqlite://", False),
    ("sqlite+aiosqlite:///file:x?mode=memory&cache=shared&uri=true", False),
    ("postgresql+asyncpg://u:p@127.0.0.1/db", False),
])
def test_which_urls_get_a_writer_engine(tmp_path, url, shared):
    engine = make_writer_engine(url.format(tmp=tmp_path))
    try:
        assert (engine is not None) == shared
        if engine is not None:
            assert engine.dialect.name == "sqlite" and engine.dialect.driver == "pysqlite"
    finally:
        if engine is not None:
            engine.dispose()


async def test_stopping_the_writer_twice_is_harmless(tmp_path):
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/state.db")
    await store.insert_job(row(1))
    await store._writer.stop()  # noqa: SLF001 - as close() does, then close() again
    await store.close()
    await store.close()


async def test_a_batch_leaves_for_the_thread_after_what_the_loop_already_scheduled(tmp_path):
    """What the loop scheduled in the turn the write was queued (a dispatch's Execute
    call) runs before the batch goes to the writer's thread and takes the GIL."""
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/state.db", linger_s=0)
    try:
        writer = store._writer  # noqa: SLF001
        order: list[str] = []
        real_write = writer._write  # noqa: SLF001

        async def write(batch):
            order.append("batch")
            await real_write(batch)
        writer._write = write  # noqa: SLF001
        insert = asyncio.ensure_future(store.insert_job(row(1)))
        await asyncio.sleep(0)  # the insert is queued: the writer's wake-up is scheduled
        asyncio.get_running_loop().call_soon(order.append, "scheduled after it")
        await insert
        assert order == ["scheduled after it", "batch"]
    finally:
        await store.close()
