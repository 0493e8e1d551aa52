"""The writer's SQLite batches without SQLAlchemy's execution layer (store/sqlite_direct.py):
the same rows as SQLAlchemy writes, the same errors, all-or-nothing transactions."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import Boolean, Column, Integer, LargeBinary, MetaData, String, Table, bindparam
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from orchestrator.store.engine import make_engine, make_writer_engine
from orchestrator.store.sqlite_direct import DirectSqlite

meta = MetaData()
things = Table(
    "things", meta,
    Column("id", String(16), primary_key=True),
    Column("n", Integer, nullable=False, server_default="0"),
    Column("flag", Boolean, nullable=False, server_default="0"),
    Column("blob", LargeBinary, nullable=True),
    Column("note", String(32), nullable=True),
)
with_default = Table(
    "with_default", meta,
    Column("id", Integer, primary_key=True),
    Column("label", String(16), nullable=False, default="python-side"),
)
BUMP = update(things).where(things.c.id == bindparam("key")).values(n=things.c.n + bindparam("by"))


@pytest.fixture
def engine(tmp_path):
    eng = make_writer_engine(f"sqlite:///{tmp_path}/direct.db")
    meta.create_all(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def direct(engine):
    d = DirectSqlite(engine)
    yield d
    d.close()


def rows(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(things).order_by(things.c.id))]


def test_the_rows_are_the_ones_sqlalchemy_writes(engine, direct, tmp_path):
    values = [{"id": "a", "n": 1, "flag": True, "blob": b"\x00\xff", "note": "\u00e9\U0001f98a"},
              {"id": "b", "n": 2, "flag": False, "blob": None, "note": None}]
    direct.transaction(lambda c: c.execute(insert(things), values))
    direct.transaction(lambda c: c.execute(BUMP, [{"key": "a", "by": 10}, {"key": "b", "by": 5}]))

    reference = make_writer_engine(f"sqlite:///{tmp_path}/reference.db")
    try:
        meta.create_all(reference)
        with reference.begin() as conn:
            conn.execute(insert(things), values)
            conn.execute(BUMP, [{"key": "a", "by": 10}, {"key": "b", "by": 5}])
        assert rows(engine) == rows(reference)
        assert rows(engine)[0] == ("a", 11, True, b"\x00\xff", "\u00e9\U0001f98a")
    finally:
        reference.dispose()


def test_dicts_with_other_keys_are_compiled_for_separately(engine, direct):
    direct.transaction(lambda c: c.execute(insert(things), [
        {"id": "a", "n": 1}, {"id": "b", "n": 2}, {"id": "c", "note": "only a note"},
        {"id": "d", "n": 4}]))
    assert [(r[0], r[1], r[4]) for r in rows(engine)] == [
        ("a", 1, None), ("b", 2, None), ("c", 0, "only a note"), ("d", 4, None)]


def test_a_collision_raises_sqlalchemys_integrity_error_and_writes_nothing(engine, direct):
    direct.transaction(lambda c: c.execute(insert(things), [{"id": "a", "n": 1}]))

    def batch(c):
        c.execute(insert(things), [{"id": "b", "n": 2}])
        c.execute(BUMP, [{"key": "a", "by": 100}])
        c.execute(insert(things), [{"id": "a", "n": 3}])  # the collision, last
    with pytest.raises(IntegrityError) as caught:
        direct.transaction(batch)
    assert isinstance(caught.value.orig, sqlite3.IntegrityError)
    assert rows(engine) == [("a", 1, False, None, None)]  # neither b nor the bump
    direct.transaction(lambda c: c.execute(insert(things), [{"id": "b", "n": 2}]))  # usable after
    assert [r[0] for r in rows(engine)] == ["a", "b"]


def test_an_error_in_the_batch_function_rolls_back(engine, direct):
    def batch(c):
        c.execute(insert(things), [{"id": "a", "n": 1}])
        raise RuntimeError("the batch failed half way")
    with pytest.raises(RuntimeError):
        direct.transaction(batch)
    assert rows(engine) == []


def test_a_python_side_default_is_refused_not_written_as_null(engine, direct):
    with pytest.raises(ValueError, match="no value for label"):
        direct.transaction(lambda c: c.execute(insert(with_default), [{"id": 1}]))
    with engine.connect() as conn:
        assert conn.execute(select(with_default)).all() == []


@pytest.mark.parametrize("bad", ["wrong type", b"bytes", {"id": "x"}, [("a", 1)],
                                 [{"id": "a"}, None], 7])
def test_malformed_parameters_are_refused_and_nothing_is_written(engine, direct, bad):
    def batch(c):
        c.execute(insert(things), [{"id": "first"}])
        c.execute(insert(things), bad)
    with pytest.raises(TypeError):
        direct.transaction(batch)
    assert rows(engine) == []


def test_a_value_of_the_wrong_type_is_the_drivers_error_and_nothing_is_written(engine, direct):
    with pytest.raises(sqlite3.Error):
        direct.transaction(lambda c: c.execute(insert(things), [{"id": "a", "note": object()}]))
    assert rows(engine) == []


def test_hostile_values_are_bound_not_spliced(engine, direct):
    evil = "x'); DROP TABLE things; --"
    direct.transaction(lambda c: c.execute(insert(things), [{"id": "a", "note": evil}]))
    assert rows(engine)[0][4] == evil


def test_only_sqlite_engines(tmp_path):
    pg = make_engine("postgresql+asyncpg://u:p@127.0.0.1/db")  # never connects
    with pytest.raises(ValueError, match="SQLite"):
        DirectSqlite(pg.sync_engine)


def test_close_returns_the_connection_and_a_later_batch_opens_another(engine, direct):
    direct.transaction(lambda c: c.execute(insert(things), [{"id": "a"}]))
    direct.close()
    direct.close()  # harmless twice
    direct.transaction(lambda c: c.execute(insert(things), [{"id": "b"}]))
    assert [r[0] for r in rows(engine)] == ["a", "b"]


class _RollbackFails:
    """The writer's sqlite3 connection, except that ROLLBACK fails (a disk gone bad)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def execute(self, sql, *args):
        if sql == "ROLLBACK":
            raise sqlite3.OperationalError("disk I/O error")
        return self.conn.execute(sql, *args)

    def executemany(self, sql, rows):
        return self.conn.executemany(sql, rows)

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction


