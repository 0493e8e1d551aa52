"""The sandbox a Lua policy runs in: what it cannot reach, and that every way of
overrunning a budget is contained within it, falls back to the built-in and says why.

Each escape runs through decide_with_fallback, as the loop would: the built-in's
decisions come back with a problem, within the time budget plus a margin for a loaded
machine (the budget is checked at most every 250 VM instructions and around every callback)."""

import gc
import time
import tracemalloc
from pathlib import Path

import pytest

from orchestrator import scheduler
from orchestrator.lua_policy import LuaPolicy, PolicyError, decide_with_fallback
from orchestrator.lua_sandbox import MAX_MATCH_STEPS, Limits, Sandbox
from orchestrator.snapshot import DeviceView, JobView, PoolView, Snapshot, WorkerView
from orchestrator.types import Priority, WorkerPhase

GB = 1 << 30
BUDGET_S = 0.2
SLACK_S = 1.5  # a shared 2-core machine: scheduling noise, not the policy
SNAP = Snapshot.of([JobView("j1", "file:/m1", Priority.INTERACTIVE, 1, GB)],
                   [WorkerView("w1", "p1", "file:/m1", WorkerPhase.READY, ("g0",), 0.0, GB)],
                   [PoolView("p1", True, (DeviceView("g0", 8 * GB, 6 * GB),))])
MARKER = Path("/tmp/llama-orch-lua-escape-marker")


def contained(body: str, codes: set[str], *, top: str = "", **limits) -> str:
    """Run `function decide(snapshot) BODY end`; assert it fell back to the built-in with
    one of `codes`, within the budget; return the problem's message."""
    limits.setdefault("time_budget_s", BUDGET_S)
    policy = LuaPolicy(f"{top}\nfunction decide(snapshot)\n{body}\nend", **limits)
    t0 = time.perf_counter()
    decisions, problem = decide_with_fallback(policy, SNAP)
    elapsed = time.perf_counter() - t0
    assert problem is not None, "the policy was not stopped"
    assert problem.code in codes, problem
    assert decisions == scheduler.decide(SNAP)
    assert elapsed < limits["time_budget_s"] + SLACK_S, elapsed
    return problem.message


# ---- nothing outside the sandbox is reachable ----------------------------------------------------

ESCAPES = {
    "os.execute": f"os.execute('touch {MARKER}')",
    "io.open": f"io.open('{MARKER}', 'w')",
    "io.popen": f"io.popen('touch {MARKER}')",
    "require": "require('os')",
    "package.loadlib": "package.loadlib('libc.so.6', 'system')",
    "debug.getregistry": "debug.getregistry()",
    "debug.sethook off": "debug.sethook()",
    "load text": "load('return 1')()",
    "loadstring": "loadstring('return 1')()",
    "dofile": "dofile('/etc/passwd')",
    "loadfile": "loadfile('/etc/passwd')",
    "string.dump": "local f = string.dump(function() end)",
    "method dump": "local f = ('').dump(decide)",
    "string metatable": "local m = getmetatable('').__index.dump(decide)",
    "string metatable set": "getmetatable('').__index = {}",
    "_G.os": "_G.os.execute('id')",
    "_G.debug": "_G.debug.getinfo(1)",
    "_ENV.io": "_ENV.io.write('x')",
    "_ENV swap": "local _ENV = {print = print}; os.exit(1)",
    "rawget": "rawget(_G, 'os')",
    "rawset": "rawset(snapshot.workers, 'x', 1)",
    "collectgarbage": "collectgarbage('stop')",
    "coroutine": "coroutine.wrap(function() while true do end end)()",
    "python": "python.eval('1')",
    "python builtins": "python.builtins.open('/etc/passwd')",
    "snapshot metatable": "getmetatable(snapshot).__index('x')",
    "view metatable": "local mt = getmetatable(snapshot.workers); mt.__newindex = nil",
    "lib table": "string.format = nil",
    "setmetatable view": "setmetatable(snapshot.workers, {})",
    "__gc finalizer": "setmetatable({}, {__gc = function() while true do end end})",
    "binary chunk via string": "local s = '\\27Lua'; load(s)()",
}


@pytest.mark.parametrize("stmt", ESCAPES.values(), ids=ESCAPES.keys())
def test_nothing_outside_the_sandbox_is_reachable(stmt):
    MARKER.unlink(missing_ok=True)
    contained(stmt + "\nreturn {}", {"POLICY_ERROR"})
    assert not MARKER.exists()


def test_the_sandbox_s_globals_are_exactly_these():
    policy = LuaPolicy("""function decide(s)
        local names = {}
        for k in pairs(_G) do names[#names + 1] = k end
        table.sort(names)
        print(table.concat(names, " "))
        local lib = {}
        for k in pairs(string) do lib[#lib + 1] = k end
        table.sort(lib)
        print(table.concat(lib, " "))
        return {} end""", time_budget_s=10.0)
    policy.decide(SNAP)
    assert policy.output[0].split() == sorted(
        "PRIORITY _G _VERSION assert builtin_decide decide error getmetatable ipairs math "
        "next pairs pcall print rawequal rawlen select setmetatable string table tonumber "
        "tostring type utf8 xpcall".split())
    assert "dump" not in policy.output[1] and "pack" not in policy.output[1].split()


