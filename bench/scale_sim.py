"""1,000 simulated workers under one orchestrator, on one machine.

Starts a real orchestrator process and POOLS real pool manager processes with
`pool.sim_in_process = true` (each sim worker is a task with its own gRPC server inside
its pool manager) and one declared, simulated device each; the model is `sim`: the tiny
model's tokenizer with a sim.json (1 ms to first token, 1 ms a token, one slot). Then:

1. bring-up: AdminService.StartWorker for every worker (WORKERS_PER_POOL per pool),
   timed until the orchestrator counts them all READY (`orchd_workers{phase="ready"}`);
2. a burst: JOBS short jobs through ClientService.Submit (64 concurrent callers), timed
   until `orchd_jobs_finished_total` counts them all.

Reported: bring-up time, RSS (now and peak) of the orchestrator and each pool manager,
jobs/s (first admission to last finish), the orchestrator's decide-cycle histogram
(`orchd_scheduling_latency_ms`), and per job, from the state store's job events once the
orchestrator has stopped: queued -> dispatched (backlog included) and dispatched ->
started (the dispatch path: orchestrator -> worker Execute -> `started` back).
`--profile` runs the orchestrator under cProfile and prints where its time went.
`--before RESULT.json` (an earlier run's printed JSON) adds a before/after table of the
headline numbers to the section. Prints JSON and, with --write, updates its section of
docs/BENCHMARKS.md. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import pstats
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import write_section  # noqa: E402

from llama_orch.v1 import (admin_pb2, admin_pb2_grpc, client_pb2, client_pb2_grpc,  # noqa: E402
                           common_pb2 as C, events_pb2)
from tests.stack import free_port, sim_model, start_daemon, wait_serving  # noqa: E402

SIM = {"ttft_ms": 1, "ttft_spread_ms": 0, "itl_ms": 1, "itl_spread_ms": 0, "slots": 1,
       "load_ms": 0}
WORKER_BYTES = 1_000_000
DEVICE_BYTES = 10**13


def write_config(root: Path, orch_port: int, metrics_port: int, heartbeat_ms: int) -> Path:
    model = root / "sim-model"
    sim_model(model, SIM)
    path = root / "llama-orch.toml"
    path.write_text(f"""
