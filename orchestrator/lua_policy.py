"""An operator's scheduling policy in Lua: decide(snapshot) -> decisions, sandboxed.

    policy = LuaPolicy(source, instruction_limit=..., memory_limit_bytes=...,
                       time_budget_s=...)          # PolicyError if it does not compile
    decisions, problem = decide_with_fallback(policy, snapshot)
    problems = validate_source(source)             # the editor's Validate button
    policy_out, builtin_out, problems = dry_run(source, snapshot)   # the Dry-run view

The policy source defines `function decide(snapshot)` and returns an array of decision
tables (docs/POLICY.md, generated from `ACTIONS` and the snapshot's dataclasses by
tools/gen_policy_docs.py, lists every field). The snapshot a policy sees is a
read-only view of the same frozen Snapshot the built-in decides over: every field of
the Snapshot dataclass under the same name, converted by its type (records for the
view dataclasses, arrays for tuples, maps iterating in the snapshot's own order, maps
keyed by (pool_id, device_id) nested as [pool_id][device_id]), plus the Snapshot's
query methods. Top-level fields are converted on first access in a cycle; records and
containers are converted once and reused while the orchestrator keeps the same
(immutable) object and the policy keeps reading it; the top-level maps are updated in
place entry by entry. So a cycle costs what the policy reads of what changed.

Whatever goes wrong in a cycle (the policy raises, overruns its instruction, memory or
time budget, returns a non-table or a malformed decision) raises PolicyError with one
PolicyProblem; decide_with_fallback then returns the built-in scheduler's decisions for
that cycle and the problem, which the loop publishes as a fact. Decisions that are
well-formed but wrong (a missing worker, overcommitted memory) are not the policy
module's business: orchestrator.validator refuses them one by one, like the
built-in's. Problem codes (stable; on the API they travel as ErrorCode POLICY_INVALID):

    POLICY_SYNTAX              the source does not compile (line given)
    POLICY_NO_DECIDE           the source defines no function decide(snapshot)
    POLICY_ERROR               the policy raised (line given when Lua names one)
    POLICY_INSTRUCTION_LIMIT   more Lua instructions than instruction_limit in one call
    POLICY_TIME_BUDGET         more wall time than time_budget_s in one call
    POLICY_MEMORY_LIMIT        more than memory_limit_bytes allocated in one call
    POLICY_INVALID             decide returned something other than an array of
                               well-formed decisions
"""

from __future__ import annotations

import dataclasses
import enum
import math
import time
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from orchestrator import scheduler
from orchestrator.lua_sandbox import (DEFAULT_INSTRUCTIONS, DEFAULT_MEMORY, DEFAULT_TIME_S, ERROR,
                                      INVALID, SYNTAX, Limits, Sandbox, SandboxFailure)
from orchestrator.snapshot import (Decision, Dispatch, EvictModel, JobView, Preload,
                                   Snapshot, StartWorker, StopWorker, Wait)
from orchestrator.types import Priority
from orchestrator.validator import validate

NO_DECIDE = "POLICY_NO_DECIDE"
PROBLEM_CODES: dict[str, str] = {
    SYNTAX: "the source does not compile (the line is given)",
    NO_DECIDE: "the source defines no global function decide(snapshot)",
    ERROR: "the policy raised an error (the line is given when Lua names one)",
    "POLICY_INSTRUCTION_LIMIT": "more Lua instructions than instruction_limit in one call",
    "POLICY_TIME_BUDGET": "more wall time than time_budget_s in one call",
    "POLICY_MEMORY_LIMIT": "more than memory_limit_bytes allocated in one call",
    INVALID: "decide returned something other than an array of well-formed decisions",
}
DEFAULT_REASON = "lua policy"
MAX_DECISIONS = 20_000
MAX_REASON_CHARS = 1000


