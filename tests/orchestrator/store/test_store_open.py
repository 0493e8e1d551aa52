"""Opening a store: URLs, migrations at open, SQLite pragmas."""

from __future__ import annotations

import pytest

from orchestrator.store import JobRow, Store, url_for_data_dir
from orchestrator.store.engine import make_engine, normalize_url
from tests.orchestrator.store.job_factory import make_job
from tests.orchestrator.store.migrations_helper import HEAD, db_state


async def test_open_applies_migrations_to_head(store, target):
    revision, tables, diff = await db_state(target)
    assert revision == HEAD
    assert {"jobs", "job_events", "alembic_version"} <= tables
    # schema.py and the migration history describe the same database.
    assert diff == []


async def test_reopen_keeps_data_and_migrates_nothing(target):
    first = await target.open()
    await first.insert_job(JobRow.from_job(make_job(1), queue_order=1, priority=0))
    await first.close()
    second = await target.open()
    try:
        assert (await second.get_job("job-000001")) is not None
    finally:
        await second.close()
    revision, _, diff = await db_state(target)
    assert (revision, diff) == (HEAD, [])


async def test_close_is_idempotent(store):
    await store.close()
    await store.close()


def test_url_for_data_dir_is_an_absolute_sqlite_file(tmp_path):
    assert url_for_data_dir(tmp_path / "orch") == f"sqlite+aiosqlite:///{tmp_path}/orch/state.db"


async def test_open_creates_the_data_dir(tmp_path):
    data_dir = tmp_path / "a" / "b"
    store = await Store.open(url_for_data_dir(data_dir))
    try:
        assert store.dialect == "sqlite"
        assert (data_dir / "state.db").is_file()
    finally:
        await store.close()


@pytest.mark.parametrize("url,driver", [
    ("sqlite:///x.db", "sqlite+aiosqlite"),
    ("postgresql://u@h/db", "postgresql+asyncpg"),
    ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg"),
], ids=["sqlite-plain", "postgresql-plain", "postgresql-asyncpg"])
def test_plain_urls_get_their_async_driver(url, driver):
    assert normalize_url(url).drivername == driver


@pytest.mark.parametrize("url", ["mysql+aiomysql://u@h/db", "postgresql+psycopg2://u@h/db"],
                         ids=["other-database", "sync-driver"])
def test_unsupported_urls_are_refused(url):
    with pytest.raises(ValueError):
        normalize_url(url)


async def test_sqlite_connections_get_the_pragmas(tmp_path):
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/p.db")
    try:
        async with engine.connect() as conn:
            got = {p: (await conn.exec_driver_sql(f"PRAGMA {p}")).scalar()
                   for p in ("journal_mode", "busy_timeout", "foreign_keys", "synchronous")}
    finally:
        await engine.dispose()
    # synchronous: 1 is NORMAL.
    assert got == {"journal_mode": "wal", "busy_timeout": 5000, "foreign_keys": 1,
                   "synchronous": 1}
