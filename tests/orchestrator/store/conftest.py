"""Every store test runs on both backends.

sqlite: a fresh file under tmp_path. postgresql: the database named by
LLAMA_ORCH_TEST_PG_URL (tools/start_postgres.sh starts one and prints the URL; .ci/run
sets it), each test in a fresh schema dropped afterwards. Without the variable the
postgresql cases are skipped with that reason, so a plain local run stays green; CI
always has it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from orchestrator.store import Store
from orchestrator.store.engine import make_engine

PG_ENV = "LLAMA_ORCH_TEST_PG_URL"


@dataclass
class Target:
    """Where a test's store lives; open() may be called again to test reopening."""

    backend: str
    url: str
    schema: str | None = None

    async def open(self, **kw) -> Store:
        return await Store.open(self.url, schema=self.schema, **kw)

    def engine(self):
        """A separate engine on the same database, for tampering behind the store's back."""
        return make_engine(self.url, schema=self.schema)


@pytest.fixture(params=["sqlite", "postgresql"])
async def target(request, tmp_path) -> AsyncIterator[Target]:
    if request.param == "sqlite":
        yield Target("sqlite", f"sqlite+aiosqlite:///{tmp_path}/state.db")
        return
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"{PG_ENV} is not set: run `export {PG_ENV}=$(tools/start_postgres.sh "
                    "| tail -n1)` to include PostgreSQL (CI sets it)")
    schema = "test_" + uuid.uuid4().hex[:16]
    yield Target("postgresql", url, schema)
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await engine.dispose()


@pytest.fixture
async def store(target: Target) -> AsyncIterator[Store]:
    s = await target.open()
    yield s
    await s.close()