# ---- problems ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """Why a policy was not used (for a cycle, or at all): a stable code, a message for
    people, and the policy source line it points at (0: none)."""
    code: str
    message: str
    line: int = 0

    def __str__(self) -> str:
        at = f" (line {self.line})" if self.line else ""
        return f"{self.code}: {self.message}{at}"


class PolicyError(Exception):
    """A policy could not be compiled or could not decide this cycle."""

    def __init__(self, problem: PolicyProblem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def _problem(f: SandboxFailure) -> PolicyProblem:
    return PolicyProblem(f.code, f.message, f.line)


# ---- decisions: the Lua tables and the dataclasses ----------------------------------------

@dataclass(frozen=True, slots=True)
class Field:
    """One field of a decision table. kind: id (non-empty string), ids (non-empty array
    of ids), text (string), int (integer >= 0), num (finite number)."""
    name: str  # in Lua
    kind: str
    required: bool
    doc: str
    attr: str = ""  # the dataclass attribute, when it differs from `name` ("" = none)


@dataclass(frozen=True, slots=True)
class Action:
    name: str
    cls: type
    fields: tuple[Field, ...]


_REASON = Field("reason", "text", False,
                f'why (becomes the fact\'s message); default "{DEFAULT_REASON}"')
_FOR_MODEL = Field("for_model", "id", False, "set by builtin_decide(): the model whose jobs the "
                   "decision serves (the model of the wait that follows it); ignored")
ACTIONS: dict[str, Action] = {a.name: a for a in (
    Action("dispatch", Dispatch, (
        Field("job_id", "id", True, "a queued head of this cycle (snapshot.queued)"),
        Field("worker_id", "id", True, "a READY worker of the job's model with a free slot"),
        _REASON)),
    Action("start_worker", StartWorker, (
        Field("model_ref", "id", True, "the model to serve"),
        Field("pool_id", "id", True, "an available pool offering the model's engine"),
        Field("device_ids", "ids", True, "the mask: devices of that pool, each once"),
        Field("memory_estimate", "int", False, "bytes reserved on every device of the mask; "
              "default: the model's head job's memory_estimate (required when the model "
              "has no queued job)"),
        _REASON, _FOR_MODEL)),
    Action("stop_worker", StopWorker, (
        Field("worker_id", "id", True, "an idle worker (READY, no job running), not pinned"),
        _REASON, _FOR_MODEL)),
    Action("wait", Wait, (
        Field("job_id", "id", True, "the first waiting job (its waiting_reason becomes "
              "`reason`)"),
        Field("reason", "text", False, f'shown to the job\'s client; default "{DEFAULT_REASON}"'),
        Field("model_ref", "id", False, "default: the job's model"),
        Field("jobs", "int", False, "how many jobs wait with it; default 1"),
        Field("wake_at", "num", False, "epoch seconds at which the loop should look again "
              "(Wait.until; `until` is a Lua keyword); default 0 = no timer", attr="until"))),
    Action("preload", Preload, (
        Field("pool_id", "id", True, "an available pool"),
        Field("model_ref", "id", True, "the model whose files to keep in RAM"),
        _REASON)),
    Action("evict_model", EvictModel, (
        Field("pool_id", "id", True, "an available pool"),
        Field("model_ref", "id", True, "a model not pinned on that pool"),
        _REASON)),
)}
_ACTION_OF = {a.cls: a for a in ACTIONS.values()}


def _encode(decisions: list[Decision]) -> list:
    """Decisions as the flat list the Lua side decodes: per decision its action, then each
    field in ACTIONS order (false when absent; ids as a count followed by the ids)."""
    flat: list = []
    add = flat.append
    stops: list[int] = []  # indexes of for_model slots of StopWorkers awaiting their Wait
    for d in decisions:
        a = _ACTION_OF[type(d)]
        add(a.name)
        for f in a.fields:
            if f.name == "for_model":
                if isinstance(d, StartWorker):
                    add(d.model_ref)
                else:
                    stops.append(len(flat))
                    add(False)
            elif f.kind == "ids":
                ids = getattr(d, f.name)
                add(len(ids))
                flat.extend(ids)
            else:
                add(getattr(d, f.attr or f.name))
        if isinstance(d, Wait) and stops:
            for i in stops:
                flat[i] = d.model_ref
            stops.clear()
    return flat


def _invalid(i: int, action: str, msg: str) -> PolicyError:
    return PolicyError(PolicyProblem(INVALID, f"decision {i} ({action}): {msg}"))


def _value(i: int, a: Action, f: Field, v):
    """A field's value checked (the Lua side checked its Lua type)."""
    if f.kind == "id":
        if not v or len(v) > 1024:
            raise _invalid(i, a.name, f"field '{f.name}' must be a non-empty string of at "
                                      "most 1024 characters")
    elif f.kind == "text":
        return v[:MAX_REASON_CHARS]
    elif f.kind == "int":
        if not (0 <= v < 1 << 62) or v != int(v):
            raise _invalid(i, a.name, f"field '{f.name}' must be an integer >= 0, got {v!r}")
        return int(v)
    elif f.kind == "num":
        if not math.isfinite(v):
            raise _invalid(i, a.name, f"field '{f.name}' must be a finite number, got {v!r}")
        return float(v)
    return v


