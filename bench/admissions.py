"""Durable admissions per second through Store.insert_job (group commit).

Each admission is what the orchestrator persists when it accepts a job: a realistic
Job (chat spec of about 200 characters, sampling, seed, timestamps, idempotency key)
turned into a JobRow and inserted; the call returns once the row is committed. C
concurrent callers share N admissions. SQLite runs on a file in a temp dir; PostgreSQL
runs too when LLAMA_ORCH_TEST_PG_URL is set (in a throwaway schema).

Prints JSON and, with --write, updates the section of docs/BENCHMARKS.md between its
markers (creating it if missing). Not a test: no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import write_section  # noqa: E402

from google.protobuf import timestamp_pb2  # noqa: E402

from llama_orch.v1 import common_pb2  # noqa: E402
from orchestrator.store import JobRow, Store  # noqa: E402
from orchestrator.store.engine import make_engine  # noqa: E402

PG_ENV = "LLAMA_ORCH_TEST_PG_URL"
START, END = "<!-- admissions:start -->", "<!-- admissions:end -->"
SYSTEM = "You are a concise assistant. Answer in one short paragraph."
QUESTION = ("Explain why the sky looks blue at noon but red at sunset, and mention "
            "Rayleigh scattering by name. Request {i}.")


def make_job(i: int, now: float) -> common_pb2.Job:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(now * 1e9))
    spec = common_pb2.JobSpec(
        model="tiny", priority=common_pb2.PRIORITY_INTERACTIVE,
        chat=common_pb2.ChatMessages(messages=[
            common_pb2.ChatMessage(role="system", content=SYSTEM),
            common_pb2.ChatMessage(role="user", content=QUESTION.format(i=i))]),
        sampling=common_pb2.SamplingParams(temperature=0.7, top_p=0.95, seed=i, max_tokens=128),
        user="bench", labels={"bench": "admissions"})
    return common_pb2.Job(job_id=f"job-{uuid.uuid4().hex[:20]}", spec=spec,
                          status=common_pb2.JOB_STATUS_QUEUED, model_ref="file:/models/tiny",
                          seed=i, created_at=ts, updated_at=ts, last_seq=1,
                          correlation_id=uuid.uuid4().hex, idempotency_key=f"idem-{i}")


async def run(url: str, n: int, concurrency: int, *, schema: str | None = None) -> dict:
    store = await Store.open(url, schema=schema)
    counter = iter(range(n))
    latencies: list[float] = []

    async def caller() -> None:
        for i in counter:  # shared iterator: callers take the next admission
            t0 = time.perf_counter()
            row = JobRow.from_job(make_job(i, time.time()), queue_order=i, priority=0)
            await store.insert_job(row)
            latencies.append(time.perf_counter() - t0)

    try:
        commits0 = store.commits
        t0 = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
        commits = store.commits - commits0
        stored = sum((await store.count_by_status()).values())
    finally:
        await store.close()
    latencies.sort()
    q = statistics.quantiles(latencies, n=100)
    return {"n": n, "concurrency": concurrency, "stored": stored,
            "seconds": round(elapsed, 3), "admissions_per_s": round(n / elapsed),
            "commits": commits, "rows_per_commit": round(n / commits, 1),
            "latency_ms_p50": round(q[49] * 1000, 2), "latency_ms_p99": round(q[98] * 1000, 2),
            "job_bytes": len(make_job(0, 0).SerializeToString())}


async def measure(n: int, concurrency: int) -> dict:
    result: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                               f"Python {platform.python_version()}"}
    with tempfile.TemporaryDirectory() as tmp:
        result["sqlite"] = await run(f"sqlite+aiosqlite:///{tmp}/state.db", n, concurrency)
    pg_url = os.environ.get(PG_ENV)
    if pg_url:
        schema = "bench_" + uuid.uuid4().hex[:12]
        try:
            result["postgresql"] = await run(pg_url, n, concurrency, schema=schema)
        finally:
            engine = make_engine(pg_url)
            async with engine.begin() as conn:
                await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                result["postgresql"]["synchronous_commit"] = (
                    await conn.exec_driver_sql("SHOW synchronous_commit")).scalar()
            await engine.dispose()
    return result


def render(r: dict) -> str:
    pg = r.get("postgresql") or {}
    labels = {"sqlite": "SQLite (writes on the writer thread, WAL, synchronous=NORMAL)",
              "postgresql": "PostgreSQL (asyncpg, local, synchronous_commit="
                            f"{pg.get('synchronous_commit', '?')})"}
    rows = []
    for name, label in labels.items():
        d = r.get(name)
        rows.append(f"| {label} | **{d['admissions_per_s']:,}** | {d['rows_per_commit']} "
                    f"| {d['latency_ms_p50']} | {d['latency_ms_p99']} |" if d else
                    f"| {label} | not run ({PG_ENV} unset) | | | |")
    d = r["sqlite"]
    return f"""{START}
## Durable admissions (`Store.insert_job`, group commit)

`python bench/admissions.py --write` — {d['n']:,} jobs, {d['concurrency']} concurrent callers,
each call returning once its row is committed; realistic Job protos ({d['job_bytes']} bytes:
chat spec of ~200 characters, sampling, seed, idempotency key). {r['machine']},
{time.strftime('%Y-%m-%d')}. Target: ≥ 2,000 admissions/s on SQLite.

| database | admissions/s | rows per commit | latency p50 (ms) | latency p99 (ms) |
|---|---:|---:|---:|---:|
{chr(10).join(rows)}
{END}"""


def write(result: dict) -> None:
    write_section("admissions", render(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--write", action="store_true", help="update docs/BENCHMARKS.md")
    ns = parser.parse_args()
    result = asyncio.run(measure(ns.n, ns.concurrency))
    print(json.dumps(result, indent=2))
    if ns.write:
        write(result)


if __name__ == "__main__":
    main()
