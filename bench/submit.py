"""Durable admissions per second through Orchestrator.submit (validation, alias
resolution, chat template, tokenisation, store commit), not just the store.

In-process orchestrator, no pools (jobs stay queued), 64 concurrent callers, on
SQLite and, when LLAMA_ORCH_TEST_PG_URL is set, PostgreSQL. With --write, updates the
section between <!-- submit:start --> and <!-- submit:end --> in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import write_section  # noqa: E402

from common.config import Config  # noqa: E402
from llama_orch.v1 import common_pb2 as C  # noqa: E402
from orchestrator.core import Orchestrator  # noqa: E402
from orchestrator.facts import FactBus  # noqa: E402
from orchestrator.store import Store  # noqa: E402


async def run(url: str, n: int, concurrency: int, schema: str | None = None) -> dict:
    store = await Store.open(url, schema=schema) if schema else await Store.open(url)
    orch = Orchestrator(Config(), store=store, facts=FactBus(echo=False))
    await orch.start()
    spec = C.JobSpec(model="tiny", chat=C.ChatMessages(messages=[C.ChatMessage(
        role="user", content="Tell me the story of the fox and the grapes, and its moral.")]),
        sampling=C.SamplingParams(max_tokens=64), priority=C.PRIORITY_BATCH)
    latencies: list[float] = []
    todo = iter(range(n))

    async def caller() -> None:
        for _ in todo:
            t0 = time.perf_counter()
            await orch.submit(spec)
            latencies.append((time.perf_counter() - t0) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    seconds = time.perf_counter() - t0
    await orch.stop()
    await store.close()
    latencies.sort()
    return {"n": n, "concurrency": concurrency, "admissions_per_s": round(n / seconds),
            "latency_ms_p50": round(latencies[n // 2], 2),
            "latency_ms_p99": round(latencies[int(n * 0.99)], 2)}


def render(r: dict) -> str:
    rows = "\n".join(f"| {db} | {v['admissions_per_s']} | {v['latency_ms_p50']} | {v['latency_ms_p99']} |"
                     for db, v in r.items())
    return f"""<!-- submit:start -->
## Durable admissions through `Orchestrator.submit`

`python bench/submit.py --write` — one run, {next(iter(r.values()))['n']} chat jobs, 64 concurrent
callers, in-process orchestrator (validation, template, tokenisation, commit), {time.strftime('%Y-%m-%d')}.
Target: ≥ 2,000/s on SQLite.

| database | admissions/s | p50 ms | p99 ms |
|---|---:|---:|---:|
{rows}
<!-- submit:end -->"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("--write", action="store_true")
    ns = parser.parse_args()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        out["SQLite (WAL)"] = asyncio.run(run(f"sqlite+aiosqlite:///{tmp}/state.db", ns.n, 64))
    pg = os.environ.get("LLAMA_ORCH_TEST_PG_URL")
    if pg:
        out["PostgreSQL 15 (local)"] = asyncio.run(run(pg, ns.n, 64, schema=f"bench_{os.getpid()}"))
    print(json.dumps(out, indent=2))
    if ns.write:
        write_section("submit", render(out))


if __name__ == "__main__":
    main()