def _decode(flat: tuple, snap: Snapshot) -> list[Decision]:
    """The flat values the Lua side returned (shape and Lua types checked there) as
    Decision dataclasses: values checked, defaults filled in."""
    out: list[Decision] = []
    i, n = 0, len(flat)
    heads: dict[str, JobView] | None = None
    while i < n:
        a = ACTIONS[flat[i]]
        i += 1
        k = len(out) + 1
        vals: dict[str, Any] = {}
        for f in a.fields:
            v = flat[i]
            i += 1
            if f.kind == "ids":
                ids = flat[i:i + v]
                i += v
                if not ids or len(set(ids)) != len(ids) or not all(0 < len(d) <= 1024 for d in ids):
                    raise _invalid(k, a.name, f"field '{f.name}' must hold 1 to 64 distinct "
                                              "non-empty device ids")
                vals[f.name] = ids
            elif v is not False:
                vals[f.name] = _value(k, a, f, v)
        reason = vals.get("reason", DEFAULT_REASON)
        if a.cls is Dispatch:
            out.append(Dispatch(vals["job_id"], vals["worker_id"], reason))
        elif a.cls is StartWorker:
            mem = vals.get("memory_estimate")
            if mem is None:
                hs = snap.queued.get(vals["model_ref"])
                if not hs:
                    raise _invalid(k, a.name, f"memory_estimate is required for "
                                              f"{vals['model_ref']}, which has no queued job")
                mem = hs[0].memory_estimate
            out.append(StartWorker(vals["model_ref"], vals["pool_id"], vals["device_ids"], mem,
                                   reason))
        elif a.cls is StopWorker:
            out.append(StopWorker(vals["worker_id"], reason))
        elif a.cls is Wait:
            model = vals.get("model_ref")
            if model is None:
                if heads is None:
                    heads = _jobs_by_id(snap)
                job = heads.get(vals["job_id"])
                model = job.model_ref if job is not None else ""
            out.append(Wait(vals["job_id"], reason, model, vals.get("jobs", 1),
                            vals.get("wake_at", 0.0)))
        else:
            out.append(a.cls(vals["pool_id"], vals["model_ref"], reason))
    return out


def _jobs_by_id(snap: Snapshot) -> dict[str, JobView]:
    jobs = {j.job_id: j for js in snap.queued.values() for j in js}
    for j in snap.next_retry.values():
        jobs.setdefault(j.job_id, j)
    return jobs


def decision_fields(d: Decision, rejected: str = "") -> dict[str, Any]:
    """A decision as the fields of the admin API's Decision message (dry runs, facts)."""
    a = _ACTION_OF[type(d)]
    out: dict[str, Any] = {"action": a.name, "reason": d.reason}
    for name in ("job_id", "worker_id", "pool_id", "model_ref"):
        v = getattr(d, name, None)
        if v:
            out[name] = v
    if isinstance(d, StartWorker):
        out["device_ids"] = list(d.device_ids)
    if rejected:
        out["rejected"] = rejected
    return out


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


