"""Lua policies: the snapshot view, decision tables, fallback, the editor's validate and
dry run, and the three example policies as table tests (built with Snapshot.of, like
test_scheduler.py). The sandbox's limits and escapes are in test_lua_sandbox.py."""

import dataclasses
import enum
import importlib
import random
from collections.abc import Mapping
from pathlib import Path

import pytest

from orchestrator import scheduler
from orchestrator.estimates import ModelEstimate
from orchestrator.lua_policy import (ACTIONS, DEFAULT_REASON, DryRun, LuaPolicy, PolicyError,
                                     PolicyProblem, decide_with_fallback, decision_fields,
                                     dry_run, lua_type, record_fields, snapshot_fields,
                                     validate_source)
from orchestrator.scheduler import Reason
from orchestrator.snapshot import (DeviceView, Dispatch, EvictModel, JobView, PoolView,
                                   Preload, PreloadAdvice, Snapshot, StartAdvice, StartWorker,
                                   StopWorker, UnservableAdvice, Wait, WorkerView)
from orchestrator.types import Priority, WorkerPhase
from orchestrator.validator import validate

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "policies"
GB = 1 << 30
M1, M2, M3 = "file:/m1", "file:/m2", "file:/m3"
X = "hf:org/model-x@main::file=model-x.gguf"  # pin_gpu0.lua's MODEL
READY, BUSY, STARTING, STOPPING = (WorkerPhase.READY, WorkerPhase.BUSY, WorkerPhase.STARTING,
                                   WorkerPhase.STOPPING)
BATCH, INTERACTIVE = Priority.BATCH, Priority.INTERACTIVE
S = Snapshot.of
PASS = "function decide(snapshot) return builtin_decide(snapshot) end"


def job(i, model=M1, prio=INTERACTIVE, mem=GB, devices=1, not_before=0.0, attempts=0):
    return JobView(f"j{i}", model, prio, i, mem, devices, "hf", not_before, attempts)


def worker(i, model=M1, phase=READY, last_used=0.0, pool="p1", devs=("gpu0",), mem=GB, slots=1,
           active=0):
    return WorkerView(f"w{i}", pool, model, phase, devs, last_used, mem, slots, active)


def pool(pid="p1", free=(8 * GB,), available=True, engines=("hf",)):
    return PoolView(pid, available, tuple(DeviceView(f"gpu{i}", 8 * GB, f)
                                          for i, f in enumerate(free)), engines)


def lua(source: str, **limits) -> LuaPolicy:
    """A policy with a time budget no loaded CI machine overruns by accident (the budgets
    themselves are test_lua_sandbox.py's)."""
    limits.setdefault("time_budget_s", 10.0)
    return LuaPolicy(source, **limits)


def example(name: str) -> LuaPolicy:
    return lua((EXAMPLES / f"{name}.lua").read_text())


def printed(source: str, snap: Snapshot) -> list[str]:
    policy = lua(source)
    policy.decide(snap)
    return policy.output


# ---- the view ----------------------------------------------------------------------------

DUMP = """
local function dump(v)
  local t = type(v)
  if t == "string" then return string.format("%q", v) end
  if t == "number" then
    if math.type(v) == "integer" then return tostring(v) end
    return string.format("%.17g", v)
  end
  if t ~= "table" then return tostring(v) end
  local parts = {}
  for k, x in pairs(v) do parts[#parts + 1] = dump(k) .. "=" .. dump(x) end
  return "{" .. table.concat(parts, ",") .. "}"
end
function decide(snapshot)
  for name, value in pairs(snapshot) do
    if type(value) ~= "function" then
      local text = dump(value)   -- print() keeps 500 characters a line
      for i = 1, #text, 400 do print(name .. ":" .. text:sub(i, i + 399)) end
    end
  end
  return {}
end
"""


