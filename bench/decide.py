"""Scheduler cost at scale: decide() over 1,000 workers x 10,000 queued jobs.

Simulates a saturated cluster: 125 pools x 8 devices (80 GiB each), 50 models (45
single-device models at 16-72 GiB, 5 tensor-parallel ones needing 2 x 70 GiB that have
no worker and must evict to start), one worker per device to begin with, 10,000 queued
jobs (30 % interactive, 5 % in retry backoff). Each cycle 3 % of the workers report a
fact (a job ended, a start finished, a stop completed); the loop's QueueIndex hands
build_snapshot its heads, decide() runs, the validator checks, and the simulated loop
carries the decisions out (each dispatched job is replaced by a new one for the same
model, so every model's backlog stays steady and the queue at 10,000; starts add STARTING workers holding memory; stops mark workers STOPPING).
200 warm-up cycles reach the steady state before measuring. Times decide() (wall and
thread CPU), the builder and the validator separately, QueueIndex add/remove per op,
and one burst cycle with every worker idle. The snapshot is taken two ways each cycle:
from scratch (build_snapshot over every view, as the orchestrator did before) and
incrementally (a registry.FleetIndex fed only the views that changed, then
snapshot.assemble, as the orchestrator does now); every 10th cycle asserts the two are
equal, and decide() runs on the incremental one. With --slots N every worker runs up to N jobs
at once (continuous batching: a BUSY worker runs N, a READY one fewer; a fact ends one
job), so a cycle may send one worker several jobs. With --tenants N it runs platform
mode (quotas at scheduling time, tenant-exclusive workers): jobs belong to N tenants at
random, every other tenant may run at most its share of half the slots at once, one is
out of token budget, and a worker runs one tenant's jobs at a time. Prints JSON; with
--write updates the section of docs/BENCHMARKS.md between its markers (without
--tenants only). No timing assertions (it only checks that the validator accepts every
decision).
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

from bench.report import write_section  # noqa: E402

from orchestrator.estimates import ModelEstimate  # noqa: E402
from orchestrator.queue_index import QueueIndex  # noqa: E402
from orchestrator.quota import TenantLimits  # noqa: E402
from orchestrator.registry import FleetIndex  # noqa: E402
from orchestrator.scheduler import decide  # noqa: E402
from orchestrator.snapshot import (DeviceView, Dispatch, JobView, PoolView, StartWorker,  # noqa: E402
                                   StopWorker, Wait, WorkerView, assemble, build_snapshot)
from orchestrator.types import Priority, WorkerPhase  # noqa: E402
from orchestrator.validator import validate  # noqa: E402

GIB = 1 << 30
START, END = "<!-- decide:start -->", "<!-- decide:end -->"
PHASES = ([WorkerPhase.BUSY] * 93 + [WorkerPhase.READY] * 5 + [WorkerPhase.STARTING]
          + [WorkerPhase.STOPPING])


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def stats(values: list[float]) -> dict:
    return {"p50": round(pct(values, 50), 4), "p99": round(pct(values, 99), 4),
            "max": round(max(values), 4), "mean": round(sum(values) / len(values), 4)}


class Cluster:
    """A simulated cluster that carries out decide()'s decisions, so it reaches the steady
    state a real loop would: started workers hold memory, stopped ones release it."""

    def __init__(self, rng: random.Random, pools: int, devices: int, models: int, jobs: int,
                 slots: int = 1, tenants: int = 0):
        self.rng = rng
        self.slots = slots
        self.tenants = [f"t-{i:03d}" for i in range(tenants)]
        share = max(1, pools * devices * slots // (2 * max(1, tenants)))
        self.limits = {t: TenantLimits(max_concurrent_jobs=share) for t in self.tenants[::2]}
        if tenants > 1:
            self.limits[self.tenants[1]] = TenantLimits(token_budget=1000, credit_tokens=0)
        self.tenancy = {"tenancy": True, "tenants": self.limits} if tenants else {}
        self.models = [f"hf:org/model-{i}@rev::file=m.gguf" for i in range(models)]
        single = models - 5
        self.mem = {m: (rng.choice([56, 60, 64, 68, 72]) if i < single - 5 else 16) * GIB
                    for i, m in enumerate(self.models[:single])}
        self.mem.update({m: 70 * GIB for m in self.models[single:]})
        self.tp = {m: (2 if i >= single else 1) for i, m in enumerate(self.models)}
        self.queued_models = self.models[:single - 5] + self.models[single:]
        self.workers: dict[str, WorkerView] = {}
        self.fleet = FleetIndex()  # fed every change, as the registry feeds it
        self.upkeep_ns = 0  # time spent feeding it
        self.changes = 0  # views fed to it
        self.free: dict[str, dict[str, int]] = {}
        self.pools: dict[str, PoolView] = {}
        self.now = 1000.0
        self.serial = 0
        for p in range(pools):
            pid = f"pool-{p:03d}"
            self.free[pid] = {}
            for d in range(devices):
                m = self.models[(p * devices + d) % single]
                phase = rng.choice(PHASES)
                active = (slots if phase is WorkerPhase.BUSY else
                          rng.randrange(slots) if slots > 1 and phase is WorkerPhase.READY else 0)
                w = WorkerView(f"w-{p}-{d}", pid, m, phase, (f"gpu{d}",),
                               rng.random() * 100, self.mem[m], slots, active,
                               rng.choice(self.tenants) if active and self.tenants else "")
                self.put(w)
                self.free[pid][f"gpu{d}"] = 80 * GIB - self.mem[m]
            self.refresh(pid)
        self.estimates = {m: ModelEstimate(40.0, 8.0, 30.0) for m in self.models[:single]}
        self.index = QueueIndex()
        self.order = 0
        for _ in range(jobs):
            self.index.add(self.new_job())

    def refresh(self, pid: str) -> None:
        self.pools[pid] = p = PoolView(pid, True, tuple(DeviceView(d, 80 * GIB, f)
                                                        for d, f in self.free[pid].items()))
        t = time.perf_counter_ns()
        self.fleet.put_pool(p)
        self.upkeep_ns += time.perf_counter_ns() - t

    def put(self, w: WorkerView) -> None:
        self.workers[w.worker_id] = w
        self.changes += 1
        t = time.perf_counter_ns()
        self.fleet.put_worker(w)
        self.upkeep_ns += time.perf_counter_ns() - t

    def drop(self, worker_id: str) -> None:
        del self.workers[worker_id]
        self.changes += 1
        t = time.perf_counter_ns()
        self.fleet.drop_worker(worker_id)
        self.upkeep_ns += time.perf_counter_ns() - t

    def snapshot(self):
        return assemble(self.index, self.fleet.facts(), self.now, estimates=self.estimates,
                        **self.tenancy)

    def timed_snapshot(self) -> tuple:
        """The snapshot, with the time of fleet.facts() and of assemble() (ns)."""
        t0 = time.perf_counter_ns()
        fleet = self.fleet.facts()
        t1 = time.perf_counter_ns()
        snap = assemble(self.index, fleet, self.now, estimates=self.estimates, **self.tenancy)
        return snap, t1 - t0, time.perf_counter_ns() - t1

    def new_job(self, model: str = "") -> JobView:
        self.order += 1
        m = model or self.rng.choice(self.queued_models)
        prio = Priority.INTERACTIVE if self.rng.random() < 0.3 else Priority.BATCH
        nb = self.now + self.rng.uniform(1, 60) if self.rng.random() < 0.05 else 0.0
        return JobView(f"job-{self.order}", m, prio, self.order, self.mem[m], self.tp[m],
                       not_before=nb, attempts=1 if nb else 0,
                       tenant_id=self.rng.choice(self.tenants) if self.tenants else "")

    def set(self, w: WorkerView, phase: WorkerPhase, last_used: float | None = None,
            active: int | None = None, tenant: str = "") -> None:
        active = w.active if active is None else active
        self.put(WorkerView(
            w.worker_id, w.pool_id, w.model_ref, phase, w.device_ids,
            w.last_used if last_used is None else last_used, w.memory_bytes, w.slots,
            active, (tenant or w.tenant_id) if active else ""))

    def churn(self, fraction: float) -> None:
        """Facts arrive: a job ends (one per worker), starts finish, stops complete."""
        for wid in self.rng.sample(sorted(self.workers), int(len(self.workers) * fraction)):
            w = self.workers[wid]
            if w.phase is WorkerPhase.STOPPING:
                self.drop(wid)
                for d in w.device_ids:
                    self.free[w.pool_id][d] += w.memory_bytes
                self.refresh(w.pool_id)
            elif w.phase is WorkerPhase.STARTING:
                self.set(w, WorkerPhase.READY, self.now, 0)
            elif w.active:
                self.set(w, WorkerPhase.READY, self.now, w.active - 1)

    def carry_out(self, decisions, add_us: list, remove_us: list, counts: dict) -> None:
        for d in decisions:
            if isinstance(d, Dispatch):
                counts["dispatch"] += 1
                t = time.perf_counter_ns()
                gone = self.index.remove(d.job_id)
                remove_us.append((time.perf_counter_ns() - t) / 1e3)
                w = self.workers[d.worker_id]
                full = w.active + 1 >= w.slots
                self.set(w, WorkerPhase.BUSY if full else WorkerPhase.READY, self.now, w.active + 1,
                         gone.tenant_id)
                job = self.new_job(gone.model_ref)  # keeps each model's backlog steady
                t = time.perf_counter_ns()
                self.index.add(job)
                add_us.append((time.perf_counter_ns() - t) / 1e3)
            elif isinstance(d, StartWorker):
                counts["start"] += 1
                self.serial += 1
                self.put(WorkerView(f"w-new-{self.serial}", d.pool_id, d.model_ref,
                                    WorkerPhase.STARTING, d.device_ids, self.now,
                                    d.memory_estimate, self.slots))
                for dev in d.device_ids:
                    self.free[d.pool_id][dev] -= d.memory_estimate
                self.refresh(d.pool_id)
            elif isinstance(d, StopWorker):
                counts["stop"] += 1
                self.set(self.workers[d.worker_id], WorkerPhase.STOPPING)
            elif isinstance(d, Wait):
                counts["wait"] += 1


def run(cycles: int, seed: int, slots: int = 1, tenants: int = 0) -> dict:
    rng = random.Random(seed)
    load_before = os.getloadavg()[0]
    c = Cluster(rng, pools=125, devices=8, models=50, jobs=10_000, slots=slots, tenants=tenants)
    decide_ms, decide_cpu_ms, build_ms, validate_ms, remove_us, add_us = [], [], [], [], [], []
    incremental_ms, upkeep_ms, facts_ms, assemble_ms = [], [], [], []
    counts = {"dispatch": 0, "start": 0, "stop": 0, "wait": 0}
    warm = {"dispatch": 0, "start": 0, "stop": 0, "wait": 0}
    for _ in range(200):  # warm up: reach the steady state before measuring
        c.now += 0.05
        c.churn(0.03)
        c.carry_out(decide(c.snapshot()), [], [], warm)
    gc.collect()
    c.upkeep_ns = c.changes = 0
    for i in range(cycles):
        c.now += 0.05
        c.churn(0.03)
        t0 = time.perf_counter_ns()
        scratch = build_snapshot(c.index, c.workers.values(), c.pools.values(), c.now,
                                 estimates=c.estimates, **c.tenancy)
        t1 = time.perf_counter_ns()
        snap, facts_ns, assemble_ns = c.timed_snapshot()
        t2, c2 = time.perf_counter_ns(), time.thread_time_ns()
        decisions = decide(snap)
        t3, c3 = time.perf_counter_ns(), time.thread_time_ns()
        if i % 10 == 0:
            assert snap == scratch, f"incremental snapshot differs at cycle {i}"
        build_ms.append((t1 - t0) / 1e6)
        facts_ms.append(facts_ns / 1e6)
        assemble_ms.append(assemble_ns / 1e6)
        # What the orchestrator pays per cycle: its registry feeds the changed views in
        # when the snapshot is taken, then publishes and assembles.
        incremental_ms.append((c.upkeep_ns + facts_ns + assemble_ns) / 1e6)
        decide_ms.append((t3 - t2) / 1e6)
        decide_cpu_ms.append((c3 - c2) / 1e6)
        t4 = time.perf_counter_ns()
        refused = [d for d, why in validate(snap, decisions) if why]
        validate_ms.append((time.perf_counter_ns() - t4) / 1e6)
        assert not refused, refused  # the bench's own sanity, not a timing assertion
        upkeep_ms.append(c.upkeep_ns / 1e6)  # facts since the last cycle, its decisions
        c.carry_out(decisions, add_us, remove_us, counts)
        c.upkeep_ns = 0  # carrying out is fed in with the next cycle's facts
    changes_per_cycle = c.changes / cycles
    phases: dict[str, int] = {}
    for w in c.workers.values():
        phases[w.phase.value] = phases.get(w.phase.value, 0) + 1
    # A burst: every worker READY at once (say, after the orchestrator restarts).
    c.upkeep_ns = 0
    for w in list(c.workers.values()):
        c.set(w, WorkerPhase.READY, active=0)
    burst_upkeep_ms = c.upkeep_ns / 1e6
    t = time.perf_counter_ns()
    burst = c.snapshot()
    burst_snapshot_ms = (time.perf_counter_ns() - t) / 1e6
    burst_ms = []
    for _ in range(5):
        t = time.perf_counter_ns()
        burst_out = decide(burst)
        burst_ms.append((time.perf_counter_ns() - t) / 1e6)
    burst_dispatches = sum(isinstance(d, Dispatch) for d in burst_out)
    fill = QueueIndex()
    jobs = [c.new_job() for _ in range(10_000)]
    t = time.perf_counter_ns()
    for j in jobs:
        fill.add(j)
    bulk_add = (time.perf_counter_ns() - t) / 1e3 / len(jobs)
    rng.shuffle(jobs)
    t = time.perf_counter_ns()
    for j in jobs:
        fill.remove(j.job_id)
    bulk_remove = (time.perf_counter_ns() - t) / 1e3 / len(jobs)
    return {
        "workers": len(c.workers), "workers_by_phase": phases, "slots": slots,
        "tenants": tenants,
        "pools": len(c.pools),
        "devices": len(c.pools) * 8, "models": len(c.models), "queued": len(c.index),
        "cycles": cycles, "decide_ms": stats(decide_ms), "decide_cpu_ms": stats(decide_cpu_ms),
        "build_snapshot_ms": stats(build_ms), "incremental_snapshot_ms": stats(incremental_ms),
        "index_upkeep_ms": stats(upkeep_ms),
        "worker_changes_per_cycle": round(changes_per_cycle, 1),
        "fleet_facts_ms": stats(facts_ms),
        "assemble_ms": stats(assemble_ms), "validate_ms": stats(validate_ms),
        "queue_index_us_per_op": {"add_in_loop": round(sum(add_us) / max(1, len(add_us)), 2),
                                  "remove_in_loop": round(sum(remove_us) / max(1, len(remove_us)), 2),
                                  "add_10k": round(bulk_add, 2), "remove_10k": round(bulk_remove, 2)},
        "decisions_per_cycle": {k: round(v / cycles, 2) for k, v in counts.items()},
        "burst_all_idle": {"decide_ms_median_of_5": round(sorted(burst_ms)[2], 3),
                           "dispatches": burst_dispatches,
                           "upkeep_ms": round(burst_upkeep_ms, 3),
                           "snapshot_ms": round(burst_snapshot_ms, 3)},
        "warmup_decisions": warm,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def render(r: dict) -> str:
    d, u, b, v = r["decide_ms"], r["decide_cpu_ms"], r["build_snapshot_ms"], r["validate_ms"]
    i, k, bu = r["incremental_snapshot_ms"], r["index_upkeep_ms"], r["burst_all_idle"]
    f, a = r["fleet_facts_ms"], r["assemble_ms"]
    q, n = r["queue_index_us_per_op"], r["decisions_per_cycle"]
    ph = ", ".join(f"{k} {v}" for k, v in sorted(r["workers_by_phase"].items()))
    w = r["warmup_decisions"]
    slots = f" --slots {r['slots']}" if r["slots"] != 1 else ""
    each = f", {r['slots']} slots each" if r["slots"] != 1 else ""
    return f"""{START}
