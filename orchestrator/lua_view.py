"""The read-only snapshot a Lua policy sees: the frozen Snapshot converted field by
field by its type (records, arrays, maps in the snapshot's order, (pool, device) keys
nested), converted on first access in a cycle and reused while the object is the same.
The field lists and Lua type names here also generate docs/POLICY.md. Used by
orchestrator/lua_policy.py.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import Any

from orchestrator.lua_sandbox import Sandbox
from orchestrator.snapshot import JobView, Snapshot
from orchestrator.types import Priority

# ---- the snapshot view ------------------------------------------------------------------------

DEVICE_KEY = tuple[str, str]  # (pool_id, device_id): nested as [pool_id][device_id] in Lua
TUPLE_NAMES = {("pools_by_room", 2): ("room", "pool_id"),
               ("pools_by_evictable_room", 2): ("room", "pool_id")}
_PRIMITIVES = {int: "integer", float: "number", str: "string", bool: "boolean"}


def snapshot_fields() -> list[tuple[str, Any]]:
    """(name, type hint) of every Snapshot field, in declaration order."""
    hints = typing.get_type_hints(Snapshot)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(Snapshot)]


def record_fields(cls: type) -> list[tuple[str, Any, bool]]:
    """(name, type hint, is_property) of a view dataclass: its fields, then its
    properties (WorkerView.free_slots)."""
    hints = typing.get_type_hints(cls)
    out = [(f.name, hints[f.name], False) for f in dataclasses.fields(cls)]
    for name, member in vars(cls).items():
        if isinstance(member, property) and not name.startswith("_"):
            out.append((name, typing.get_type_hints(member.fget)["return"], True))
    return out


def _args(hint) -> tuple:
    return typing.get_args(hint)


def _origin(hint):
    return typing.get_origin(hint)


def _union_members(hint) -> tuple | None:
    if _origin(hint) in (typing.Union, types.UnionType):
        return _args(hint)
    return None


def kind_name(cls: type) -> str:
    """The `kind` of an advice record: PreloadAdvice -> "preload"."""
    return cls.__name__.removesuffix("Advice").lower()


def lua_type(hint, field: str = "") -> str:
    """The Lua shape of a snapshot type, for the docs."""
    if hint in _PRIMITIVES:
        return _PRIMITIVES[hint]
    if isinstance(hint, type) and issubclass(hint, enum.IntEnum):
        return "integer (" + ", ".join(f"{m.name}={m.value}" for m in hint) + ")"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "string (" + " | ".join(f'"{m.value}"' for m in hint) + ")"
    if dataclasses.is_dataclass(hint):
        return hint.__name__
    members = _union_members(hint)
    if members:
        return " | ".join(lua_type(m) for m in members) + " (field `kind`)"
    origin, args = _origin(hint), _args(hint)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"array<{lua_type(args[0], field)}>"
        names = TUPLE_NAMES.get((field, len(args)))
        if names:
            return "{" + ", ".join(f"{n}: {lua_type(a)}" for n, a in zip(names, args)) + "}"
        return "array {" + ", ".join(lua_type(a) for a in args) + "}"
    if origin is frozenset and args == (DEVICE_KEY,):
        return "set[pool_id][device_id] = true"
    if origin in (Mapping, dict, typing.Mapping):
        k, v = args
        if k == DEVICE_KEY:
            return f"map[pool_id][device_id] -> {lua_type(v, field)}"
        return f"map<{lua_type(k)}, {lua_type(v, field)}>"
    raise TypeError(f"no Lua shape for {hint!r}")


class SnapshotView:
    """Converts one runtime's view of snapshots: converters compiled from the type hints,
    and a cache of converted records and containers by identity."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sb = sandbox
        api = sandbox.api
        self._array, self._map = api.array, api.map
        self._table = sandbox.lua.table_from
        self._record_maker = api.record_maker
        self.cache: dict[int, list] = {}  # id(obj) -> [obj, Lua value, cycle last used]
        self.cycle = [0]  # the cycle being converted (a cell the converters share)
        self.conv = {name: self._compile(hint, name) for name, hint in snapshot_fields()}
        self._live: dict[str, _LiveMap] = {}
        for name, hint in snapshot_fields():
            if _origin(hint) in (Mapping, dict, typing.Mapping) and _args(hint)[0] != DEVICE_KEY:
                self.conv[name] = self._live_map(name, self._compile(_args(hint)[1], name))
        self.rooms = self._compile(tuple[tuple[int, str], ...], "pools_by_room")

    def next_cycle(self) -> None:
        """Start a cycle; every SWEEP_EVERY cycles forget what the last SWEEP_EVERY did
        not use. (An entry keeps its object alive, so an id is never reused while
        cached; a record a cached container holds stays converted in Lua either way.)"""
        cycle = self.cycle[0] = self.cycle[0] + 1
        if cycle % SWEEP_EVERY == 0:
            old, cache = cycle - SWEEP_EVERY, self.cache
            for key in [k for k, e in cache.items() if e[2] <= old]:
                del cache[key]

    def _cached(self, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        cell, cache = self.cycle, self.cache

        def conv(v):
            e = cache.get(id(v))
            if e is None:
                e = cache[id(v)] = [v, fn(v), cell[0]]
            else:
                e[2] = cell[0]
            return e[1]
        return conv

    def _compile(self, hint, field: str = "") -> Callable[[Any], Any] | None:
        """A converter for values of `hint`; None: the value passes as it is."""
        if hint in _PRIMITIVES:
            return None
        if isinstance(hint, type) and issubclass(hint, enum.IntEnum):
            return int
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return attrgetter("value")
        if dataclasses.is_dataclass(hint):
            return self._record(hint)
        members = _union_members(hint)
        if members:
            by_cls = {m: self._record(m, kind_name(m)) for m in members}
            return lambda v: by_cls[type(v)](v)
        origin, args = _origin(hint), _args(hint)
        if origin is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                item = self._compile(args[0], field)
                array = self._array
                if item is None:
                    return self._cached(lambda v: array(*v))
                return self._cached(lambda v: array(*[item(x) for x in v]))
            names = TUPLE_NAMES.get((field, len(args)))
            items = [self._compile(a) for a in args]
            make = self._record_maker(self._table(list(names))) if names else self._array
            return self._cached(lambda v: make(*[x if c is None else c(x)
                                                 for c, x in zip(items, v)]))
        if origin is frozenset and args == (DEVICE_KEY,):
            return self._cached(self._device_set)
        if origin in (Mapping, dict, typing.Mapping):
            k, v = args
            val = self._compile(v, field)
            if k == DEVICE_KEY:
                return self._cached(lambda m: self._device_map(m, val))
            mk = self._map

            def conv_map(m):
                flat: list = []
                if val is None:
                    for item in m.items():
                        flat.extend(item)
                else:
                    for key, x in m.items():
                        flat.append(key)
                        flat.append(val(x))
                return mk(len(m), *flat)
            return self._cached(conv_map)
        raise TypeError(f"no Lua shape for {hint!r}")

    def _live_map(self, name: str, val) -> Callable[[Any], Any]:
        """A top-level map kept as one Lua map updated in place: each cycle costs a pass
        over its keys in Python plus the entries whose values changed (the `workers`
        map changes every cycle under load, one worker at a time)."""
        api = self.sb.api
        mk, map_set, map_rekey = self._map, api.map_set, api.map_rekey

        def conv(m):
            live = self._live.get(name)
            if live is None:
                flat: list = []
                for k, x in m.items():
                    flat.append(k)
                    flat.append(x if val is None else val(x))
                live = self._live[name] = _LiveMap(m, list(m), mk(len(m), *flat))
                return live.proxy
            if m is live.src:
                return live.proxy
            old, changed, n = live.src, [], 0
            for k, x in m.items():
                o = old.get(k, _MISSING)
                if o is not x and (val is not None or o != x):
                    changed.append(k)
                    changed.append(x if val is None else val(x))
                    n += 1
            keys = list(m)
            if n:
                map_set(live.proxy, n, *changed)
            if keys != live.keys:
                map_rekey(live.proxy, len(keys), *keys)
                live.keys = keys
            live.src = m
            return live.proxy
        return conv

    def _record(self, cls: type, kind: str = "") -> Callable[[Any], Any]:
        fields = record_fields(cls)
        names = [n for n, _, _ in fields] + (["kind"] if kind else [])
        make = self._record_maker(self._table(names))
        get = attrgetter(*[n for n, _, _ in fields])
        convs = [self._compile(h) for _, h, _ in fields]
        plain = all(c is None for c in convs)
        extra = (kind,) if kind else ()
        if plain:
            return self._cached(lambda v: make(*get(v), *extra))
        return self._cached(lambda v: make(*[x if c is None else c(x)
                                             for c, x in zip(convs, get(v))], *extra))

    def _nest(self, m: Mapping[DEVICE_KEY, Any], val) -> Any:
        by_pool: dict[str, list] = {}
        for (pid, dev), x in m.items():
            by_pool.setdefault(pid, []).extend((dev, x if val is None else val(x)))
        mk = self._map
        flat: list = []
        for pid, kv in by_pool.items():
            flat.append(pid)
            flat.append(mk(len(kv) // 2, *kv))
        return mk(len(by_pool), *flat)

    def _device_map(self, m, val):
        return self._nest(m, val)

    def _device_set(self, s):
        return self._nest({k: True for k in sorted(s)}, None)


_MISSING = object()
SWEEP_EVERY = 8  # cycles: converted objects unused for this long are forgotten


class _LiveMap:
    __slots__ = ("src", "keys", "proxy")

    def __init__(self, src, keys: list, proxy) -> None:
        self.src, self.keys, self.proxy = src, keys, proxy


# Functions of the snapshot (methods of Snapshot with the same names, plus job()).
FUNCTIONS: dict[str, str] = {
    "eligible": "eligible(model_ref) -> integer: " + (Snapshot.eligible.__doc__ or ""),
    "is_pinned": "is_pinned(worker) -> boolean: is the worker on a device pinned for its "
                 "model (never evicted)?",
    "rooms": "rooms(k) -> array<{room, pool_id}>: " + (Snapshot.rooms.__doc__ or ""),
    "evictable_rooms": "evictable_rooms(k) -> array<{room, pool_id}>: "
                       + (Snapshot.evictable_rooms.__doc__ or ""),
    "job": "job(job_id) -> JobView or nil: a job among this cycle's queued heads or "
           "next_retry.",
}
GLOBALS: dict[str, str] = {
    "builtin_decide": "builtin_decide(snapshot) -> array of decision tables: what the "
                      "built-in scheduler decides for this snapshot, as fresh tables the "
                      "policy may change (each start_worker/stop_worker has `for_model`)",
    "PRIORITY": "the Priority values: " + ", ".join(f"PRIORITY.{p.name} = {p.value}"
                                                     for p in Priority),
    "print": "print(...): appends a line (at most 200 per call) to the policy's output, "
             "shown by dry runs",
}