def _num(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return f"{v:.17g}"


def _s(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def expected(v, field: str = "") -> str:
    """What DUMP prints for a snapshot value, computed in Python alone: the view's
    documented shape (records in field order with properties and `kind`, arrays, maps in
    the snapshot's order, device keys nested by pool, sets sorted)."""
    if isinstance(v, enum.IntEnum):
        return str(int(v))
    if isinstance(v, enum.Enum):
        return _s(v.value)
    if isinstance(v, str):
        return _s(v)
    if isinstance(v, (bool, int, float)):
        return _num(v)
    if dataclasses.is_dataclass(v):
        parts = [f"{_s(n)}={expected(getattr(v, n))}" for n, _, _ in record_fields(type(v))]
        if type(v) in (PreloadAdvice, StartAdvice, UnservableAdvice):
            parts.append(f'"kind"={_s(type(v).__name__.removesuffix("Advice").lower())}')
        return "{" + ",".join(parts) + "}"
    if isinstance(v, frozenset):
        return expected({k: True for k in sorted(v)})
    if isinstance(v, Mapping):
        if v and all(isinstance(k, tuple) for k in v):
            nested: dict = {}
            for (pid, dev), x in v.items():
                nested.setdefault(pid, {})[dev] = x
            v = nested
        return "{" + ",".join(f"{expected(k)}={expected(x, field)}" for k, x in v.items()) + "}"
    if isinstance(v, tuple):
        if field in ("pools_by_room", "pools_by_evictable_room") and len(v) == 2 \
                and isinstance(v[0], int) and isinstance(v[1], str):
            return f'{{"room"={expected(v[0])},"pool_id"={expected(v[1])}}}'
        return "{" + ",".join(f"{i}={expected(x, field)}" for i, x in enumerate(v, 1)) + "}"
    raise TypeError(type(v))


def rich_snapshot(now=1000.0) -> Snapshot:
    jobs = [job(1), job(2, prio=BATCH), job(3, M2, attempts=2), job(4, M2, not_before=now + 30),
            job(5, M3, mem=3 * GB, devices=2)]
    workers = [worker(1, last_used=5.0), worker(2, phase=BUSY, devs=("gpu1",)),
               worker(3, M2, phase=STARTING, pool="p2", devs=("gpu0",)),
               worker(4, M3, phase=STOPPING, pool="p2", devs=("gpu1",), mem=2 * GB),
               worker(5, M2, slots=4, active=2, pool="p2", devs=("gpu2",), last_used=7.5)]
    pools = [pool("p1", (6 * GB, 7 * GB)), pool("p2", (1 * GB, 2 * GB, 5 * GB)),
             pool("p3", (8 * GB,), available=False, engines=("hf", "trtllm"))]
    return S(jobs, workers, pools, now=now, start_backoff_until={M3: now + 5},
             estimates={M1: ModelEstimate(30.0, 10.0, 42.5)},
             advice=[PreloadAdvice("p1", M2), StartAdvice(M1, "p1", ("gpu1",)),
                     UnservableAdvice(M3, "too big")],
             pins={M1: {("p1", "gpu0")}})


def dump_of(snap: Snapshot, policy: LuaPolicy | None = None) -> dict[str, str]:
    policy = policy or lua(DUMP)
    policy.decide(snap)
    out: dict[str, str] = {}
    for line in policy.output:
        name, text = line.split(":", 1)
        out[name] = out.get(name, "") + text
    return out


def test_the_view_holds_every_snapshot_field_as_the_snapshot_has_it():
    snap = rich_snapshot()
    got = dump_of(snap)
    assert list(got) == [name for name, _ in snapshot_fields()]
    for name, _ in snapshot_fields():
        assert got[name] == expected(getattr(snap, name), name), name


def test_every_snapshot_field_has_a_lua_shape():
    for name, hint in snapshot_fields():
        assert lua_type(hint, name)  # raises for a type the view cannot convert


def test_the_view_follows_the_snapshot_from_cycle_to_cycle():
    """Records, containers and the top-level maps updated in place are all reused from
    one cycle to the next; whatever changed must show, whatever went must be gone."""
    rng = random.Random(7)
    policy = lua(DUMP)
    workers = {f"w{i}": worker(i, model=rng.choice([M1, M2]), devs=(f"gpu{i % 3}",))
               for i in range(12)}
    jobs = [job(i, model=rng.choice([M1, M2])) for i in range(8)]
    pools = [pool("p1", (8 * GB, 8 * GB, 8 * GB))]
    for cycle in range(40):
        for wid in rng.sample(sorted(workers), 3):
            w = workers[wid]
            if rng.random() < 0.2:
                del workers[wid]
            else:
                workers[wid] = dataclasses.replace(
                    w, phase=rng.choice([READY, BUSY, STARTING, STOPPING]), last_used=cycle)
        if rng.random() < 0.5:
            n = 100 + cycle
            workers[f"w{n}"] = worker(n, devs=("gpu1",))
        if rng.random() < 0.5 and jobs:
            jobs.pop(rng.randrange(len(jobs)))
        jobs.append(job(50 + cycle, model=rng.choice([M1, M2, M3]),
                        prio=rng.choice([INTERACTIVE, BATCH])))
        snap = S(jobs, workers.values(), pools, now=float(cycle))
        got = dump_of(snap, policy)
        for name in ("workers", "queued", "open_workers", "idle", "idle_lru", "queued_total",
                     "serving_by_model", "devices_of_model"):
            assert got[name] == expected(getattr(snap, name), name), (cycle, name)


def test_the_view_cache_forgets_what_the_fleet_forgot():
    """Converted records and containers are kept while used, not for ever, even when two
    policies convert the same snapshots (neither's cache keeps the other's alive)."""
    policies = [lua(DUMP), lua(DUMP)]
    sizes, memory = [], []
    for cycle in range(60):
        jobs = [job(1000 * cycle + i, model=(M1, M2)[i % 2]) for i in range(6)]
        workers = [worker(100 * cycle + i, devs=(f"gpu{i}",)) for i in range(4)]
        snap = S(jobs, workers, [pool("p1", (8 * GB,) * 4)], now=float(cycle))
        for policy in policies:
            policy.decide(snap)
        sizes.append(len(policies[0]._view.cache))
        memory.append(policies[0].memory_used())
    assert max(sizes[30:]) <= 2 * max(sizes[:20])
    assert max(memory[30:]) < 4 * max(memory[:20])


def test_the_view_is_read_only():
    snap = rich_snapshot()
    for stmt in ["snapshot.now = 1", "snapshot.workers.w1.phase = 'busy'",
                 "snapshot.workers.w9 = {}", "snapshot.queued[ 'file:/m1' ][1] = nil",
                 "table.insert(snapshot.idle_lru, 1)", "table.sort(snapshot.queued['file:/m1'],"
                 " function(a, b) return a.order > b.order end)",
                 "snapshot.devices.p1.gpu0.free_bytes = 0",
                 "snapshot.pins['file:/m1'].p1.gpu9 = true",
                 "setmetatable(snapshot.workers, nil)", "rawset(snapshot.workers, 'x', 1)",
                 "getmetatable(snapshot.workers).__index.w1 = nil",
                 "table.remove(snapshot.workers.w1.device_ids)"]:
        policy = lua(f"function decide(snapshot) {stmt} return {{}} end")
        with pytest.raises(PolicyError) as e:
            policy.decide(snap)
        assert e.value.problem.code == "POLICY_ERROR", stmt
    # and nothing changed for the next policy
    assert dump_of(snap) == dump_of(rich_snapshot())


def test_maps_iterate_in_the_snapshot_order_and_count_their_keys():
    snap = S([job(1, M3), job(2, M1, prio=BATCH), job(3, M2)], [], [pool()])
    out = printed("""function decide(s)
        local models = {}
        for m in pairs(s.queued) do models[#models + 1] = m end
        print(table.concat(models, " "), #s.queued, #s.workers, #s.queued[models[1]])
        return {} end""", snap)
    assert out == [f"{M3} {M2} {M1}\t3\t0\t1"]  # head-job order, as the built-in serves them


def test_snapshot_functions_agree_with_the_snapshot_methods():
    snap = rich_snapshot()
    out = printed("""function decide(s)
        print(s.eligible("file:/m2"), s:eligible("file:/m1"), s.eligible("none"))
        print(s.is_pinned(s.workers.w1), s:is_pinned(s.workers.w2))
        for _, k in ipairs({1, 2, 3}) do
          local r = s.rooms(k)
          print(k, #r, r[1] and r[1].pool_id, r[1] and r[1].room)
          local e = s:evictable_rooms(k)
          print(k, #e, e[1] and e[1].pool_id, e[1] and e[1].room)
        end
        print(s.job("j3").attempts, s.job("j4").not_before, s.job("nope"))
        return {} end""", snap)
    lines = [f"{snap.eligible(M2)}\t{snap.eligible(M1)}\t0",
             f"{str(snap.is_pinned(snap.workers['w1'])).lower()}\t"
             f"{str(snap.is_pinned(snap.workers['w2'])).lower()}"]
    for k in (1, 2, 3):
        for r in (snap.rooms(k), snap.evictable_rooms(k)):
            first = (r[0][1], str(r[0][0])) if r else ("nil", "nil")
            lines.append(f"{k}\t{len(r)}\t{first[0]}\t{first[1]}")
    lines.append("2\t1030.0\tnil")
    assert out == lines


def test_unknown_snapshot_fields_are_errors_not_nil():
    with pytest.raises(PolicyError, match="the snapshot has no field 'wokers'"):
        lua("function decide(s) return s.wokers end").decide(rich_snapshot())


def test_nothing_survives_from_one_cycle_to_the_next():
    policy = lua("""
        calls = (calls or 0) + 1
        local seen = 0
        function decide(s) seen = seen + 1; print(calls, seen, math.random(1000)); return {} end""")
    outs = []
    for _ in range(3):
        policy.decide(rich_snapshot())
        outs.append(policy.output)
    assert outs[0] == outs[1] == outs[2]
    assert outs[0][0].startswith("1\t1\t")  # math.random is seeded the same every call


# ---- decisions -------------------------------------------------------------------------------

def scheduler_table() -> list:
    """The built-in's table tests (test_scheduler.py); should that module not import,
    its own run says why, and these are skipped rather than the whole file lost."""
    try:
        mod = importlib.import_module("tests.orchestrator.test_scheduler")
        return mod.CASES + mod.SLOT_CASES
    except Exception as exc:  # noqa: BLE001
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=repr(exc)))]


