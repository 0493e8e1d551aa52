"""What the migration tests share: the database's state, upgrading to a given revision,
and a tenant row written before the newer revisions existed."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from orchestrator.store.engine import alembic_config
from orchestrator.store.schema import metadata

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


async def db_state(target, table_columns: str = ""):
    """(alembic revision, table names, schema.py-vs-database differences), and with
    `table_columns` that table's column names too, as a fourth item."""
    engine = target.engine()
    try:
        async with engine.connect() as conn:
            def look(sync_conn):
                ctx = MigrationContext.configure(sync_conn)
                state = (ctx.get_current_revision(), set(inspect(sync_conn).get_table_names()),
                         compare_metadata(ctx, metadata))
                if table_columns:
                    columns = {c["name"] for c in inspect(sync_conn).get_columns(table_columns)}
                    state = (*state, columns)
                return state
            return await conn.run_sync(look)
    finally:
        await engine.dispose()


async def migrate_to(target, revision: str) -> None:
    engine = target.engine()
    try:
        async with engine.begin() as conn:
            if target.schema:
                await conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{target.schema}"')

            def run(sync_conn):
                cfg = alembic_config()
                cfg.attributes["connection"] = sync_conn
                command.upgrade(cfg, revision)
            await conn.run_sync(run)
    finally:
        await engine.dispose()


async def insert_old_tenant(target) -> None:
    """Tenant `t-old` (credit 7) with only the columns revision 0002 had."""
    engine = target.engine()
    try:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO tenants (id, name, created_at, credit_tokens) "
                                    "VALUES ('t-old', 'old', 1.0, 7)"))
    finally:
        await engine.dispose()
