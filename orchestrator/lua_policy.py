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

import time
from dataclasses import dataclass
from typing import Any

from orchestrator import scheduler
from orchestrator.lua_sandbox import (DEFAULT_INSTRUCTIONS, DEFAULT_MEMORY, DEFAULT_TIME_S, ERROR,
                                      INVALID, SYNTAX, Limits, Sandbox, SandboxFailure)
from orchestrator.snapshot import Decision, Snapshot
from orchestrator.types import Priority
from orchestrator.validator import validate

# The decision codec and the snapshot view live in their own modules; the names the
# rest of the orchestrator, tools/gen_policy_docs.py and the tests use are here too.
from orchestrator.lua_decisions import (ACTIONS, DEFAULT_REASON, MAX_DECISIONS, NO_DECIDE,
                                        PROBLEM_CODES, PolicyError, PolicyProblem,
                                        decision_fields, decode_decisions,
                                        encode_decisions, problem_of)
from orchestrator.lua_view import (FUNCTIONS, GLOBALS, SnapshotView, kind_name, lua_type,
                                   record_fields, snapshot_fields)

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
-- runs here); Lua checks the shape and the types, Python the values (decode_decisions)
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
        self._view = SnapshotView(self._sb)
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
            raise PolicyError(problem_of(f)) from None
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
                    encode_decisions(scheduler.decide(self._snap))))
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
            raise PolicyError(problem_of(f)) from None
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
        return decode_decisions(res[1:], snapshot)

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
           "SYNTAX", "PROBLEM_CODES", "MAX_DECISIONS", "DEFAULT_REASON", "kind_name"]