@pytest.mark.parametrize("snap,expected_decisions", scheduler_table())
def test_builtin_decide_round_trips_through_lua(snap, expected_decisions):
    """A policy returning builtin_decide(snapshot) decides exactly what the built-in does,
    over the built-in's own table tests: encoding, Lua tables and decoding lose nothing."""
    assert lua(PASS).decide(snap) == scheduler.decide(snap) == expected_decisions


def test_every_action_maps_to_its_dataclass_with_defaults():
    snap = S([job(1, mem=3 * GB)], [worker(1)], [pool(free=(8 * GB, 8 * GB))])
    got = lua("""function decide(s) return {
        {action = "dispatch", job_id = "j1", worker_id = "w1"},
        {action = "start_worker", model_ref = "file:/m1", pool_id = "p1", device_ids = {"gpu1"}},
        {action = "start_worker", model_ref = "file:/m9", pool_id = "p1", device_ids = {"gpu0"},
         memory_estimate = 5.0 * 2^30, reason = "r"},
        {action = "stop_worker", worker_id = "w1"},
        {action = "wait", job_id = "j1"},
        {action = "wait", job_id = "j1", reason = "later", model_ref = "file:/m2", jobs = 4,
         wake_at = 1234.5},
        {action = "preload", pool_id = "p1", model_ref = "file:/m2"},
        {action = "evict_model", pool_id = "p1", model_ref = "file:/m3", reason = "cold"},
        {action = "start_worker", model_ref = "file:/m1", pool_id = "p1",
         device_ids = s.workers.w1.device_ids},
      } end""").decide(snap)
    assert got == [
        Dispatch("j1", "w1", DEFAULT_REASON),
        StartWorker(M1, "p1", ("gpu1",), 3 * GB, DEFAULT_REASON),
        StartWorker("file:/m9", "p1", ("gpu0",), 5 * GB, "r"),
        StopWorker("w1", DEFAULT_REASON),
        Wait("j1", DEFAULT_REASON, M1, 1, 0.0),
        Wait("j1", "later", M2, 4, 1234.5),
        Preload("p1", M2, DEFAULT_REASON),
        EvictModel("p1", M3, "cold"),
        StartWorker(M1, "p1", ("gpu0",), 3 * GB, DEFAULT_REASON),  # a view array as a mask
    ]
    assert set(ACTIONS) == {"dispatch", "start_worker", "stop_worker", "wait", "preload",
                            "evict_model"}


