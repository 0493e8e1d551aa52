"""Alembic environment for the store.

Store.open() runs migrations on its own connection: engine.migrate() calls
`connection.run_sync(...)`, which puts the sync Connection in
`config.attributes["connection"]`, and this file migrates on it inside the caller's
transaction. Run from the command line instead (python -m orchestrator.store.migrate),
it builds an async engine from `sqlalchemy.url` and does the same through run_sync.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from orchestrator.store.schema import metadata

config = context.config


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async(url: str) -> None:
    from orchestrator.store.engine import make_engine

    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            async with conn.begin():
                await conn.run_sync(run_on)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; give a database URL")

_connection = config.attributes.get("connection")
if _connection is not None:
    run_on(_connection)
else:
    asyncio.run(run_async(config.get_main_option("sqlalchemy.url")))