def test_a_connection_that_cannot_roll_back_is_replaced(engine, direct):
    direct.transaction(lambda c: c.execute(insert(things), [{"id": "a"}]))
    stuck = direct._conn  # noqa: SLF001
    direct._conn = _RollbackFails(stuck)  # noqa: SLF001

    def batch(c):
        c.execute(insert(things), [{"id": "b"}])
        raise RuntimeError("the batch failed")
    with pytest.raises(RuntimeError):
        direct.transaction(batch)
    # The old connection still holds its open transaction; the next batch must not use it.
    direct.transaction(lambda c: c.execute(insert(things), [{"id": "c"}]))
    assert direct._conn is not stuck  # noqa: SLF001
    with pytest.raises(sqlite3.ProgrammingError):
        stuck.execute("SELECT 1")  # closed, not back in the pool
    assert [r[0] for r in rows(engine)] == ["a", "c"]


def test_statements_built_per_call_do_not_grow_the_cache_without_end(engine, direct, monkeypatch):
    monkeypatch.setattr("orchestrator.store.sqlite_direct.MAX_COMPILED", 8)
    for i in range(30):
        direct.transaction(lambda c, i=i: c.execute(insert(things), [{"id": f"r{i}"}]))
        assert len(direct._compiled) <= 8 and len(direct._keep) <= 8  # noqa: SLF001
    assert len(rows(engine)) == 30