MALFORMED = [
    ("return 42", "got number"),
    ("return nil", "got nil"),
    ("return 'dispatch'", "got string"),
    ("return {1, 2}", "decision 1: a decision must be a table, got number"),
    ("return {{action = 'dispatch', job_id = 'j1'}}", "missing field 'worker_id'"),
    ("return {{action = 'launch'}}", 'unknown action "launch"'),
    ("return {{job_id = 'j1'}}", "unknown action nil"),
    ("return {{action = 'dispatch', job_id = 'j1', worker = 'w1'}}", 'unknown field "worker"'),
    ("return {{action = 'wait', job_id = 'j1', ['until'] = 3}}", "use wake_at"),
    ("return {{action = 'dispatch', job_id = 1, worker_id = 'w1'}}",
     "must be a string, got number"),
    ("return {{action = 'dispatch', job_id = '', worker_id = 'w1'}}", "non-empty string"),
    ("return {{action = 'wait', job_id = 'j1', jobs = -1}}", "integer >= 0"),
    ("return {{action = 'wait', job_id = 'j1', jobs = 1.5}}", "integer >= 0"),
    ("return {{action = 'wait', job_id = 'j1', wake_at = 0/0}}", "finite number"),
    ("return {{action = 'wait', job_id = 'j1', wake_at = math.huge}}", "finite number"),
    ("return {{action = 'start_worker', model_ref = 'file:/m1', pool_id = 'p1', device_ids = {}}}",
     "1 to 64 distinct"),
    ("return {{action = 'start_worker', model_ref = 'file:/m1', pool_id = 'p1', "
     "device_ids = {'a', 'a'}}}", "1 to 64 distinct"),
    ("return {{action = 'start_worker', model_ref = 'file:/m1', pool_id = 'p1', "
     "device_ids = 'g0'}}",
     "array of strings"),
    ("return {{action = 'start_worker', model_ref = 'file:/m7', pool_id = 'p1', "
     "device_ids = {'g0'}}}",
     "memory_estimate is required"),
    ("local t = {} t[1] = {action = 'wait', job_id = 'j1'} t[3] = t[1] return t", "keys 1..n"),
    ("return {x = 1}", "found key x"),
    ("return {{action = 'wait', job_id = '\\xff'}}", "not valid UTF-8"),
    ("local t = {} for i = 1, 20001 do t[i] = {action = 'wait', job_id = 'j1'} end return t",
     "too many decisions"),
]


