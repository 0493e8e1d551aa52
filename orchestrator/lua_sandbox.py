"""The sandbox an operator's Lua scheduling policy runs in (lupa, Lua 5.4).

One `Sandbox` owns one LuaRuntime. Trusted Lua code (`_PRELUDE`) runs first, keeps
private references to what it needs (debug.sethook, debug.setupvalue, debug.getinfo,
load, the raw library functions) and hands back a small API; then the runtime's own
globals lose every dangerous name. Policy code never sees them: each call runs the
policy's chunk afresh in a new environment built from `BASE`, so nothing a policy
stores survives from one cycle to the next (a policy is a pure function of its
snapshot, like the built-in).

What a policy can reach (the whole of `BASE`):
  assert error ipairs next pairs pcall xpcall select tonumber tostring type
  getmetatable setmetatable rawequal rawlen print _VERSION
  string (no dump, pack, unpack, packsize), table, math (no randomseed: random is
  seeded the same on every call), utf8 -- each a read-only table
What it cannot: io, os, require, package, debug, load, loadstring, dofile, loadfile,
collectgarbage, coroutine (a coroutine would run outside the instruction hook), warn,
rawget/rawset, string.dump (no bytecode anywhere: chunks load in text mode only), the
runtime's `python` module, any Python object (attribute access on one raises), the
string metatable (protected), __gc metamethods (a finalizer runs outside any call).

Limits, each ending the call with a `SandboxFailure` of a stable code:
- POLICY_INSTRUCTION_LIMIT: a count hook counts VM instructions. pcall/xpcall cannot
  swallow it: once a call is aborted the wrappers re-raise, a message handler is not
  called, and every later hook raises again.
- POLICY_TIME_BUDGET: the hook reads the wall clock too. Converting the snapshot for
  the policy (memoised per cycle) is not charged; any other Python callback costs its
  time and 100 instructions.
- POLICY_MEMORY_LIMIT: lupa's counting allocator (`max_memory`), set per call to what
  the runtime holds + `memory_limit_bytes` (the view built during the call is not
  charged).
- POLICY_ERROR: the policy raised (Lua's message, and its line).
Nothing is pre-empted inside one VM instruction or C function, so each is kept short:
the hook runs every `step` instructions, 1 at the start of a call, doubling after each
cheap window up to HOOK_EVERY, back to 1 after a window of 2 ms or more and after every
completed garbage collection (heavy allocation: the VM's own `..` on big strings). C
functions whose cost memory does not bound are bounded by argument checks: string.rep
(size, count), pattern functions (estimated worst-case matcher steps <=
MAX_MATCH_STEPS), table.sort (MAX_SORT elements), table.move / unpack / concat
(MAX_ELEMENTS); those linear in a string's size (sub, upper, lower, reverse, byte, char,
format, utf8.*) are charged an instruction per 16 bytes and read the clock each call.
What remains: HOOK_EVERY instructions that each compare two huge strings without
allocating (about 80 memcmp of up to memory_limit_bytes before the next check).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from lupa import lua54

HOOK_EVERY = 250  # VM instructions between two hook calls (any count hook costs ~2x)
MAX_MATCH_STEPS = 10_000_000  # estimated worst-case matcher steps per pattern call
MAX_ELEMENTS = 1 << 20  # elements per table.move / unpack / concat call
MAX_SORT = 1 << 17  # elements per table.sort call (a C sort of 2^20 takes ~0.5 s)
MAX_OUTPUT_LINES = 200  # print() lines kept per call (each cut to 500 characters)
MAX_SOURCE_BYTES = 256 * 1024

INSTRUCTION_LIMIT = "POLICY_INSTRUCTION_LIMIT"
TIME_BUDGET = "POLICY_TIME_BUDGET"
MEMORY_LIMIT = "POLICY_MEMORY_LIMIT"
ERROR = "POLICY_ERROR"
SYNTAX = "POLICY_SYNTAX"
INVALID = "POLICY_INVALID"


@dataclass(frozen=True, slots=True)
class SandboxFailure(Exception):
    """A call into policy code that did not complete: a stable code, Lua's message, and
    the policy line it points at (0 when none)."""
    code: str
    message: str
    line: int = 0

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


DEFAULT_INSTRUCTIONS = 10_000_000  # VM instructions per call (~70-100 ms of plain Lua)
DEFAULT_MEMORY = 32 << 20  # bytes the policy may allocate in one call
DEFAULT_TIME_S = 0.1  # wall time per call (converting the snapshot for it not included)


@dataclass(frozen=True, slots=True)
class Limits:
    instruction_limit: int = DEFAULT_INSTRUCTIONS
    memory_limit_bytes: int = DEFAULT_MEMORY
    time_budget_s: float = DEFAULT_TIME_S

    def __post_init__(self) -> None:
        if self.instruction_limit < HOOK_EVERY:
            raise ValueError(f"instruction_limit must be >= {HOOK_EVERY}")
        if self.memory_limit_bytes < 64 * 1024:
            raise ValueError("memory_limit_bytes must be >= 64 KiB")
        if not self.time_budget_s > 0:
            raise ValueError("time_budget_s must be > 0")


_PRELUDE = r"""
local clock, HOOK_EVERY, MAX_MATCH_STEPS, MAX_ELEMENTS, MAX_SORT, MAX_LINES = ...
local sethook, setupvalue = debug.sethook, debug.setupvalue
local load, pcall, xpcall, error, type = load, pcall, xpcall, error, type
local next, select = next, select
local setmetatable, getmetatable, rawget, rawset, rawequal, rawlen = setmetatable, getmetatable,
  rawget, rawset, rawequal, rawlen