class _View:
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

_POLICY_LUA = r"""
local api, SPEC, FIELD_NAMES, fetch, py_call, py_builtin, PRIORITY_T, MAX_DECISIONS = ...
local raw = api.raw
local type, next, rawget, rawlen, math_type = raw.type, raw.next, raw.rawget, raw.rawlen,
  raw.math_type
local error, tostring, fmt = raw.error, raw.tostring, raw.s_format
local unwrap, callback, proxy, ipairs, pairs = api.unwrap, api.callback, api.proxy,
  raw.ipairs, raw.pairs
local fetch_cb, call_cb, builtin_cb = callback(fetch, true), callback(py_call),
  callback(py_builtin, true)

local FIELD_SET = {}
for i = 1, #FIELD_NAMES do FIELD_SET[FIELD_NAMES[i]] = true end
local FIELDS_OF, KNOWN = {}, {}
for i = 1, #SPEC do
  local a = SPEC[i]
  FIELDS_OF[a[1]] = a[2]
  local known = {action = true}
  for j = 1, #a[2] do known[a[2][j][1]] = true end
  KNOWN[a[1]] = known
end
local PRIORITY = proxy(PRIORITY_T)

local function deny(t, k) error("the snapshot view is read-only (cannot set '"
  .. tostring(k) .. "')", 2) end

local function new_snapshot(cycle)
  local cache, snap, jobs = {}, nil, nil
  local fns = {}
  -- the Snapshot's query methods, in Lua over the view (rooms(k) asks Python when the
  -- snapshot did not precompute k); snapshot.f(x) and snapshot:f(x) both work
  function fns.eligible(a, b)
    if a == snap then a = b end
    return (snap.queued_total[a] or 0) - (snap.waiting_backoff[a] or 0)
  end
  function fns.is_pinned(a, b)
    if a == snap then a = b end
    if type(a) ~= "table" then error("is_pinned: a worker table expected", 2) end
    local devs = snap.pins[a.model_ref]
    local here = devs and devs[a.pool_id]
    if not here then return false end
    for _, d in ipairs(a.device_ids) do if here[d] then return true end end
    return false
  end
  function fns.job(a, b)
    if a == snap then a = b end
    if jobs == nil then
      jobs = {}
      for _, heads in pairs(snap.queued) do
        for _, j in ipairs(heads) do jobs[j.job_id] = j end
      end
      for _, j in pairs(snap.next_retry) do
        if jobs[j.job_id] == nil then jobs[j.job_id] = j end
      end
    end
    return jobs[a]
  end
  local function ranked(name, field)
    return function(a, b)
      if a == snap then a = b end
      if math_type(a) ~= "integer" or a < 1 or a > 64 then
        error(name .. ": k must be an integer from 1 to 64", 2)
      end
      return snap[field][a] or call_cb(name, cycle, a)
    end
  end
  fns.rooms = ranked("rooms", "pools_by_room")
  fns.evictable_rooms = ranked("evictable_rooms", "pools_by_evictable_room")
  local function index(_, k)
    local v = cache[k]
    if v == nil then
      if FIELD_SET[k] then v = fetch_cb(cycle, k)
      else
        v = fns[k]
        if v == nil then error("the snapshot has no field '" .. tostring(k) .. "'", 2) end
      end
      cache[k] = v
    end
    return v
  end
  snap = setmetatable({}, {
    __index = index, __newindex = deny, __len = function() return #FIELD_NAMES end,
    __pairs = function(p)
      local i = 0
      return function()
        i = i + 1
        local k = FIELD_NAMES[i]
        if k ~= nil then return k, index(p, k) end
      end, p, nil
    end,
    __metatable = "read-only"})
  return snap
end

-- builtin_decide: the built-in's decisions as fresh tables (Python hands a flat list)
local function decode(flat)
  local out, i, n = {}, 1, rawlen(flat)
  while i <= n do
    local action = flat[i]; i = i + 1
    local d = {action = action}
    local fields = FIELDS_OF[action]
    for j = 1, #fields do
      local f = fields[j]
      local v = flat[i]; i = i + 1
      if f[2] == "ids" then
        local ids = {}
        for m = 1, v do ids[m] = flat[i]; i = i + 1 end
        d[f[1]] = ids
      elseif v ~= false then d[f[1]] = v end
    end
    out[#out + 1] = d
  end
  return out
end

-- the policy's result, checked and flattened (runs under the policy's budget)
-- the policy's result, flattened with raw access only (no metamethod of the policy's
-- runs here); Lua checks the shape and the types, Python the values (_decode)
local function bad(i, action, msg)
  error({fmt("decision %d%s: %s", i, action and (" (" .. tostring(action) .. ")") or "", msg)})
end
local LUA_TYPE = {id = "string", text = "string", int = "number", num = "number"}

local function flatten(r)
  if type(r) ~= "table" then
    error({"decide must return an array of decision tables, got " .. type(r)})
  end
  r = unwrap(r)
  local n = rawlen(r)
  if n > MAX_DECISIONS then
    error({fmt("too many decisions (%d, at most %d)", n, MAX_DECISIONS)})
  end
  local count = 0
  for k in next, r do
    count = count + 1
    if math_type(k) ~= "integer" or k < 1 or k > n then
      error({"decide must return an array (keys 1..n) of decision tables; found key "
        .. tostring(k)})
    end
  end
  if count ~= n then error({"decide must return an array without holes"}) end
  local out, o = {}, 0
  for i = 1, n do
    local d = rawget(r, i)
    if type(d) ~= "table" then bad(i, nil, "a decision must be a table, got " .. type(d)) end
    d = unwrap(d)
    local action = rawget(d, "action")
    local fields = FIELDS_OF[action]
    if not fields then
      bad(i, nil, "unknown action " .. (type(action) == "string" and fmt("%q", action)
        or type(action)) .. " (dispatch, start_worker, stop_worker, wait, preload, evict_model)")
    end
    local known = KNOWN[action]
    for k in next, d do
      if not known[k] then
        local hint = k == "until" and " (use wake_at: until is a Lua keyword)" or ""
        bad(i, action, "unknown field " .. (type(k) == "string" and fmt("%q", k)
          or tostring(k)) .. hint)
      end
    end
    o = o + 1; out[o] = action
    for j = 1, #fields do
      local f = fields[j]
      local name, kind = f[1], f[2]
      local v = rawget(d, name)
      if v == nil then
        if f[3] then bad(i, action, "missing field '" .. name .. "'") end
        o = o + 1; out[o] = kind == "ids" and 0 or false
      elseif kind == "ids" then
        if type(v) ~= "table" then
          bad(i, action, "field '" .. name .. "' must be an array of strings, got " .. type(v))
        end
        v = unwrap(v)
        local m = rawlen(v)
        if m > 64 then bad(i, action, "field '" .. name .. "' holds more than 64 ids") end
        o = o + 1; out[o] = m
        for q = 1, m do
          local id = rawget(v, q)
          if type(id) ~= "string" then
            bad(i, action, "field '" .. name .. "' must be an array of strings, found a "
              .. type(id))
          end
          o = o + 1; out[o] = id
        end
      else
        if type(v) ~= LUA_TYPE[kind] then
          bad(i, action, fmt("field '%s' must be a %s, got %s", name, LUA_TYPE[kind], type(v)))
        end
        o = o + 1; out[o] = v
      end
    end
  end
  return out, o
end

local unpack = api.unpack
local function decide_body(env, snap)
  local decide = rawget(env, "decide")
  if type(decide) ~= "function" then return "no_decide", type(decide) end
  local r = decide(snap)
  local ok, out, n = api.pcall(flatten, r)
  if not ok then
    if type(out) == "table" then return "invalid", out[1] end
    error(out, 0)
  end
  return "ok", unpack(out, 1, n)
end

local function check_body(env)
  return type(rawget(env, "decide"))
end

local function cycle_env(cycle)
  local snap = new_snapshot(cycle)
  local extra = {PRIORITY = PRIORITY}
  extra.builtin_decide = function(s)
    if s ~= nil and s ~= snap then error("builtin_decide: pass this cycle's snapshot", 2) end
    return decode(builtin_cb(cycle))
  end
  return snap, extra
end

return {cycle_env = cycle_env, decide_body = decide_body, check_body = check_body}
"""