@pytest.mark.parametrize("body,message", MALFORMED, ids=[m for _, m in MALFORMED])
def test_malformed_results_fall_back_to_the_builtin_with_a_problem(body, message):
    snap = S([job(1)], [worker(1)], [pool()])
    policy = lua(f"function decide(snapshot) {body} end")
    decisions, problem = decide_with_fallback(policy, snap)
    assert decisions == scheduler.decide(snap)
    assert problem.code == "POLICY_INVALID"
    assert message in problem.message


def test_metamethods_of_returned_tables_are_not_run():
    """The result is read raw: a __index on the policy's own table does not supply fields
    (and runs no code outside the budget)."""
    snap = S([job(1)], [worker(1)], [pool()])
    policy = lua("""function decide(s)
        local d = setmetatable({action = "dispatch"},
                               {__index = function() while true do end end})
        return {d} end""")
    _, problem = decide_with_fallback(policy, snap)
    assert problem.code == "POLICY_INVALID" and "missing field 'job_id'" in problem.message


def test_the_validator_refuses_wrong_decisions_and_the_rest_are_served():
    """Well-formed but wrong decisions are not a policy failure: the validator refuses
    each one, the others go ahead."""
    snap = S([job(1, mem=6 * GB), job(2, M2)], [worker(1, M2)], [pool(free=(7 * GB,))])
    policy = lua("""function decide(s) return {
        {action = "dispatch", job_id = "j2", worker_id = "w-gone"},
        {action = "dispatch", job_id = "j2", worker_id = "w1"},
        {action = "start_worker", model_ref = "file:/m1", pool_id = "p1", device_ids = {"gpu0"},
         memory_estimate = 6 * 2^30},
        {action = "start_worker", model_ref = "file:/m1", pool_id = "p1", device_ids = {"gpu0"},
         memory_estimate = 6 * 2^30},
        {action = "stop_worker", worker_id = "w1"},
        {action = "start_worker", model_ref = "file:/m1", pool_id = "p9", device_ids = {"gpu0"}},
      } end""")
    decisions, problem = decide_with_fallback(policy, snap)
    assert problem is None and len(decisions) == 6
    verdicts = [why for _, why in validate(snap, decisions)]
    assert verdicts[0] == "worker does not exist"
    assert verdicts[1] == ""
    assert verdicts[2] == ""
    assert verdicts[3] == "would overcommit device memory on gpu0"
    assert "not idle" in verdicts[4]
    assert verdicts[5] == "pool is missing or unavailable"