## Scheduler: decide() at 1,000 workers x 10,000 queued jobs

`python bench/decide.py --write{slots}`: {r['pools']} simulated pools x 8 devices, {r['models']} models,
1,000 workers at the start{each} ({r['workers']} at the end: {ph}), {r['queued']} queued jobs
(30 % interactive, 5 % in retry backoff); {r['cycles']} measured cycles after 200 warm-up
cycles (which took {w['start']} start and {w['stop']} stop decisions), 3 % of the workers
reporting a fact per cycle. Python {r['python']}, {r['machine']}; 1-minute load average
{r['load_average_1m'][0]} before, {r['load_average_1m'][1]} after (the machine is shared
with other work, so tails include its noise).

| what | p50 | p99 | max | mean |
|---|---|---|---|---|
| `decide(snapshot)` (ms, wall) | {d['p50']} | {d['p99']} | {d['max']} | {d['mean']} |
| `decide(snapshot)` (ms, thread CPU) | {u['p50']} | {u['p99']} | {u['max']} | {u['mean']} |
| snapshot from scratch: `build_snapshot(index, workers, pools, now)` (ms; before) | {b['p50']} | {b['p99']} | {b['max']} | {b['mean']} |
| snapshot incremental, all of it (ms; now) | {i['p50']} | {i['p99']} | {i['max']} | {i['mean']} |
| — feeding `FleetIndex` the worker views changed since the last cycle ({r['worker_changes_per_cycle']} a cycle) | {k['p50']} | {k['p99']} | {k['max']} | {k['mean']} |
| — `fleet.facts()`: publishing the changed parts | {f['p50']} | {f['p99']} | {f['max']} | {f['mean']} |
| — `assemble(index, fleet, now)`: queue heads, eviction bounds, rankings (both paths do this) | {a['p50']} | {a['p99']} | {a['max']} | {a['mean']} |
| `validate(snapshot, decisions)` (ms) | {v['p50']} | {v['p99']} | {v['max']} | {v['mean']} |