_NO_SNAPSHOT = "the snapshot is only available inside decide(), in its own cycle"


class LuaPolicy:
    """A compiled Lua policy and the sandbox it runs in. `decide(snapshot)` returns the
    policy's decisions or raises PolicyError; not thread-safe (one loop calls it)."""

    def __init__(self, source: str, *, instruction_limit: int = DEFAULT_INSTRUCTIONS,
                 memory_limit_bytes: int = DEFAULT_MEMORY,
                 time_budget_s: float = DEFAULT_TIME_S) -> None:
        self.source = source
        self.limits = Limits(instruction_limit, memory_limit_bytes, time_budget_s)
        self._sb = Sandbox(self.limits)
        self._view = _View(self._sb)
        self._snap: Snapshot | None = None
        self._cycle = 0
        self._builtin: tuple[int, Any] | None = None
        lua = self._sb.lua
        spec = lua.table_from([lua.table_from([a.name, lua.table_from(
            [lua.table_from([f.name, f.kind, f.required]) for f in a.fields])])
            for a in ACTIONS.values()])
        self._api = lua.execute(
            _POLICY_LUA, self._sb.api, spec, lua.table_from([n for n, _ in snapshot_fields()]),
            self._fetch, self._call, self._builtin_flat,
            lua.table_from({p.name: int(p) for p in Priority}), MAX_DECISIONS)
        try:
            self._chunk = self._sb.compile(source)
            snap, extra = self._api.cycle_env(0)
            (kind,) = self._sb.run(self._chunk, extra, self._api.check_body)
        except SandboxFailure as f:
            raise PolicyError(_problem(f)) from None
        if kind != "function":
            raise PolicyError(PolicyProblem(NO_DECIDE, "the policy must define a global "
                                            f"function decide(snapshot) (decide is {kind})"))
        self.output: list[str] = []  # print() lines of the last call

    # -- Python callbacks (called from the Lua side, paused) --------------------------------
    def _fetch(self, cycle: int, name: str):
        if cycle != self._cycle or self._snap is None:
            return None, _NO_SNAPSHOT
        value = getattr(self._snap, name)
        conv = self._view.conv[name]
        if conv is None:
            return value, None
        with self._sb.unbudgeted():
            return conv(value), None

    def _call(self, name: str, cycle: int, k: int):
        """rooms(k) / evictable_rooms(k) for a k the snapshot did not precompute."""
        snap = self._snap
        if cycle != self._cycle or snap is None:
            return None, _NO_SNAPSHOT
        with self._sb.unbudgeted():
            return self._view.rooms(getattr(snap, name)(k)), None

    def _builtin_flat(self, cycle: int):
        if cycle != self._cycle or self._snap is None:
            return None, _NO_SNAPSHOT
        if self._builtin is None or self._builtin[0] != cycle:
            with self._sb.unbudgeted():
                self._builtin = (cycle, self._sb.lua.table_from(
                    _encode(scheduler.decide(self._snap))))
        return self._builtin[1], None

    # -- deciding -----------------------------------------------------------------------------
    def decide(self, snapshot: Snapshot) -> list[Decision]:
        """The policy's decisions for one cycle, or PolicyError."""
        self._cycle += 1
        self._snap = snapshot
        self._view.next_cycle()
        try:
            snap, extra = self._api.cycle_env(self._cycle)
            res = self._sb.run(self._chunk, extra, self._api.decide_body, snap)
        except SandboxFailure as f:
            self.output = self._sb.output()
            raise PolicyError(_problem(f)) from None
        except Exception as exc:  # a bug of ours must not cost the cycle: fall back too
            raise PolicyError(PolicyProblem(ERROR, f"internal error running the policy: "
                                                   f"{exc!r}")) from exc
        finally:
            self._snap = None
            self._builtin = None
        self.output = self._sb.output()
        status = res[0]
        if status == "no_decide":
            raise PolicyError(PolicyProblem(NO_DECIDE, "the policy must define a global "
                                            f"function decide(snapshot) (decide is {res[1]})"))
        if status == "invalid":
            raise PolicyError(PolicyProblem(INVALID, res[1]))
        return _decode(res[1:], snapshot)

    def memory_used(self) -> int:
        """Bytes the Lua runtime holds now (the view cache included)."""
        return self._sb.memory_used()