local tostring, tonumber, ipairs, pairs, assert = tostring, tonumber, ipairs, pairs, assert
local s_byte, s_sub, s_format, s_rep = string.byte, string.sub, string.format, string.rep
local s_find, s_match, s_gmatch, s_gsub = string.find, string.match, string.gmatch, string.gsub
local t_sort, t_move, t_unpack, t_concat, t_pack = table.sort, table.move, table.unpack,
  table.concat, table.pack
local m_randomseed, m_huge, m_type = math.randomseed, math.huge, math.type
local utf8_len = utf8.len

-- ---- the call in flight ------------------------------------------------------------
local fires, max_fires, deadline, paused = 0, 0, 0, false
local aborted, abort_code = nil, nil   -- set once a limit is hit: the call is over
local msg_instr, msg_time = "", ""
local mem_limit = 0

-- The verdict on the call in flight: the message to end it with, or nil and the time.
local function verdict()
  if aborted then return aborted end
  if fires > max_fires then
    aborted, abort_code = msg_instr, "POLICY_INSTRUCTION_LIMIT"
    return aborted
  end
  local now = clock()
  if now > deadline then
    aborted, abort_code = msg_time, "POLICY_TIME_BUDGET"
    return aborted
  end
  return nil, now
end

local function check()   -- from functions the policy calls: raise at once
  local v, now = verdict()
  if v then error(v, 0) end
  return now
end

-- The hook runs every `step` VM instructions: 1 at the start of a call, doubling after
-- each cheap window up to HOOK_EVERY, back to 1 after a window that took SLOW_S or more
-- (an instruction copying a big string costs milliseconds: the clock must be read
-- between two of them). Each completed garbage collection, which heavy allocation
-- brings about, also sets it back to 1 (a finalizer cannot raise, but it can re-arm
-- the hook). The hook never raises in run() itself: between the protected call's
-- return and sethook() an error would escape it.
local getinfo = debug.getinfo
local SLOW_S, step, last, running = 0.002, 1, 0, false
local run
local hook
hook = function()
  if paused then return end
  fires = fires + step / HOOK_EVERY
  local v, now = verdict()
  if v then
    if getinfo(2, "f").func ~= run then error(v, 0) end
    return
  end
  local next_step = now - last >= SLOW_S and 1 or step * 2
  if next_step > HOOK_EVERY then next_step = HOOK_EVERY end
  if next_step ~= step then step = next_step; sethook(hook, "", step) end
  last = now