data_dir = "{root / 'data'}"
[orchestrator]
listen = "127.0.0.1:{orch_port}"
metrics_listen = "127.0.0.1:{metrics_port}"
worker_start_timeout_s = 600.0
[pool]
heartbeat_ms = {heartbeat_ms}
sim_in_process = true
[[pool.devices]]
id = "sim-0"
memory_bytes = {DEVICE_BYTES}
[models.sim]
ref = "file:{model}"
engine = "sim"
memory_bytes = {WORKER_BYTES}
""")
    return path


def rss_mb(pid: int) -> dict:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = round(int(value.split()[0]) / 1024)
    return {"rss_mb": fields["VmRSS"], "peak_mb": fields["VmHWM"]}


def cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system) a process has used; None = this one."""
    if pid is None:
        return time.process_time()
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threads_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds by thread name (threads of one name summed): where a process's CPU
    went, the store's SQLite thread and gRPC's pollers included."""
    out: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        name = "main" if tid == str(pid) else name
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf(
            "SC_CLK_TCK")
    return out


def cpu_of(procs: dict) -> dict:
    return {"bench client": cpu_s()} | {name: cpu_s(p.pid) for name, p in procs.items()}


def scrape(metrics_url: str) -> dict:
    """name -> list of (labels, value) for every sample."""
    with urllib.request.urlopen(metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def value(samples: dict, name: str, **labels) -> float:
    return sum(v for lab, v in samples.get(name, [])
               if all(lab.get(k) == x for k, x in labels.items()))


def histogram_quantiles(samples: dict, name: str) -> dict:
    """Upper bucket bounds holding p50/p90/p99 of a Prometheus histogram, and its mean."""
    buckets = sorted((float(lab["le"]), v) for lab, v in samples.get(name + "_bucket", []))
    count = value(samples, name + "_count")
    out = {"cycles": int(count), "mean_ms": round(value(samples, name + "_sum") / max(count, 1), 3)}
    for q in (50, 90, 99):
        out[f"p{q}_ms_at_most"] = next((le for le, v in buckets if v >= count * q / 100), None)
    return out


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))] if s else float("nan")


def spread(values: list[float]) -> dict:
    return {f"p{q}": round(pct(values, q), 1) for q in (50, 90, 99)} | {
        "max": round(max(values), 1) if values else None}


async def wait_metric(metrics_url: str, name: str, target: float, timeout: float,
                      **labels) -> float:
    """Until the metric reaches target; returns when (time.time())."""
    deadline, got = time.monotonic() + timeout, 0.0
    while time.monotonic() < deadline:
        got = value(await asyncio.to_thread(scrape, metrics_url), name, **labels)
        if got >= target:
            return time.time()
        await asyncio.sleep(0.25)
    raise TimeoutError(f"{name}{labels} did not reach {target} in {timeout:.0f} s (at {got})")


async def bring_up(orchestrator: str, pools: list[str], per_pool: int) -> dict:
    async with grpc.aio.insecure_channel(orchestrator) as ch:
        admin = admin_pb2_grpc.AdminServiceStub(ch)
        gate = asyncio.Semaphore(200)
        errors: list[str] = []

        async def start(pool_id: str) -> None:
            async with gate:
                try:
                    await admin.StartWorker(admin_pb2.StartWorkerRequest(
                        model="sim", pool_id=pool_id, device_ids=["sim-0"]), timeout=120)
                except grpc.aio.AioRpcError as exc:
                    errors.append(exc.details())

        await asyncio.gather(*(start(p) for _ in range(per_pool) for p in pools))
    return {"start_errors": len(errors), "first_error": errors[0] if errors else None}


async def burst(orchestrator: str, jobs: int, max_tokens: int, concurrency: int) -> dict:
    todo = iter(range(jobs))
    errors: list[str] = []
    async with grpc.aio.insecure_channel(orchestrator) as ch:
        client = client_pb2_grpc.ClientServiceStub(ch)

        async def caller() -> None:
            for i in todo:
                try:
                    await client.Submit(client_pb2.SubmitRequest(spec=C.JobSpec(
                        model="sim", prompt=f"The fox and the crow, part {i}.",
                        priority=C.PRIORITY_BATCH,
                        sampling=C.SamplingParams(seed=i, max_tokens=max_tokens))), timeout=60)
                except grpc.aio.AioRpcError as exc:
                    errors.append(exc.details())

        t0 = time.time()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return {"submit_s": round(time.time() - t0, 2), "submit_errors": len(errors),
            "first_submit_error": errors[0] if errors else None}


def job_latencies(db: Path) -> dict:
    """Per-job timings from the stopped orchestrator's store (jobs + job_events)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT status, created_at, finished_at FROM jobs").fetchall()
        events: dict[str, dict[str, float]] = {}
        for job_id, blob in con.execute("SELECT job_id, event FROM job_events"):
            ev = events_pb2.JobEvent.FromString(blob)
            kind = ev.WhichOneof("kind")
            if kind in ("queued", "dispatched", "started"):
                t = ev.time.seconds + ev.time.nanos / 1e9
                events.setdefault(job_id, {}).setdefault(kind, t)  # the first attempt's
    finally:
        con.close()
    statuses: dict[str, int] = {}
    for status, _, _ in rows:
        name = C.JobStatus.Name(status).removeprefix("JOB_STATUS_").lower()
        statuses[name] = statuses.get(name, 0) + 1
    waits = [(e["dispatched"] - e["queued"]) * 1000 for e in events.values()
             if "queued" in e and "dispatched" in e]
    dispatch = [(e["started"] - e["dispatched"]) * 1000 for e in events.values()
                if "dispatched" in e and "started" in e]
    done = [r for r in rows if r[2] > 0]
    span = max(r[2] for r in done) - min(r[1] for r in rows) if done else float("nan")
    return {"statuses": statuses, "span_s": round(span, 2),
            "jobs_per_s": round(len(done) / span, 1) if done else 0.0,
            "queued_to_dispatched_ms": spread(waits),
            "dispatched_to_started_ms": spread(dispatch)}


