"""A Lua policy's decide() at 1,000 workers x 10,000 queued jobs, next to the built-in's.

The cluster is bench/decide.py's (125 pools x 8 devices, 50 models, 10,000 queued jobs,
3 % of the workers reporting a fact per cycle, 200 warm-up cycles). Each measured cycle
builds one snapshot and times, on it, the built-in `scheduler.decide` and each Lua policy
below through `LuaPolicy.decide` (the sandbox, the snapshot view and the decoding of its
decisions included); the simulated loop then carries out the built-in's decisions, so
every policy sees the same cycles. Each policy keeps its runtime across cycles, as the
loop would (records and containers the orchestrator has not replaced are converted once).

  passthrough    `return builtin_decide(snapshot)`: the Lua path's fixed cost
  dispatch       a policy of its own: each model's heads into its open workers' free
                 slots, one wait for the rest (reads queued, open_workers, queued_total,
                 waiting_backoff)
  full_scan      reads every worker, every pool and device, idle_lru: the view's
                 worst case (the whole snapshot converted, less what is cached)
  prefer_seeded, batch_hours (outside its window), pin_gpu0: examples/policies/

Also: each policy's first cycle (nothing cached yet), the Lua runtime's memory, and
whether the validator refused any policy decision. Prints JSON; with --write updates
its section of docs/BENCHMARKS.md. No timing assertions.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.decide import Cluster, stats  # noqa: E402
from bench.report import write_section  # noqa: E402

from orchestrator.lua_policy import LuaPolicy, PolicyError  # noqa: E402
from orchestrator.scheduler import decide  # noqa: E402
from orchestrator.snapshot import build_snapshot  # noqa: E402
from orchestrator.validator import validate  # noqa: E402

START, END = "<!-- lua-decide:start -->", "<!-- lua-decide:end -->"
EXAMPLES = ROOT / "examples" / "policies"

DISPATCH = """
function decide(snapshot)
  local out = {}
  for model, heads in pairs(snapshot.queued) do
    local n = 0
    for _, w in ipairs(snapshot.open_workers[model] or {}) do
      for _ = 1, w.free_slots do
        n = n + 1
        if n > #heads then break end
        out[#out + 1] = {action = "dispatch", job_id = heads[n].job_id, worker_id = w.worker_id}
      end
      if n >= #heads then break end
    end
    local sent = math.min(n, #heads)
    local left = snapshot.eligible(model) - sent
    if left > 0 and heads[sent + 1] then
      out[#out + 1] = {action = "wait", job_id = heads[sent + 1].job_id, jobs = left,
                       reason = "all workers for the model are busy or starting"}
    end
  end
  return out
end
"""

FULL_SCAN = """
function decide(snapshot)
  local busy, held, free = 0, 0, 0
  for _, w in pairs(snapshot.workers) do
    if w.phase == "busy" then busy = busy + 1 end
    held = held + w.memory_bytes * #w.device_ids
  end
  for pool_id, pool in pairs(snapshot.pools) do
    for _, d in ipairs(pool.devices) do free = free + d.free_bytes end
  end
  for _, w in ipairs(snapshot.idle_lru) do held = held - 0 * w.last_used end
  print(busy, held, free)
  return builtin_decide(snapshot)
end
"""


def policies(models: list[str]) -> dict[str, str]:
    pin = (EXAMPLES / "pin_gpu0.lua").read_text().replace(
        "hf:org/model-x@main::file=model-x.gguf", models[0])
    return {"passthrough": "function decide(snapshot) return builtin_decide(snapshot) end",
            "dispatch": DISPATCH, "full_scan": FULL_SCAN,
            "prefer_seeded": (EXAMPLES / "prefer_seeded.lua").read_text(),
            "batch_hours": (EXAMPLES / "batch_hours.lua").read_text(),
            "pin_gpu0": pin}


def run(cycles: int, seed: int) -> dict:
    rng = random.Random(seed)
    load_before = os.getloadavg()[0]
    c = Cluster(rng, pools=125, devices=8, models=50, jobs=10_000)
    c.now = 1_700_000_000.0 + 12 * 3600 - 1_700_000_000.0 % 86400  # noon UTC: batch held
    for _ in range(200):
        c.now += 0.05
        c.churn(0.03)
        snap = build_snapshot(c.index, c.workers.values(), c.pools.values(), c.now,
                              estimates=c.estimates)
        c.carry_out(decide(snap), [], [], {"dispatch": 0, "start": 0, "stop": 0, "wait": 0})
    srcs = policies(c.models)
    lua = {name: LuaPolicy(src, time_budget_s=2.0, instruction_limit=100_000_000)
           for name, src in srcs.items()}
    wall: dict[str, list[float]] = {"builtin": [], **{n: [] for n in lua}}
    cpu: dict[str, list[float]] = {"builtin": [], **{n: [] for n in lua}}
    first: dict[str, float] = {}
    failures = {n: 0 for n in lua}
    refused = {n: 0 for n in lua}
    decisions = {n: 0 for n in ("builtin", *lua)}
    gc.collect()
    counts = {"dispatch": 0, "start": 0, "stop": 0, "wait": 0}
    for cycle in range(cycles):
        c.now += 0.05
        c.churn(0.03)
        snap = build_snapshot(c.index, c.workers.values(), c.pools.values(), c.now,
                              estimates=c.estimates)
        t, u = time.perf_counter_ns(), time.thread_time_ns()
        built = decide(snap)
        wall["builtin"].append((time.perf_counter_ns() - t) / 1e6)
        cpu["builtin"].append((time.thread_time_ns() - u) / 1e6)
        decisions["builtin"] += len(built)
        for name, policy in lua.items():
            t, u = time.perf_counter_ns(), time.thread_time_ns()
            try:
                got = policy.decide(snap)
            except PolicyError as e:
                failures[name] += 1
                print(f"{name}: {e}", file=sys.stderr)
                continue
            ms = (time.perf_counter_ns() - t) / 1e6
            if cycle == 0:
                first[name] = round(ms, 3)
                continue  # the cold cycle is reported apart
            wall[name].append(ms)
            cpu[name].append((time.thread_time_ns() - u) / 1e6)
            decisions[name] += len(got)
            refused[name] += sum(1 for _, why in validate(snap, got) if why)
        c.carry_out(built, [], [], counts)
    measured = {n: len(v) for n, v in wall.items()}
    return {
        "workers": len(c.workers), "queued": len(c.index), "cycles": cycles,
        "decide_ms": {n: stats(v) for n, v in wall.items() if v},
        "decide_cpu_ms": {n: stats(v) for n, v in cpu.items() if v},
        "first_cycle_ms": first,
        "decisions_per_cycle": {n: round(decisions[n] / max(1, measured[n]), 1)
                                for n in decisions},
        "refused_by_validator": refused, "policy_failures": failures,
        "lua_memory_kib": {n: p.memory_used() // 1024 for n, p in lua.items()},
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def render(r: dict) -> str:
    rows = []
    b = r["decide_ms"]["builtin"]["p50"]
    for name, w in r["decide_ms"].items():
        u = r["decide_cpu_ms"][name]
        first = r["first_cycle_ms"].get(name, "")
        ratio = f"{w['p50'] / b:.1f}x" if name != "builtin" and b else ""
        label = "built-in `scheduler.decide`" if name == "builtin" else f"Lua `{name}`"
        rows.append(f"| {label} | {w['p50']} | {w['p99']} | {w['max']} | {u['p50']} | "
                    f"{u['p99']} | {first} | {ratio} | {r['decisions_per_cycle'][name]} |")
    table = "\n".join(rows)
    mem = ", ".join(f"{n} {v}" for n, v in r["lua_memory_kib"].items())
    refused = sum(r["refused_by_validator"].values())
    failed = sum(r["policy_failures"].values())
    return f"""{START}
## Lua policy: decide() at 1,000 workers x 10,000 queued jobs

`python bench/lua_decide.py --write`: bench/decide.py's cluster ({r['workers']} workers at the
end, {r['queued']} queued jobs, 3 % of the workers reporting a fact per cycle), {r['cycles']}
cycles; in each, the built-in and six Lua policies decide over the same snapshot through
`LuaPolicy.decide` (sandbox, instruction hook, snapshot view and decoding included). The
policies: `passthrough` returns `builtin_decide(snapshot)`; `dispatch` is a policy of its
own (heads into open workers' free slots, one wait per model); `full_scan` reads every
worker, pool and device and then returns the built-in's decisions; the three examples of
examples/policies/ (batch_hours outside its window). Python {r['python']}, {r['machine']};
1-minute load average {r['load_average_1m'][0]} before, {r['load_average_1m'][1]} after
(the machine is shared, so tails include its noise). Milliseconds; "first cycle" is each
policy's first call (nothing converted yet), not counted in the percentiles.

| policy | p50 | p99 | max | CPU p50 | CPU p99 | first cycle | p50 vs built-in | decisions/cycle |
|---|---|---|---|---|---|---|---|---|
{table}

Lua runtime memory after the run (KiB): {mem}. Policy failures: {failed}; policy
decisions refused by the validator: {refused}. A policy pays for what it reads: the
view converts a top-level field on first access in a cycle and reuses every record and
container the orchestrator has not replaced, so `full_scan` costs a pass over 1,000
cached records, and `builtin_decide` costs the built-in's own decide plus one Lua table
per decision.
{END}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="update docs/BENCHMARKS.md")
    ns = parser.parse_args()
    result = run(ns.cycles, ns.seed)
    print(json.dumps(result, indent=2))
    if ns.write:
        write_section("lua-decide", render(result))


if __name__ == "__main__":
    main()
