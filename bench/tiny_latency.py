"""Time to first token and tokens/s for `tiny`: directly on the worker vs through the gateway.

Starts a real home-mode stack (`llama-orch up`) on free ports, warms the worker, then
runs the same requests (same prompt tokens, max_tokens, seeds) sequentially, first as
gRPC Execute calls on the worker itself, then as streamed chat completions through the
gateway (gateway -> orchestrator -> worker). Prints JSON and, with --write, updates
the section of docs/BENCHMARKS.md between its markers. Not a test: no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import write_section  # noqa: E402

from common.config import OrchestratorConfig  # noqa: E402
from llama_orch.v1 import client_pb2, client_pb2_grpc, common_pb2, worker_pb2, worker_pb2_grpc  # noqa: E402
from orchestrator.admission import admit  # noqa: E402
from orchestrator.catalog import Catalog  # noqa: E402
from tests.stack import Stack  # noqa: E402

MESSAGES = [{"role": "user", "content": "tell me a story about a fox"}]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def summary(ttft: list[float], rate: list[float]) -> dict:
    return {"ttft_ms_p50": round(pct(ttft, 50), 2), "ttft_ms_p95": round(pct(ttft, 95), 2),
            "tokens_per_s_mean": round(statistics.mean(rate), 1), "n": len(ttft)}


async def direct(endpoint: str, n: int, max_tokens: int) -> dict:
    spec = common_pb2.JobSpec(model="tiny", chat=common_pb2.ChatMessages(
        messages=[common_pb2.ChatMessage(**m) for m in MESSAGES]))
    a = admit(spec, Catalog.from_config({}), OrchestratorConfig())
    ttft, rate = [], []
    async with grpc.aio.insecure_channel(endpoint) as ch:
        stub = worker_pb2_grpc.WorkerServiceStub(ch)
        for i in range(n):
            sampling = common_pb2.SamplingParams(max_tokens=max_tokens, seed=i, temperature=1.0)
            t0 = time.perf_counter()
            first = last = None
            tokens = 0
            async for r in stub.Execute(worker_pb2.ExecuteRequest(
                    job_id=f"bench-{i}", prompt_token_ids=list(a.prompt_ids), sampling=sampling)):
                if r.WhichOneof("event") == "tokens":
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    tokens += len(r.tokens.token_ids)
            ttft.append((first - t0) * 1000)
            rate.append(tokens / (last - t0))
    return summary(ttft, rate)


async def gateway(base_url: str, n: int, max_tokens: int) -> dict:
    ttft, rate = [], []
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        for i in range(n):
            body = {"model": "tiny", "messages": MESSAGES, "stream": True, "max_tokens": max_tokens,
                    "seed": i, "temperature": 1.0, "stream_options": {"include_usage": True}}
            t0 = time.perf_counter()
            first = last = None
            tokens = 0
            async with http.stream("POST", "/v1/chat/completions", json=body) as resp:
                async for line in resp.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
                    if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        now = time.perf_counter()
                        first = first or now
                        last = now
            ttft.append((first - t0) * 1000)
            rate.append(tokens / (last - t0))
    return summary(ttft, rate)


async def measure(n: int, max_tokens: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp)).start()
        try:
            async with httpx.AsyncClient(base_url=stack.base_url, timeout=120) as http:
                t0 = time.perf_counter()
                await http.post("/v1/completions", json={"model": "tiny", "prompt": "the fox",
                                                         "max_tokens": 1})
                cold_ms = (time.perf_counter() - t0) * 1000
            async with grpc.aio.insecure_channel(stack.orchestrator) as ch:
                snap = await client_pb2_grpc.ClientServiceStub(ch).GetClusterSnapshot(
                    client_pb2.GetClusterSnapshotRequest())
            endpoint = snap.pools[0].workers[0].endpoint
            d = await direct(endpoint, n, max_tokens)
            g = await gateway(stack.base_url, n, max_tokens)
        finally:
            stack.stop()
    return {"direct": d, "gateway": g, "first_request_with_worker_start_ms": round(cold_ms),
            "added_ttft_ms_p50": round(g["ttft_ms_p50"] - d["ttft_ms_p50"], 2),
            "ttft_ratio_p50": round(g["ttft_ms_p50"] / d["ttft_ms_p50"], 2),
            "throughput_ratio": round(g["tokens_per_s_mean"] / d["tokens_per_s_mean"], 2),
            "max_tokens": max_tokens, "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}"}


def render(r: dict) -> str:
    d, g = r["direct"], r["gateway"]
    return f"""<!-- tiny-latency:start -->
## `tiny`: direct on the worker vs through the gateway

`python bench/tiny_latency.py --write` — one run, {d['n']} sequential requests per path,
{r['max_tokens']} new tokens each, same prompt and seeds, CPU worker (1 torch thread), {time.strftime('%Y-%m-%d')}.

| path | TTFT p50 (ms) | TTFT p95 (ms) | tokens/s (mean) |
|---|---:|---:|---:|
| worker Execute (gRPC, direct) | {d['ttft_ms_p50']} | {d['ttft_ms_p95']} | {d['tokens_per_s_mean']} |
| gateway → orchestrator → worker (SSE) | {g['ttft_ms_p50']} | {g['ttft_ms_p95']} | {g['tokens_per_s_mean']} |

Added time to first token (p50): **{r['added_ttft_ms_p50']} ms** (ratio {r['ttft_ratio_p50']}×);
throughput through the gateway is {r['throughput_ratio']}× the direct rate. The first request
after `up`, which starts the worker process, took {r['first_request_with_worker_start_ms']} ms.
<!-- tiny-latency:end -->"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=30)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--write", action="store_true", help="update docs/BENCHMARKS.md")
    ns = parser.parse_args()
    result = asyncio.run(measure(ns.n, ns.max_tokens))
    print(json.dumps(result, indent=2))
    if ns.write:
        write_section("tiny-latency", render(result))


if __name__ == "__main__":
    main()