def test_a_python_object_gives_nothing_away():
    """Were a Python object ever to reach Lua, attribute access on it raises."""
    sb = Sandbox(Limits())
    probe = sb.lua.eval("function(o) return pcall(function() return o.__class__ end) end")
    ok, _ = probe(len)
    assert ok is False


# ---- budgets: instructions, time, memory ---------------------------------------------------------

LOOPS = {
    "while true": "while true do end",
    "repeat": "repeat until false",
    "goto": "::top:: goto top",
    "recursion in tail calls": "local function f() return f() end return f()",
    "pcall swallowing": "while true do pcall(function() while true do end end) end",
    "xpcall handler loops": "while true do xpcall(function() while true do end end, "
                            "function() while true do end end) end",
    "error in __close": "while true do local x <close> = setmetatable({}, {__close = "
                        "function() while true do end end}) error('x') end",
    "gsub callback": "string.gsub(string.rep('a', 1000), 'a', function() while true do end end)",
    "sort comparator": "local t = {3, 2, 1} table.sort(t, function() while true do end end)",
    "metamethod": "local t = setmetatable({}, {__index = function() while true do end end}) "
                  "return t[1]",
    "callbacks in a loop": "while true do snapshot.rooms(7) end",
    "builtin_decide in a loop": "while true do builtin_decide(snapshot) end",
    "tostring metamethod": "tostring(setmetatable({}, {__tostring = "
                           "function() while true do end end}))",
}


@pytest.mark.parametrize("body", LOOPS.values(), ids=LOOPS.keys())
def test_endless_loops_hit_the_instruction_limit(body):
    msg = contained(body, {"POLICY_INSTRUCTION_LIMIT"}, instruction_limit=2_000_000,
                    time_budget_s=20.0)
    assert "instruction limit exceeded (2,000,000" in msg


@pytest.mark.parametrize("body", LOOPS.values(), ids=LOOPS.keys())
def test_endless_loops_hit_the_time_budget(body):
    msg = contained(body, {"POLICY_TIME_BUDGET"}, instruction_limit=10**12)
    assert "time budget exceeded (200 ms)" in msg


def test_the_top_level_is_budgeted_too():
    with pytest.raises(PolicyError) as e:
        LuaPolicy("while true do end\nfunction decide(s) return {} end", time_budget_s=BUDGET_S)
    assert e.value.problem.code in {"POLICY_INSTRUCTION_LIMIT", "POLICY_TIME_BUDGET"}


BOMBS = {
    "string.rep huge": "local s = string.rep('x', 2^40)",
    "string.rep empty many": "local s = string.rep('', 2^50)",
    "string.rep separator": "local s = string.rep('x', 2^24, string.rep('y', 1000))",
    "doubling concat": "local s = 'x' while true do s = s .. s end",
    "table growth": "local t = {} local i = 0 while true do i = i + 1 t[i] = {i, i, i} end",
    "string table": "local t = {} for i = 1, 1e9 do t[i] = tostring(i) .. string.rep('z', 100) end",
    "deep recursion": "local function f(n) return 1 + f(n + 1) end return f(1)",
    "table.concat": "local t = {} for i = 1, 2^22 do t[i] = 'abcdefgh' end "
                    "local s = table.concat(t) .. table.concat(t)",
    "huge unpack": "return {table.unpack({}, 1, 2^40)}",
    "table.move range": "table.move({}, 1, 2^50, 1, {})",
    "table.sort big": "local t = {} for i = 1, 2^21 do t[i] = -i end table.sort(t)",
    "pattern backtracking": "local s = string.rep('a', 3000) return {s:find('a*a*a*a*a*b')}",
    "gmatch backtracking": "for x in string.rep('a', 10000):gmatch('.-.-.-b') do end",
    "gsub backtracking": "string.gsub(string.rep('a', 30000), '(.-)%1b', '')",
    "plain find quadratic": "local s = string.rep('a', 2^24) "
                            "return {s:find(string.rep('a', 4000) .. 'b', 1, true)}",
}
BOMB_CODES = {"POLICY_MEMORY_LIMIT", "POLICY_ERROR", "POLICY_TIME_BUDGET",
              "POLICY_INSTRUCTION_LIMIT"}


@pytest.mark.parametrize("body", BOMBS.values(), ids=BOMBS.keys())
def test_memory_and_c_level_bombs_are_contained(body):
    contained(body, BOMB_CODES, memory_limit_bytes=16 << 20)


BIG = "local s = string.rep('xxxxxxxx', 3 * 2^20) "  # 24 MiB