def decide_with_fallback(policy: LuaPolicy | None, snapshot: Snapshot
                         ) -> tuple[list[Decision], PolicyProblem | None]:
    """The policy's decisions, or the built-in's with the reason the policy's were not
    used this cycle. Either way every decision still goes through the validator."""
    if policy is None:
        return scheduler.decide(snapshot), None
    try:
        return policy.decide(snapshot), None
    except PolicyError as e:
        return scheduler.decide(snapshot), e.problem


def validate_source(source: str, **limits) -> list[PolicyProblem]:
    """What is wrong with a policy's source before it ever runs on a live snapshot:
    syntax errors (with their line), errors raised by its top level, a missing decide.
    [] means it compiles and defines decide (run dry_run to see what it decides)."""
    try:
        LuaPolicy(source, **limits)
    except PolicyError as e:
        return [e.problem]
    return []


@dataclass(frozen=True)
class DryRun:
    """A dry run: each side's decisions with the validator's verdict ("" = accepted), the
    problems (a policy that fails shows no decisions of its own), timings and the
    policy's print() output. Unpacks as (policy, builtin, problems)."""
    policy: list[tuple[Decision, str]]
    builtin: list[tuple[Decision, str]]
    problems: list[PolicyProblem]
    policy_ms: float = 0.0
    builtin_ms: float = 0.0
    output: tuple[str, ...] = ()

    def __iter__(self):
        return iter((self.policy, self.builtin, self.problems))