def test_decision_fields_match_the_admin_api_decision_message():
    assert decision_fields(StartWorker(M1, "p1", ("gpu0", "gpu1"), GB, "why"), "no room") == {
        "action": "start_worker", "model_ref": M1, "pool_id": "p1",
        "device_ids": ["gpu0", "gpu1"], "reason": "why", "rejected": "no room"}
    assert decision_fields(Wait("j1", "busy", M1, 3)) == {"action": "wait", "job_id": "j1",
                                                          "model_ref": M1, "reason": "busy"}


# ---- fallback, validate, dry run ---------------------------------------------------------------

def test_fallback_uses_the_builtin_and_says_why():
    snap = S([job(1)], [worker(1)], [pool()])
    policy = lua("function decide(s)\n  local x = nil\n  return x.y\nend")
    decisions, problem = decide_with_fallback(policy, snap)
    assert decisions == scheduler.decide(snap)
    assert problem == PolicyProblem("POLICY_ERROR", "attempt to index a nil value (local 'x')", 3)
    assert str(problem) == "POLICY_ERROR: attempt to index a nil value (local 'x') (line 3)"
    assert decide_with_fallback(None, snap) == (scheduler.decide(snap), None)


@pytest.mark.parametrize("source,code,line,message", [
    ("function decide(s)\n  return {\nend", "POLICY_SYNTAX", 3, "unexpected symbol near 'end'"),
    ("function decide(s) return {} end\nx = = 1", "POLICY_SYNTAX", 2, "unexpected symbol"),
    ("x = 1", "POLICY_NO_DECIDE", 0, "decide is nil"),
    ("decide = 5", "POLICY_NO_DECIDE", 0, "decide is number"),
    ("local function decide(s) return {} end", "POLICY_NO_DECIDE", 0, "global function"),
    ("local t = nil\nt.x = 1\nfunction decide(s) return {} end", "POLICY_ERROR", 2,
     "attempt to index a nil value"),
    ("while true do end", "POLICY_INSTRUCTION_LIMIT", 0, "instruction limit"),
    ("", "POLICY_NO_DECIDE", 0, "decide is nil"),
    ("\x1bLua", "POLICY_SYNTAX", 0, "binary chunk"),
])
def test_validate_source_reports_line_and_code(source, code, line, message):
    (problem,) = validate_source(source, time_budget_s=10.0)
    assert (problem.code, problem.line) == (code, line)
    assert message in problem.message


def test_validate_source_accepts_the_examples():
    for path in sorted(EXAMPLES.glob("*.lua")):
        assert validate_source(path.read_text()) == [], path.name


def test_dry_run_shows_both_sides_validated():
    snap = S([job(1), job(2)], [worker(1)], [pool(free=(6 * GB,))])
    result = dry_run("""function decide(s)
        print("jobs", s.eligible("file:/m1"))
        return {{action = "dispatch", job_id = "j2", worker_id = "w1"},
                {action = "dispatch", job_id = "j1", worker_id = "w1"}} end""", snap)
    policy, builtin, problems = result
    assert problems == []
    assert policy == [(Dispatch("j2", "w1", DEFAULT_REASON), ""),
                      (Dispatch("j1", "w1", DEFAULT_REASON),
                       "worker's 1 free slot(s) are already claimed this cycle (0 of 1 running)")]
    assert builtin == validate(snap, scheduler.decide(snap))
    assert result.output == ("jobs\t2",) and result.policy_ms > 0 and result.builtin_ms > 0


def test_dry_run_of_a_failing_policy_shows_the_problem_and_the_builtin():
    snap = S([job(1)], [worker(1)], [pool()])
    result = dry_run("function decide(s) error('nope') end", snap)
    assert isinstance(result, DryRun)
    assert result.policy == [] and result.builtin == validate(snap, scheduler.decide(snap))
    assert [p.code for p in result.problems] == ["POLICY_ERROR"]
    assert dry_run("function decide(", snap).problems[0].code == "POLICY_SYNTAX"


def test_a_bad_source_does_not_construct():
    with pytest.raises(PolicyError) as e:
        lua("function decide(s) return {} ")
    assert e.value.problem.code == "POLICY_SYNTAX"
    with pytest.raises(ValueError):
        lua(PASS, instruction_limit=10)


# ---- the examples (table tests) -----------------------------------------------------------------

def noon(day=19700) -> float:
    return day * 86400.0 + 12 * 3600