end

local sentinel = {}
sentinel.__gc = function()
  if running and not paused and step > 1 then step = 1; sethook(hook, "", 1) end
  setmetatable({}, sentinel)   -- watch the next collection
end
setmetatable({}, sentinel)

local function charge(instructions)   -- C work done outside the VM, in instructions
  fires = fires + instructions / HOOK_EVERY
  check()
end

-- pcall / xpcall cannot swallow an abort
local function rethrow(ok, ...)
  if aborted then error(aborted, 0) end
  return ok, ...
end
local function safe_pcall(f, ...) return rethrow(pcall(f, ...)) end
-- A hook's error leaves hooks off until it reaches a pcall, so a message handler would
-- run unbounded: once the call is aborted, the policy's handler is not called at all.
local function safe_xpcall(f, h, ...)
  return rethrow(xpcall(f, function(e) if aborted then return e end return h(e) end, ...))
end

-- ---- read-only proxies ---------------------------------------------------------------
-- A proxy is an empty table whose (protected) metatable holds its backing table as
-- __index and, for maps and records, its keys in order as __keys (no weak tables: the
-- collector's ephemeron passes would cost more than the lookups save).
local READ_ONLY = "read-only"
local dgetmetatable = debug.getmetatable
local function deny(t, k) error("the snapshot view is read-only (cannot set '"
  .. tostring(k) .. "')", 2) end
local function len_of(p)
  local mt = dgetmetatable(p)
  local keys = mt.__keys
  return keys and #keys or #mt.__index
end
local function pairs_of(p)
  local mt, i = dgetmetatable(p), 0
  local b, keys = mt.__index, mt.__keys
  if keys then
    return function() i = i + 1; local k = keys[i]; if k ~= nil then return k, b[k] end end, p, nil
  end
  return function() i = i + 1; local v = b[i]; if v ~= nil then return i, v end end, p, nil
end
local function proxy(b, keys)
  return setmetatable({}, {__index = b, __newindex = deny, __len = len_of,
                           __pairs = pairs_of, __metatable = READ_ONLY, __keys = keys})
end
local function parts(t)   -- backing, keys of a proxy; nil for anything else
  local mt = dgetmetatable(t)
  if mt and mt.__newindex == deny then return mt.__index, mt.__keys end
end
local function array(...) return proxy({...}) end
local function map(n, ...)       -- n keys, then key1, value1, key2, value2, ...
  local b, keys, kv = {}, {}, {...}
  for i = 1, n do
    local k = kv[2 * i - 1]
    keys[i] = k
    b[k] = kv[2 * i]
  end
  return proxy(b, keys)
end
-- A map the trusted side updates in place from one cycle to the next (the snapshot's
-- top-level maps): set values, then (when keys came or went or moved) the key order.
local function map_set(p, n, ...)
  local b, kv = parts(p), {...}
  for i = 1, n do b[kv[2 * i - 1]] = kv[2 * i] end
end
local function map_rekey(p, n, ...)
  local b, keys = parts(p)
  local new, keep = {...}, {}
  for i = 1, n do keep[new[i]] = true end
  for i = 1, #keys do
    if not keep[keys[i]] then b[keys[i]] = nil end
    keys[i] = nil
  end
  for i = 1, n do keys[i] = new[i] end
end
local function record_maker(names)   -- names: field names in order
  local keys, n = {}, #names
  for i = 1, n do keys[i] = names[i] end
  return function(...)
    local b, v = {}, {...}
    for i = 1, n do b[keys[i]] = v[i] end
    return proxy(b, keys)
  end
end
local function unwrap(t) return parts(t) or t end

-- ---- the libraries a policy gets -----------------------------------------------------
local function str_arg(s, n, fname)
  local ts = type(s)
  if ts == "number" then return tostring(s) end
  if ts ~= "string" then
    error(s_format("bad argument #%d to '%s' (string expected, got %s)", n, fname, ts), 3)
  end
  return s
end

local function skip_set(p, i)   -- p[i] == '[': index after the matching ']'
  i = i + 1
  if s_byte(p, i) == 94 then i = i + 1 end   -- ^
  if s_byte(p, i) == 93 then i = i + 1 end   -- a leading ] is literal
  while i <= #p do
    local c = s_byte(p, i)
    if c == 37 then i = i + 2
    elseif c == 93 then return i + 1
    else i = i + 1 end
  end
  return i