QueueIndex per operation (µs): add {q['add_in_loop']}, remove {q['remove_in_loop']} in the
loop; {q['add_10k']} / {q['remove_10k']} filling and draining 10,000 jobs. Decisions per
measured cycle: {n['dispatch']} dispatches, {n['start']} starts, {n['stop']} stops,
{n['wait']} waits (one per model and reason). A burst with every worker idle at once
({bu['dispatches']} dispatches in one cycle) takes
{bu['decide_ms_median_of_5']} ms: decide is linear in the decisions it
returns, not in the queue. In that burst every view changes at once: feeding them in
took {bu['upkeep_ms']} ms and the snapshot after it {bu['snapshot_ms']} ms. The two snapshot
paths agreed on every cycle checked (every 10th).
{END}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--slots", type=int, default=1, help="jobs each worker runs at once")
    parser.add_argument("--tenants", type=int, default=0,
                        help="platform mode: jobs of this many tenants, with quotas")
    parser.add_argument("--write", action="store_true", help="update docs/BENCHMARKS.md")
    ns = parser.parse_args()
    result = run(ns.cycles, ns.seed, ns.slots, ns.tenants)
    print(json.dumps(result, indent=2))
    if ns.write and not ns.tenants:
        write_section("decide", render(result))


if __name__ == "__main__":
    main()