def top_functions(prof: Path, n: int = 25) -> list[str]:
    stats = pstats.Stats(str(prof))
    rows = []
    for (file, line, fn), (_, calls, tottime, cumtime, _) in stats.stats.items():
        rows.append((tottime, cumtime, calls, f"{Path(file).name}:{line}({fn})"))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    return [f"{t:8.2f}s self {c:8.2f}s cum {calls:9d} calls  {name}"
            for t, c, calls, name in rows[:n]] + [f"total self time {total:.1f}s"]


def stop(proc, timeout: float = 60.0) -> float:
    t0 = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except Exception:  # noqa: BLE001 - a stuck daemon must not keep the bench alive
            proc.kill()
            proc.wait()
    return round(time.monotonic() - t0, 2)


async def measure(ns: argparse.Namespace, root: Path) -> dict:
    orch_port, metrics_port = free_port(), free_port()
    config = write_config(root, orch_port, metrics_port, ns.heartbeat_ms)
    orchestrator = f"127.0.0.1:{orch_port}"
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    pool_ids = [f"pool-{i}" for i in range(ns.pools)]
    total = ns.pools * ns.workers_per_pool
    prof = root / "orchestrator.prof"
    procs = {}
    result: dict = {"pools": ns.pools, "workers": total, "jobs": ns.jobs,
                    "max_tokens": ns.max_tokens, "sim": SIM, "profiled": ns.profile}
    try:
        args = ("-m", "orchestrator", "--config", str(config))
        procs["orchestrator"] = (start_daemon(root, "orchestrator.log", "cProfile", "-o", str(prof),
                                              *args) if ns.profile
                                 else start_daemon(root, "orchestrator.log", *args[1:]))
        wait_serving(orchestrator)
        for pool_id in pool_ids:
            procs[pool_id] = start_daemon(
                root, f"{pool_id}.log", "pool_manager", "--config", str(config), "--pool-id",
                pool_id, "--listen", f"127.0.0.1:{free_port()}", "--orchestrator", orchestrator)
        await wait_metric(metrics_url, "orchd_pools", ns.pools, 60)
        result["idle_rss"] = {name: rss_mb(p.pid) for name, p in procs.items()}

        t0 = time.time()
        result["bring_up"] = await bring_up(orchestrator, pool_ids, ns.workers_per_pool)
        result["bring_up"]["commands_s"] = round(time.time() - t0, 2)
        ready_at = await wait_metric(metrics_url, "orchd_workers", total, ns.timeout,
                                     phase="ready")
        result["bring_up"]["all_ready_s"] = round(ready_at - t0, 2)
        await asyncio.sleep(ns.heartbeat_ms / 1000 * 2)  # a couple of heartbeats at full size
        result["ready_rss"] = {name: rss_mb(p.pid) for name, p in procs.items()}

        t1, cpu0 = time.time(), cpu_of(procs)
        threads0 = threads_cpu_s(procs["orchestrator"].pid)
        result["burst"] = await burst(orchestrator, ns.jobs, ns.max_tokens, ns.concurrency)
        finished_at = await wait_metric(metrics_url, "orchd_jobs_finished_total", ns.jobs,
                                        ns.timeout)
        result["burst"]["all_finished_s"] = round(finished_at - t1, 2)
        result["burst"]["cpu_s"] = {k: round(v - cpu0[k], 1) for k, v in cpu_of(procs).items()}
        threads = threads_cpu_s(procs["orchestrator"].pid)
        result["burst"]["orchestrator_threads_cpu_s"] = {
            k: round(v - threads0.get(k, 0.0), 1) for k, v in sorted(
                threads.items(), key=lambda kv: -(kv[1] - threads0.get(kv[0], 0.0)))
            if v - threads0.get(k, 0.0) >= 0.1}
        samples = await asyncio.to_thread(scrape, metrics_url)
        result["decide_cycle"] = histogram_quantiles(samples, "orchd_scheduling_latency_ms")
        result["dispatches"] = {lab["outcome"]: int(v) for lab, v in
                                samples.get("orchd_dispatches_total", [])}
        result["retries"] = int(value(samples, "orchd_retries_total"))
        result["end_rss"] = {name: rss_mb(p.pid) for name, p in procs.items()}
        result["pools_still_joined"] = int(value(samples, "orchd_pools"))
    finally:
        result["stop_s"] = {name: stop(p) for name, p in reversed(list(procs.items()))}
    result["per_job"] = job_latencies(root / "data" / "state.db")
    if ns.profile and prof.exists():
        result["profile_top"] = top_functions(prof)
    result["machine"] = (f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
                         f"{platform.python_version()}; load average {os.getloadavg()[0]:.2f} "
                         f"at the end")
    return result