end

-- Worst-case steps of Lua's backtracking matcher: (n+1)^k * 2^q per start position,
-- k = unbounded repetitions (* + - %b back-references), q = optional items (?).
local function match_steps(n, p, may_anchor)
  local plain = not s_find(p, "[%^%$%*%+%?%.%(%)%[%]%%%-]")
  if plain then return n * #p / 10 end
  local i, np, k, q = 1, #p, 0, 0
  local anchored = may_anchor and s_byte(p, 1) == 94
  if anchored then i = 2 end
  while i <= np do
    local c = s_byte(p, i)
    local single = true
    if c == 37 then
      local d = s_byte(p, i + 1)
      if d == 98 then k = k + 1; i = i + 4; single = false        -- %bxy
      elseif d == 102 then i = skip_set(p, i + 2); single = false -- %f[set]
      elseif d and d >= 48 and d <= 57 then k = k + 1; i = i + 2; single = false
      else i = i + 2 end
    elseif c == 91 then i = skip_set(p, i)
    elseif c == 40 or c == 41 then i = i + 1; single = false     -- ( )
    else i = i + 1 end
    if single then
      local qc = s_byte(p, i)
      if qc == 42 or qc == 43 or qc == 45 then k = k + 1; i = i + 1
      elseif qc == 63 then q = q + 1; i = i + 1 end
    end
  end
  local starts = anchored and 1 or (n + 1)
  return starts * (n + 1) ^ k * 2 ^ q
end

local function check_match(s, p, fname, plain, may_anchor)
  s = str_arg(s, 1, fname)
  p = str_arg(p, 2, fname)
  local steps = plain and (#s * #p / 10) or match_steps(#s, p, may_anchor)
  if steps > MAX_MATCH_STEPS then
    error(s_format("%s: pattern too costly for a %d-byte string (worst case %.3g steps, "
      .. "limit %d): use a simpler pattern or a shorter string", fname, #s, steps,
      MAX_MATCH_STEPS), 3)
  end
  charge(steps / 50)
  return s, p
end

-- Functions linear in their strings' sizes are charged for them (an instruction per 16
-- bytes) and read the clock on every call, so copying big strings in a loop is timed
-- call by call rather than every HOOK_EVERY instructions.
local function sized(fn)
  return function(s, ...)
    if type(s) == "string" and #s > 4096 then charge(#s / 16) end
    return fn(s, ...)
  end
end
local function sized_args(fn)   -- format(fmt, ...), char(...): every argument counts
  return function(...)
    local n = select("#", ...)
    if n > 16 then
      charge(n)
    else
      for i = 1, n do
        local v = (select(i, ...))
        if type(v) == "string" and #v > 4096 then charge(#v / 16) end
      end
    end
    return fn(...)
  end