SEEDED_CASES = [
    pytest.param(S([job(1), job(2, attempts=1), job(3)], [worker(1)], [pool()]),
                 [Dispatch("j2", "w1", f"{Reason.DISPATCH}; seeded job first"),
                  Wait("j1", Reason.BUSY, M1, 2)], id="seeded-job-takes-the-free-slot"),
    pytest.param(S([job(1), job(2, attempts=1), job(3, attempts=3), job(4)], [worker(1), worker(2)],
                   [pool()]),
                 [Dispatch("j2", "w1", f"{Reason.DISPATCH}; seeded job first"),
                  Dispatch("j3", "w2", f"{Reason.DISPATCH}; seeded job first"),
                  Wait("j1", Reason.BUSY, M1, 2)], id="seeded-in-admission-order"),
    pytest.param(S([job(1), job(2, prio=BATCH, attempts=1)], [worker(1)], [pool()]),
                 [Dispatch("j1", "w1", Reason.DISPATCH), Wait("j2", Reason.BUSY, M1, 1)],
                 id="interactive-still-before-seeded-batch"),
    pytest.param(S([job(1), job(2, M2, attempts=1)], [worker(1), worker(2, M2, devs=("gpu1",))],
                   [pool(free=(8 * GB, 8 * GB))]),
                 [Dispatch("j1", "w1", Reason.DISPATCH),
                  Dispatch("j2", "w2", f"{Reason.DISPATCH}; seeded job first")],
                 id="each-model-its-own-workers"),
    pytest.param(S([job(1), job(2)], [worker(1)], [pool()]),
                 [Dispatch("j1", "w1", Reason.DISPATCH), Wait("j2", Reason.BUSY, M1, 1)],
                 id="no-seeded-jobs-is-the-builtin"),
    pytest.param(S([job(1), job(2, attempts=1)], [worker(1, phase=BUSY)], [pool()]),
                 [Wait("j2", Reason.BUSY, M1, 2)], id="first-waiting-job-is-the-seeded-one"),
]


@pytest.mark.parametrize("snap,expected_decisions", SEEDED_CASES)
def test_prefer_seeded(snap, expected_decisions):
    assert example("prefer_seeded").decide(snap) == expected_decisions


WINDOW = "batch jobs run between 22:00 and 06:00 (UTC+0)"
OPENS = noon() + 10 * 3600  # 22:00 the same day
HOURS_CASES = [
    pytest.param(S([job(1, prio=BATCH), job(2)], [worker(1), worker(2)], [pool()], now=noon()),
                 [Dispatch("j2", "w1", Reason.DISPATCH), Wait("j1", WINDOW, M1, 1, OPENS)],
                 id="noon-interactive-only"),
    pytest.param(S([job(1, prio=BATCH), job(2)], [worker(1), worker(2)], [pool()],
                   now=noon() + 11 * 3600),
                 [Dispatch("j2", "w1", Reason.DISPATCH), Dispatch("j1", "w2", Reason.DISPATCH)],
                 id="23h-batch-runs"),
    pytest.param(S([job(1, prio=BATCH)], [worker(1)], [pool()], now=noon() - 7 * 3600),
                 [Dispatch("j1", "w1", Reason.DISPATCH)], id="05h-still-inside"),
    pytest.param(S([job(1, prio=BATCH)], [worker(1)], [pool()], now=noon() - 6 * 3600),
                 [Wait("j1", WINDOW, M1, 1, OPENS)], id="06h-closed"),
    pytest.param(S([job(1, M2, prio=BATCH), job(2, M2, prio=BATCH)], [], [pool()], now=noon()),
                 [Wait("j1", WINDOW, M2, 2, OPENS)], id="no-start-for-batch-only-model"),
    pytest.param(S([job(1, M2, prio=BATCH, mem=6 * GB)], [worker(1, M3, mem=4 * GB)],
                   [pool(free=(4 * GB,))], now=noon()),
                 [Wait("j1", WINDOW, M2, 1, OPENS)], id="no-eviction-for-batch-only-model"),
    pytest.param(S([job(1, M2)], [], [pool()], now=noon()),
                 [StartWorker(M2, "p1", ("gpu0",), GB,
                              f"no worker for {M2}; most free memory on p1"),
                  Wait("j1", Reason.STARTING, M2, 1)], id="interactive-starts-as-usual"),
    pytest.param(S([job(1, prio=BATCH, not_before=noon() + 60)], [worker(1)], [pool()], now=noon()),
                 [Wait("j1", Reason.RETRY_BACKOFF, M1, 1, noon() + 60)],
                 id="retry-backoff-keeps-its-reason"),
]