@pytest.mark.parametrize("body", [
    BIG + "while true do local t = s .. s end",
    BIG + "for i = 1, 1e5 do local x = 1 + i end while true do local t = s .. s end",
    BIG + "while true do local t = s:upper() end",
], ids=["concat", "cheap-then-concat", "upper"])
def test_instructions_that_copy_big_strings_are_timed_one_by_one(body):
    """One `..` of 24 MiB strings costs about 10 ms: were the clock read only every
    HOOK_EVERY instructions, these loops would overrun the budget by seconds (measured:
    1.4 to 4 s with a fixed interval, 0.02 s over with the adaptive one)."""
    policy = LuaPolicy(f"function decide(snapshot) {body} end", time_budget_s=BUDGET_S,
                       instruction_limit=10**12, memory_limit_bytes=128 << 20)
    t0 = time.perf_counter()
    with pytest.raises(PolicyError) as e:
        policy.decide(SNAP)
    assert e.value.problem.code in {"POLICY_TIME_BUDGET", "POLICY_MEMORY_LIMIT"}
    assert time.perf_counter() - t0 < BUDGET_S + 0.6


def test_the_memory_limit_is_what_the_policy_allocates():
    """16 MiB: a 4 MiB string is fine, a 32 MiB one is not, and the view's own tables
    (converted during the call) are not charged to the policy."""
    ok = LuaPolicy("function decide(s) local x = string.rep('x', 4 * 2^20) "
                   "local w = s.workers return {} end", memory_limit_bytes=16 << 20,
                   time_budget_s=10.0)
    assert ok.decide(SNAP) == []
    msg = contained("local x = string.rep('x', 32 * 2^20) return {}",
                    {"POLICY_MEMORY_LIMIT", "POLICY_ERROR"}, memory_limit_bytes=16 << 20)
    assert "not enough memory" in msg or "too large" in msg


def test_pattern_functions_keep_to_cheap_patterns():
    policy = LuaPolicy("""function decide(s)
        print(("hf:org/llama-3-8b@main::file=q4.gguf"):match("hf:([^/]+)/([%w%-]+)"))
        print(string.find("pool-017", "%d+$"), string.gsub("a-b-c", "-", "+"))
        for w in ("a b c"):gmatch("%a") do print(w) end
        return {} end""", time_budget_s=10.0)
    policy.decide(SNAP)
    assert policy.output == ["org\tllama-3-8b", "6\ta+b+c\t2", "a", "b", "c"]
    msg = contained("return {string.rep('a', 200):match('(a*)(a*)(a*)(a*)$')}", {"POLICY_ERROR"})
    assert "pattern too costly" in msg and str(MAX_MATCH_STEPS) in msg


def test_the_budget_holds_for_every_call_not_only_the_first():
    policy = LuaPolicy("""function decide(s)
        if s.now > 5 then while true do end end
        return {} end""", time_budget_s=BUDGET_S)
    snap = Snapshot.of(now=10.0)
    for _ in range(3):
        t0 = time.perf_counter()
        decisions, problem = decide_with_fallback(policy, snap)
        assert problem.code in {"POLICY_INSTRUCTION_LIMIT", "POLICY_TIME_BUDGET"}
        assert time.perf_counter() - t0 < BUDGET_S + SLACK_S
    assert policy.decide(Snapshot.of(now=1.0)) == []  # and it still works afterwards


# ---- repeated failures -------------------------------------------------------------------

FAILING = {
    "raises": ("error('boom')", {"POLICY_ERROR"}),
    "memory": ("local t = {} while true do t[#t + 1] = string.rep('x', 4096) .. #t end",
               {"POLICY_MEMORY_LIMIT"}),
    "instructions": ("while true do end", {"POLICY_INSTRUCTION_LIMIT"}),
    "malformed": ("return {{action = 'dispatch'}}", {"POLICY_INVALID"}),
}


@pytest.mark.parametrize("body,codes", FAILING.values(), ids=FAILING.keys())
def test_repeated_failures_do_not_leak(body, codes):
    """A policy that fails every cycle is contained every time, and neither the Lua
    runtime nor the Python heap grows with the failures."""
    policy = LuaPolicy(f"function decide(snapshot)\n  local w = snapshot.workers\n  {body}\nend",
                       memory_limit_bytes=4 << 20, instruction_limit=1_000_000, time_budget_s=5.0)

    def cycles(n):
        for _ in range(n):
            _, problem = decide_with_fallback(policy, SNAP)
            assert problem is not None and problem.code in codes

    cycles(20)
    gc.collect()
    policy._sb.collect()
    lua_before = policy.memory_used()
    tracemalloc.start()
    try:
        cycles(150)
        gc.collect()
        policy._sb.collect()
        py_growth = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert policy.memory_used() - lua_before < 64 * 1024, (lua_before, policy.memory_used())
    assert py_growth < 256 * 1024, py_growth