end
local string_lib = {
  len = string.len, byte = sized(string.byte), char = sized_args(string.char),
  format = sized_args(string.format), lower = sized(string.lower),
  upper = sized(string.upper), reverse = sized(string.reverse), sub = sized(string.sub),
}
function string_lib.rep(s, n, sep)
  s = str_arg(s, 1, "rep")
  sep = sep == nil and "" or str_arg(sep, 3, "rep")
  if type(n) ~= "number" then error("bad argument #2 to 'rep' (number expected)", 2) end
  if n > MAX_ELEMENTS * 16 or n > 0 and (#s + #sep) * n > mem_limit then
    error(s_format("rep: result too large (%.0f copies of %d bytes)", n, #s + #sep), 2)
  end
  charge(n > 0 and n * (#s + #sep) / 64 + n / 16 or 0)
  return s_rep(s, n, sep)
end
function string_lib.find(s, p, init, plain)
  s, p = check_match(s, p, "find", plain, true)
  return s_find(s, p, init, plain)
end
function string_lib.match(s, p, init)
  s, p = check_match(s, p, "match", false, true)
  return s_match(s, p, init)
end
function string_lib.gmatch(s, p)
  s, p = check_match(s, p, "gmatch", false, false)
  return s_gmatch(s, p)
end
function string_lib.gsub(s, p, repl, n)
  s, p = check_match(s, p, "gsub", false, true)
  return s_gsub(s, p, repl, n)
end

local function count_arg(i, j, fname)
  if type(i) == "number" and type(j) == "number" and j - i >= MAX_ELEMENTS then
    error(s_format("%s: too many elements (%.0f, limit %d)", fname, j - i + 1, MAX_ELEMENTS), 3)
  end
end
local table_lib = {insert = table.insert, remove = table.remove, pack = table.pack}
function table_lib.sort(t, cmp)
  local n = #t
  if n > MAX_SORT then error(s_format("sort: too many elements (%d, limit %d)", n,
    MAX_SORT), 2) end
  charge(n * 20)
  return t_sort(t, cmp)
end
function table_lib.move(a1, f, e, t, a2)
  count_arg(f, e, "move")
  if type(f) == "number" and type(e) == "number" and e >= f then charge(e - f) end
  return t_move(a1, f, e, t, a2)
end
function table_lib.unpack(t, i, j)
  i = i or 1
  if j == nil then j = #t end
  count_arg(i, j, "unpack")
  return t_unpack(t, i, j)
end
function table_lib.concat(t, sep, i, j)
  i = i or 1
  if j == nil then j = #t end
  count_arg(i, j, "concat")
  if type(i) == "number" and type(j) == "number" and j >= i then charge(j - i) end
  return t_concat(t, sep, i, j)
end

local math_lib = {}
for k, v in pairs(math) do if k ~= "randomseed" then math_lib[k] = v end end
local utf8_lib = {charpattern = utf8.charpattern, char = sized_args(utf8.char)}
for _, k in ipairs({"codes", "codepoint", "len", "offset"}) do utf8_lib[k] = sized(utf8[k]) end

local function safe_setmetatable(t, mt)
  if type(t) ~= "table" then
    error("bad argument #1 to 'setmetatable' (table expected, got " .. type(t) .. ")", 2)
  end
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("setmetatable: __gc metamethods are not allowed in a policy", 2)
  end
  local ok, e = pcall(setmetatable, t, mt)
  if not ok then error(e, 2) end
  return t
end

local output = {}
local function safe_print(...)
  if #output >= MAX_LINES then return end
  local parts = {}
  for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
  local line = s_sub(t_concat(parts, "\t"), 1, 500)
  output[#output + 1] = utf8_len(line) and line or "(line is not valid UTF-8)"
end

local STRING = proxy(string_lib)
local BASE = {
  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
  pcall = safe_pcall, xpcall = safe_xpcall, select = select, tonumber = tonumber,
  tostring = tostring, type = type, getmetatable = getmetatable,
  setmetatable = safe_setmetatable, rawequal = rawequal, rawlen = rawlen,
  print = safe_print, _VERSION = _VERSION,
  string = STRING, table = proxy(table_lib), math = proxy(math_lib), utf8 = proxy(utf8_lib),
}
-- ("x"):upper() and friends go through the same bounded library
local string_mt = getmetatable("")
string_mt.__index = STRING
string_mt.__metatable = READ_ONLY

local function new_env(extra)
  local env = {}
  for k, v in next, BASE do env[k] = v end
  if extra then for k, v in next, extra do env[k] = v end end
  env._G = env
  return env
end

-- ---- compiling and running --------------------------------------------------------------
local function compile(source)
  return load(source, "=policy", "t", {})
end

local function err_text(e)
  local te = type(e)
  if te == "string" then return utf8_len(e) and e or "(error message is not valid UTF-8)" end
  if te == "number" then return tostring(e) end
  return "error object is a " .. te .. " value"
end

-- Run `body(env, ...)` with the chunk loaded into a fresh env, under the limits.
-- Returns true, results... or false, code, message.
run = function(chunk, extra, limit_fires, budget_deadline, m_instr, m_time, m_limit,
               body, ...)
  fires, max_fires, deadline, paused = 0, limit_fires, budget_deadline, false
  aborted, abort_code, msg_instr, msg_time, mem_limit = nil, nil, m_instr, m_time, m_limit
  output = {}
  m_randomseed(0)
  local env = new_env(extra)
  setupvalue(chunk, 1, env)
  step, last, running = 1, clock(), true
  sethook(hook, "", 1)
  local res = t_pack(pcall(function(...) chunk(); return body(env, ...) end, ...))
  sethook()
  running = false
  setupvalue(chunk, 1, nil)
  if aborted then return false, abort_code, aborted end
  if not res[1] then
    local e = err_text(res[2])
    if e == "not enough memory" then return false, "POLICY_MEMORY_LIMIT", e end
    return false, "POLICY_ERROR", e
  end
  return t_unpack(res, 1, res.n)
end

-- Python callbacks run "paused": their Lua work is not the policy's instructions. A
-- `free` callback (converting the snapshot, memoised per cycle, so bounded by its size)
-- does not count against the time budget either; any other call costs 100 instructions
-- and its time.
local function callback(pyfn, free)
  return function(...)
    paused = true
    local t0 = clock()
    local ok, v, e = pcall(pyfn, ...)
    paused = false
    if free then deadline = deadline + (clock() - t0) else charge(100) end
    check()
    if not ok then error("internal error in the snapshot view", 2) end
    if e ~= nil then error(e, 2) end
    return v
  end
end

return {
  compile = compile, run = run, callback = callback, proxy = proxy, array = array,
  map = map, map_set = map_set, map_rekey = map_rekey, record_maker = record_maker,
  unwrap = unwrap, output = function() return output end, unpack = t_unpack, pcall = pcall,
  unhook = sethook,   -- a C function: called from Python it runs no Lua instruction
  raw = {type = type, next = next, ipairs = ipairs, pairs = pairs, rawget = rawget,
         rawlen = rawlen, math_type = m_type, error = error, tostring = tostring,
         s_format = s_format},
}
"""

# Names removed from the runtime's own globals once the prelude holds what it needs.
_DROPPED = ("io", "os", "require", "package", "debug", "load", "loadstring", "dofile",
            "loadfile", "collectgarbage", "coroutine", "python", "rawset", "rawget", "warn",
            "module", "setfenv", "getfenv", "newproxy", "gcinfo")


def _deny_get(obj, name):
    raise AttributeError("Python objects are not accessible from a policy")


def _deny_set(obj, name, value):
    raise AttributeError("Python objects are not accessible from a policy")


class Sandbox:
    """One Lua 5.4 runtime with the prelude loaded and the globals stripped."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.lua = lua54.LuaRuntime(max_memory=1 << 40, register_eval=False,
                                    register_builtins=False, unpack_returned_tuples=True,
                                    attribute_handlers=(_deny_get, _deny_set))
        self.lua.set_max_memory(0)
        prelude = self.lua.compile(_PRELUDE, "=sandbox", "t")
        self.api = prelude(time.perf_counter, HOOK_EVERY, MAX_MATCH_STEPS, MAX_ELEMENTS,
                           MAX_SORT, MAX_OUTPUT_LINES)
        g = self.lua.globals()
        for name in _DROPPED:
            g[name] = None
        self._run, self._unhook = self.api.run, self.api.unhook
        self._deadline = 0.0
        self._msg_instr = (f"instruction limit exceeded ({limits.instruction_limit:,} Lua "
                           "instructions)")
        self._msg_time = f"time budget exceeded ({limits.time_budget_s * 1000:g} ms)"

    def compile(self, source: str):
        """The policy's main chunk (text only), or SandboxFailure(POLICY_SYNTAX)."""
        if len(source.encode()) > MAX_SOURCE_BYTES:
            raise SandboxFailure(SYNTAX, f"source is larger than {MAX_SOURCE_BYTES} bytes")
        if "\0" in source:
            raise SandboxFailure(SYNTAX, "source contains a NUL byte")
        got = self.api.compile(source)
        if isinstance(got, tuple):  # nil, message
            line, text = _split_location(str(got[1]))
            raise SandboxFailure(SYNTAX, text, line)
        return got

    def run(self, chunk, extra, body, *args):
        """Run `body(env, *args)` after the chunk, under the limits; returns body's
        results as a tuple or raises SandboxFailure."""
        lim = self.limits
        lua = self.lua
        lua.set_max_memory(lua.get_memory_used() + lim.memory_limit_bytes)
        self._deadline = time.perf_counter() + lim.time_budget_s
        try:
            res = self._run(chunk, extra, lim.instruction_limit // HOOK_EVERY, self._deadline,
                            self._msg_instr, self._msg_time, lim.memory_limit_bytes, body, *args)
        except lua54.LuaMemoryError:
            res = (False, MEMORY_LIMIT, "not enough memory")
        except UnicodeDecodeError:
            res = (False, INVALID, "a string the policy returned is not valid UTF-8")
        finally:
            self._unhook()  # whatever happened, no hook outlives the call
            lua.set_max_memory(0)
        if not isinstance(res, tuple):
            res = (res,)
        if res and res[0] is False and len(res) == 3 and isinstance(res[1], str):
            _, code, msg = res
            line, text = _split_location(msg)
            if code != ERROR:
                line, text = 0, msg
            self.collect()
            raise SandboxFailure(code, text, line)
        return res[1:]

    def unbudgeted(self):
        """A context in which Python-side conversion allocates outside the policy's
        memory budget (the limit is raised by what it allocates)."""
        return _Unbudgeted(self.lua)

    def output(self) -> list[str]:
        return list(self.api.output().values())

    def memory_used(self) -> int:
        return self.lua.get_memory_used()

    def collect(self) -> None:
        """A full garbage collection (after failures, so garbage does not accumulate)."""
        self.lua.gccollect()


class _Unbudgeted:
    __slots__ = ("lua", "limit", "used")

    def __init__(self, lua) -> None:
        self.lua = lua

    def __enter__(self) -> None:
        self.limit = self.lua.get_max_memory()
        self.used = self.lua.get_memory_used()
        self.lua.set_max_memory(0)

    def __exit__(self, *exc) -> None:
        if self.limit:
            grown = max(0, self.lua.get_memory_used() - self.used)
            self.lua.set_max_memory(self.limit + grown)


def _split_location(msg: str) -> tuple[int, str]:
    """"policy:12: boom" -> (12, "boom"); other messages -> (0, msg)."""
    if msg.startswith("policy:"):
        head, _, rest = msg[len("policy:"):].partition(":")
        if head.isdigit():
            return int(head), rest.strip()
    return 0, msg


__all__ = ["Sandbox", "SandboxFailure", "Limits", "HOOK_EVERY", "MAX_MATCH_STEPS",
           "INSTRUCTION_LIMIT", "TIME_BUDGET", "MEMORY_LIMIT", "ERROR", "SYNTAX"]