@pytest.mark.parametrize("snap,expected_decisions", HOURS_CASES)
def test_batch_hours(snap, expected_decisions):
    assert example("batch_hours").decide(snap) == expected_decisions


def test_batch_hours_clock_is_the_snapshot_s():
    """Same snapshot, same decisions: the policy reads no clock of its own."""
    snap = S([job(1, prio=BATCH)], [worker(1)], [pool()], now=noon())
    policy = example("batch_hours")
    assert policy.decide(snap) == policy.decide(snap) == example("batch_hours").decide(snap)


KEPT = f"GPU 0 is kept for {X}"
PIN_CASES = [
    pytest.param(S([job(1, X)], [], [pool(free=(6 * GB, 8 * GB))]),
                 [StartWorker(X, "p1", ("gpu0",), GB, f"keeping {X} on GPU 0 of p1"),
                  Wait("j1", Reason.STARTING, X, 1)], id="model-starts-on-gpu0-not-most-free"),
    pytest.param(S([job(1, X)], [], [pool("p1", (1 * GB, 8 * GB)), pool("p2", (3 * GB, 8 * GB))]),
                 [StartWorker(X, "p2", ("gpu0",), GB, f"keeping {X} on GPU 0 of p2"),
                  Wait("j1", Reason.STARTING, X, 1)], id="model-to-the-roomiest-gpu0"),
    pytest.param(S([job(1, M2)], [], [pool(free=(8 * GB, 4 * GB))]),
                 [StartWorker(M2, "p1", ("gpu1",), GB,
                              f"no worker for {M2}; most free memory on p1; {KEPT}"),
                  Wait("j1", Reason.STARTING, M2, 1)], id="others-off-gpu0"),
    pytest.param(S([job(1, M2)], [], [pool("p1", (8 * GB,)), pool("p2", (2 * GB, 2 * GB))]),
                 [StartWorker(M2, "p2", ("gpu1",), GB,
                              f"no worker for {M2}; most free memory on p1; {KEPT}"),
                  Wait("j1", Reason.STARTING, M2, 1)], id="others-to-another-pool"),
    pytest.param(S([job(1, M2, mem=6 * GB)], [], [pool(free=(8 * GB, 4 * GB))]),
                 [Wait("j1", "no device has room outside GPU 0", M2, 1)],
                 id="others-wait-not-gpu0"),
    pytest.param(S([job(1, X, mem=6 * GB)], [worker(5, M3, mem=4 * GB, last_used=3.0)],
                   [pool(free=(4 * GB, 8 * GB))]),
                 [StopWorker("w5", f"making room for {X} on GPU 0 of p1"),
                  Wait("j1", Reason.EVICTING, X, 1)], id="evict-from-gpu0-for-the-model"),
    pytest.param(S([job(1, X, mem=6 * GB)], [worker(5, M3, mem=4 * GB)],
                   [pool(free=(4 * GB, 8 * GB))], pins={M3: {("p1", "gpu0")}}),
                 [Wait("j1", "GPU 0 has no room", X, 1)], id="pinned-not-evicted"),
    pytest.param(S([job(1, M2, mem=6 * GB)], [worker(5, X, mem=4 * GB)], [pool(free=(4 * GB,))]),
                 [Wait("j1", "no device has room outside GPU 0", M2, 1)],
                 id="model-never-evicted-from-gpu0"),
    pytest.param(S([job(1, X), job(2, M2)], [worker(1, X), worker(2, M2, devs=("gpu1",))],
                   [pool(free=(4 * GB, 4 * GB))]),
                 [Dispatch("j1", "w1", Reason.DISPATCH), Dispatch("j2", "w2", Reason.DISPATCH)],
                 id="dispatch-unchanged"),
]


@pytest.mark.parametrize("snap,expected_decisions", PIN_CASES)
def test_pin_gpu0(snap, expected_decisions):
    got = example("pin_gpu0").decide(snap)
    assert got == expected_decisions
    assert all(not why for _, why in validate(snap, got))


# ---- the generated docs ------------------------------------------------------------------

def test_policy_docs_are_fresh():
    gen = importlib.import_module("tools.gen_policy_docs")
    doc = ROOT / "docs" / "POLICY.md"
    assert doc.read_text() == gen.render(doc.read_text()), (
        "docs/POLICY.md is out of date: run `python tools/gen_policy_docs.py`")
