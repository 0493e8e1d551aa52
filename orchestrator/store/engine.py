"""Engines for the two supported databases, and the migration step run at open.

    sqlite+aiosqlite:///path/state.db     embedded default (WAL, one writer)
    postgresql+asyncpg://user:pw@host/db  operators who outgrow one machine

Plain `sqlite://` and `postgresql://` URLs are accepted and given their async driver.

SQLite: every new connection gets journal_mode=WAL, busy_timeout=5000,
foreign_keys=ON and synchronous=NORMAL (a commit survives a process crash; a power
loss may lose the last few). The sqlite3 driver's own transaction handling is turned
off and SQLAlchemy emits BEGIN itself, so savepoints and DDL are transactional;
a connection with execution option `sqlite_begin="IMMEDIATE"` takes the write lock at
BEGIN (the store's writer does), which avoids lock-upgrade failures.

The store's writer also gets a plain synchronous engine on the same SQLite file
(make_writer_engine), used from one thread of its own: through aiosqlite every
statement, BEGIN and COMMIT is a round trip between the event loop and aiosqlite's
thread (~40 per job), while the writer's thread runs a whole batch in one.

PostgreSQL: pool_pre_ping, and optionally a schema (search_path) of its own, which the
store creates if missing — tests use a fresh one each.
"""

from __future__ import annotations

import re
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

SQLITE_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA busy_timeout=5000",
                  "PRAGMA foreign_keys=ON", "PRAGMA synchronous=NORMAL")

_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}

# Serializes concurrent migrations from several orchestrators on one PostgreSQL
# database (an arbitrary, fixed advisory-lock key: "llama-orch" in ASCII, truncated).
_PG_MIGRATION_LOCK = 0x6C6C616D615F6F72


def normalize_url(url: str | URL) -> URL:
    """The URL with its async driver; ValueError for anything but SQLite/PostgreSQL."""
    u = make_url(url)
    backend = u.get_backend_name()
    if backend not in _ASYNC_DRIVERS:
        raise ValueError(f"unsupported database {u.render_as_string(hide_password=True)!r}: "
                         "use sqlite+aiosqlite:///path or postgresql+asyncpg://...")
    want = _ASYNC_DRIVERS[backend]
    if u.drivername != backend and u.drivername != want:
        raise ValueError(f"{u.drivername!r} is not an async driver: use {want}://")
    return u.set(drivername=want)


def make_engine(url: str | URL, *, schema: str | None = None) -> AsyncEngine:
    """An AsyncEngine for `url`, configured as described in the module docstring."""
    u = normalize_url(url)
    if u.get_backend_name() == "sqlite":
        if schema:
            raise ValueError("schema= applies to PostgreSQL only")
        db = u.database or ""
        if db and db != ":memory:" and not db.startswith("file:"):
            Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(u)
        _configure_sqlite(engine.sync_engine)
        return engine
    if schema and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", schema):
        raise ValueError(f"invalid schema name {schema!r}")
    connect_args = {"server_settings": {"search_path": schema}} if schema else {}
    return create_async_engine(u, pool_pre_ping=True, connect_args=connect_args)


def make_writer_engine(url: str | URL) -> Engine | None:
    """A synchronous engine on the same SQLite file for the store's writer thread, or
    None where there is no file to share (PostgreSQL: asyncpg needs no thread hop;
    an in-memory SQLite database exists once per connection)."""
    u = normalize_url(url)
    db = u.database or ""
    in_memory = db in ("", ":memory:") or u.query.get("mode") == "memory" or "mode=memory" in db
    if u.get_backend_name() != "sqlite" or in_memory:
        return None
    # check_same_thread off: the connection is made and used on the writer's thread,
    # but disposed of from wherever the store is closed.
    engine = create_engine(u.set(drivername="sqlite+pysqlite"),
                           connect_args={"check_same_thread": False})
    _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # noqa: ANN001
        dbapi_conn.isolation_level = None  # the driver stops issuing BEGIN; _on_begin does
        cur = dbapi_conn.cursor()
        for pragma in SQLITE_PRAGMAS:
            cur.execute(pragma)
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


def alembic_config(url: str | URL | None = None) -> Config:
    """Alembic Config pointing into this package (no alembic.ini needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    if url is not None:
        rendered = normalize_url(url).render_as_string(hide_password=False)
        cfg.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return cfg


async def migrate(engine: AsyncEngine, *, schema: str | None = None) -> None:
    """Bring the database to the newest revision, in one transaction.

    Idempotent: at head it does nothing. Safe against concurrent opens: SQLite's
    BEGIN IMMEDIATE and a PostgreSQL advisory lock let one migrator in at a time."""
    async with engine.execution_options(sqlite_begin="IMMEDIATE").begin() as conn:
        if engine.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"),
                               {"k": _PG_MIGRATION_LOCK})
            if schema:
                await conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.run_sync(_upgrade)


def _upgrade(connection: Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")