def headline(r: dict) -> dict[str, str]:
    """The numbers a before/after comparison shows, formatted."""
    d, threads = r["decide_cycle"], r["burst"]["orchestrator_threads_cpu_s"]
    o, q = r["end_rss"]["orchestrator"], r["per_job"]["queued_to_dispatched_ms"]
    return {
        "throughput (jobs/s)": f"{r['per_job']['jobs_per_s']}",
        "decide cycles per job": f"{d['cycles'] / r['jobs']:.2f}",
        "decide cycle: mean; p50 / p99 (bucket bounds)":
            f"{d['mean_ms']} ms; ≤ {d['p50_ms_at_most']} / ≤ {d['p99_ms_at_most']} ms",
        "event-loop CPU per job": f"{threads.get('main', 0.0) / r['jobs'] * 1000:.2f} ms",
        "queued → dispatched p50 / p99": f"{q['p50']} / {q['p99']} ms",
        "orchestrator RSS after the burst (peak)": f"{o['rss_mb']} MB ({o['peak_mb']} MB)",
        "load average at the end": r["machine"].rsplit("load average ", 1)[-1].split()[0],
    }


def compare(before: dict, after: dict) -> str:
    b, a = headline(before), headline(after)
    rows = "\n".join(f"| {k} | {b[k]} | {a[k]} |" for k in a)
    return f"""Before and after the incremental snapshot (registry.FleetIndex), wake-up coalescing
and scrape-time gauges: two runs of this bench, same arguments ({after['jobs']:,} jobs),
one each, on the same shared machine.

| | before | after |
|---|---|---|
{rows}

"""


