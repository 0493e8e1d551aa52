"""The store writer's batches on SQLite, run on the sqlite3 connection itself.

Why: a batch is a handful of executemany calls of a few fixed statements, and
SQLAlchemy's execution layer (events, result setup, the pooled connection's
transaction) cost ~3x what sqlite3 itself does for them: ~350 us of CPU per job (its
insert and its final upsert) against ~110 us, measured on the writer's thread. That
CPU is taken under the GIL, in the orchestrator's process, while the job is being
dispatched. So the statements are compiled once by SQLAlchemy, for this dialect and
these parameter names, and executed here with the type's own bind processors; what
SQLAlchemy decides (the SQL, the parameter order, the values' conversion) is kept,
only its per-call machinery is skipped.

The connection is the writer engine's (engine.make_writer_engine): same pragmas,
the driver's own transaction handling off. It is made, used and closed on the
writer's thread. A unique-key collision raises sqlalchemy.exc.IntegrityError, as the
writer expects (sqlite3's error as `orig`); other driver errors are sqlite3's own.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import ClauseElement

T = TypeVar("T")

# (the SQL, the parameter names in bind order, each one's bind processor or None)
_Compiled = tuple[str, tuple[str, ...], tuple[Callable[[Any], Any] | None, ...]]
# The writer's statements are a few module-level constants; a caller building a new
# statement per call would otherwise grow the cache without end.
MAX_COMPILED = 128


class DirectSqlite:
    def __init__(self, engine: Engine):
        if engine.dialect.name != "sqlite":
            raise ValueError(f"DirectSqlite needs an SQLite engine, not {engine.dialect.name}")
        self._engine = engine
        self._proxy: Any = None  # the pool's connection, checked out for good
        self._conn: sqlite3.Connection | None = None
        self._compiled: dict[tuple[int, tuple[str, ...]], _Compiled] = {}
        self._keep: list[ClauseElement] = []  # compiled statements stay alive: ids stay theirs

    def transaction(self, fn: Callable[[DirectSqlite], T]) -> T:
        """fn(self) in one write transaction (BEGIN IMMEDIATE), committed when this
        returns; rolled back if fn raises."""
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(self)
            conn.execute("COMMIT")
        except BaseException:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                # Left inside a transaction, every later BEGIN would fail: the next
                # batch gets a new connection instead.
                self._discard()
            raise
        return result

    def execute(self, stmt: ClauseElement, params: Sequence[dict[str, Any]]) -> None:
        """executemany of `stmt` over `params` (dicts sharing one set of keys, as the
        writer's operations do; a different set is compiled for separately)."""
        if isinstance(params, (str, bytes)) or not all(isinstance(v, dict) for v in params):
            raise TypeError("parameters must be a list of dicts (column or bind name -> value)")
        conn = self._connection()
        start = 0
        while start < len(params):
            keys = tuple(params[start])
            end = start + 1
            while end < len(params) and params[end].keys() == params[start].keys():
                end += 1
            sql, names, processors = self._compile(stmt, keys)
            rows = [tuple(v[n] if p is None else p(v[n]) for n, p in zip(names, processors))
                    for v in params[start:end]]
            try:
                conn.executemany(sql, rows)
            except sqlite3.IntegrityError as e:
                raise IntegrityError(sql, None, e) from e
            start = end

    def close(self) -> None:
        if self._proxy is not None:
            self._proxy.close()  # back to the pool, which the engine's dispose() closes
            self._proxy = self._conn = None

    def _discard(self) -> None:
        if self._proxy is not None:
            self._proxy.invalidate()  # closed, and not given back to the pool
            self._proxy = self._conn = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._proxy = self._engine.raw_connection()
            self._conn = self._proxy.driver_connection
        return self._conn

    def _compile(self, stmt: ClauseElement, keys: tuple[str, ...]) -> _Compiled:
        cache_key = (id(stmt), keys)
        found = self._compiled.get(cache_key)
        if found is not None:
            return found
        if len(self._compiled) >= MAX_COMPILED:
            self._compiled.clear()
            self._keep.clear()
        dialect = self._engine.dialect
        compiled = stmt.compile(dialect=dialect, column_keys=list(keys))
        names = tuple(compiled.positiontup or ())
        missing = [n for n in names if n not in keys]
        if missing:
            # A value SQLAlchemy would have filled in (a Python-side default): this
            # path does not, so it refuses instead of writing NULL.
            raise ValueError(f"no value for {', '.join(missing)} in {compiled.string!r}")
        processors = tuple(compiled.binds[n].type.dialect_impl(dialect).bind_processor(dialect)
                           for n in names)
        found = self._compiled[cache_key] = (compiled.string, names, processors)
        self._keep.append(stmt)
        return found