def dry_run(source: str, snapshot: Snapshot, **limits) -> DryRun:
    """Run the policy once against `snapshot` (a live one, for the editor) next to the
    built-in, validating both; nothing is carried out."""
    t0 = time.perf_counter()
    builtin = validate(snapshot, scheduler.decide(snapshot))
    builtin_ms = (time.perf_counter() - t0) * 1000
    try:
        policy = LuaPolicy(source, **limits)
    except PolicyError as e:
        return DryRun([], builtin, [e.problem], 0.0, builtin_ms)
    t0 = time.perf_counter()
    try:
        decisions = policy.decide(snapshot)
    except PolicyError as e:
        return DryRun([], builtin, [e.problem], (time.perf_counter() - t0) * 1000, builtin_ms,
                      tuple(policy.output))
    policy_ms = (time.perf_counter() - t0) * 1000
    return DryRun(validate(snapshot, decisions), builtin, [], policy_ms, builtin_ms,
                  tuple(policy.output))


__all__ = ["LuaPolicy", "PolicyProblem", "PolicyError", "DryRun", "decide_with_fallback",
           "validate_source", "dry_run", "decision_fields", "ACTIONS", "FUNCTIONS", "GLOBALS",
           "snapshot_fields", "record_fields", "lua_type", "NO_DECIDE", "INVALID", "ERROR",
           "SYNTAX", "PROBLEM_CODES", "MAX_DECISIONS"]