def render(r: dict, before: dict | None = None) -> str:
    pools = [name for name in r["ready_rss"] if name != "orchestrator"]
    o = {phase: r[phase]["orchestrator"] for phase in ("idle_rss", "ready_rss", "end_rss")}
    per_worker_kb = (sum(r["ready_rss"][p]["rss_mb"] - r["idle_rss"][p]["rss_mb"] for p in pools)
                     / r["workers"] * 1024)
    j, d, b, u = r["per_job"], r["decide_cycle"], r["bring_up"], r["burst"]
    q, s = j["queued_to_dispatched_ms"], j["dispatched_to_started_ms"]
    cpu, threads = u["cpu_s"], u["orchestrator_threads_cpu_s"]
    ms_per_job = threads.get("main", 0.0) / r["jobs"] * 1000
    rows = [
        (f"bring-up: {r['workers']} StartWorker calls → all READY at the orchestrator",
         f"**{b['all_ready_s']} s** (commands answered in {b['commands_s']} s; "
         f"{b['start_errors']} refused)"),
        ("orchestrator RSS: idle / workers ready / after the burst (peak)",
         f"{o['idle_rss']['rss_mb']} / {o['ready_rss']['rss_mb']} / {o['end_rss']['rss_mb']} MB "
         f"({o['end_rss']['peak_mb']} MB)"),
        ("pool manager RSS: idle / workers ready / after the burst (largest peak)",
         " / ".join(str(max(r[phase][p]["rss_mb"] for p in pools))
                    for phase in ("idle_rss", "ready_rss", "end_rss"))
         + f" MB ({max(r['end_rss'][p]['peak_mb'] for p in pools)} MB)"),
        ("memory per in-process sim worker (pool RSS growth / workers)",
         f"{per_worker_kb:.0f} KB"),
        ("throughput: first admission → last finish",
         f"**{j['jobs_per_s']} jobs/s** ({j['span_s']} s; submitting took {u['submit_s']} s)"),
        ("outcomes", ", ".join(f"{k} {v}" for k, v in sorted(j["statuses"].items()))
         + f"; {r['retries']} retries"),
        (f"decide cycle (`orchd_scheduling_latency_ms`, {d['cycles']:,} cycles, "
         f"{d['cycles'] / r['jobs']:.2f} a job)",
         f"mean {d['mean_ms']} ms; p50 ≤ {d['p50_ms_at_most']}, p90 ≤ {d['p90_ms_at_most']}, "
         f"p99 ≤ {d['p99_ms_at_most']} ms (bucket bounds); cycles × mean = "
         f"{d['cycles'] * d['mean_ms'] / 1000:.0f} s of the event loop's "
         f"{threads.get('main', 0.0):.0f} s"),
        ("queued → dispatched per job (backlog included)",
         f"p50 {q['p50']}, p90 {q['p90']}, p99 {q['p99']}, max {q['max']} ms"),
        ("dispatched → started per job (orchestrator → worker Execute → `started`)",
         f"p50 {s['p50']}, p90 {s['p90']}, p99 {s['p99']}, max {s['max']} ms"),
        ("CPU during the burst: orchestrator (its event-loop thread) / pool managers / bench",
         f"{cpu['orchestrator']} s ({threads.get('main', 0.0)} s = {ms_per_job:.2f} ms a job) / "
         f"{sum(cpu[p] for p in pools):.1f} s / {cpu['bench client']} s"),
    ]
    table = "\n".join(f"| {what} | {result} |" for what, result in rows)
    return f"""<!-- scale-sim:start -->
## {r["workers"]:,} simulated workers under one orchestrator

`python bench/scale_sim.py --jobs {r['jobs']}{" --before BEFORE.json" if before else ""} --write` — one run, {time.strftime('%Y-%m-%d')}:
a real orchestrator (SQLite) and {r['pools']} pool manager processes with
`sim_in_process = true`, {r['workers']} in-process sim workers ({r['workers'] // r['pools']} per
pool, each its own gRPC server; 1 ms to first token, 1 ms a token), then {r['jobs']:,} jobs of up
to {r['max_tokens']} tokens submitted by 64 concurrent gRPC callers. {r['machine']};
everything, the bench client included, shares those CPUs.

{compare(before, r) if before else ""}| what | result |
|---|---|
{table}
<!-- scale-sim:end -->"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", type=int, default=4)
    parser.add_argument("--workers-per-pool", type=int, default=250)
    # 10,000: about 3.5 minutes in all at the ~50-65 jobs/s measured before the
    # incremental snapshot (20,000 took 5.5); about a minute after it.
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--heartbeat-ms", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=240.0, help="per phase, seconds")
    parser.add_argument("--profile", action="store_true", help="orchestrator under cProfile")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (logs)")
    parser.add_argument("--write", action="store_true", help="update docs/BENCHMARKS.md")
    parser.add_argument("--before", type=Path, help="an earlier run's JSON, to compare")
    ns = parser.parse_args()
    before = json.loads(ns.before.read_text()) if ns.before else None
    root = Path(tempfile.mkdtemp(prefix="scale-sim-"))
    try:
        result = asyncio.run(measure(ns, root))
    finally:
        if ns.keep:
            print(f"run folder: {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if ns.write:
        write_section("scale-sim", render(result, before))


if __name__ == "__main__":
    main()
