"""What the gateway and orchestrator add, on the `sim` engine, at concurrency 1, 16 and 64.

Starts a real home-mode stack whose model `simfast` runs on the sim engine (fixed
time-to-first-token and inter-token latency, no spread, enough slots for every
concurrent request, no slowdown under load), so whatever differs between the two
paths is ours. In the same run, for each concurrency, the same number of streamed
requests go (a) straight to the worker's Execute over gRPC and (b) through the gateway
as OpenAI streamed chat completions (gateway -> orchestrator -> worker), and (c) to the
orchestrator's Generate over gRPC (orchestrator -> worker, no gateway), which splits
what is added between the orchestrator and the gateway. Reported: time to first
token and inter-token latency percentiles per path, the differences, and requests/s
and tokens/s through the gateway. Not a test: no assertions.

    .venv/bin/python bench/gateway_overhead.py [--write] [--requests-per-client N]
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

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import write_section  # noqa: E402
from llama_orch.v1 import client_pb2, client_pb2_grpc, common_pb2, worker_pb2, worker_pb2_grpc  # noqa: E402
from tests.stack import Stack, sim_model as stack_sim_model  # noqa: E402

SIM = {"ttft_ms": 20, "ttft_spread_ms": 0, "itl_ms": 10, "itl_spread_ms": 0,
       "prefill_us_per_token": 0, "slots": 128, "load_slowdown": 0}
MAX_TOKENS = 32
CONCURRENCY = (1, 16, 64)
# Requests per path at each concurrency: enough that p99 is not one of a handful of
# samples (at 1, eight requests made "p99" their worst), few enough for ~2 minutes.
REQUESTS = {1: 64, 16: 512, 64: 512}
MESSAGES = [{"role": "user", "content": "tell me a story about a fox"}]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))] if s else float("nan")


def sim_model(root: Path) -> Path:
    return stack_sim_model(root / "simfast", SIM)


class Sample:
    def __init__(self) -> None:
        self.ttft: list[float] = []
        self.itl: list[float] = []
        self.tokens = 0
        self.reference_us: tuple[float, ...] = ()  # the machine's speed (_with_cpu)

    def arrived(self, t0: float, last: float | None) -> float:
        """Tokens arrived now for a request sent at t0 whose previous tokens came at
        `last` (None: these are its first): record the gap; returns now."""
        now = time.perf_counter()
        if last is None:
            self.ttft.append((now - t0) * 1000)
        else:
            self.itl.append((now - last) * 1000)
        return now


async def _direct_one(stub, i: int, out: Sample) -> None:
    t0 = time.perf_counter()
    last = None
    async for r in stub.Execute(worker_pb2.ExecuteRequest(
            job_id=f"direct-{i}", prompt_token_ids=[5, 6, 7, 8],
            sampling=common_pb2.SamplingParams(max_tokens=MAX_TOKENS, seed=i, temperature=1.0))):
        if r.WhichOneof("event") == "tokens" and r.tokens.token_ids:
            last = out.arrived(t0, last)
            out.tokens += len(r.tokens.token_ids)


async def _orchestrator_one(stub, i: int, out: Sample) -> None:
    """The same chat request as _gateway_one, as the gateway sends it (coalesced)."""
    spec = common_pb2.JobSpec(
        model="simfast", chat=common_pb2.ChatMessages(messages=[
            common_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in MESSAGES]),
        sampling=common_pb2.SamplingParams(max_tokens=MAX_TOKENS, seed=i, temperature=1.0))
    t0 = time.perf_counter()
    last = None
    async for r in stub.Generate(client_pb2.GenerateRequest(spec=spec, coalesce=True)):
        if r.event.WhichOneof("kind") == "tokens" and r.event.tokens.token_ids:
            last = out.arrived(t0, last)
            out.tokens += len(r.event.tokens.token_ids)


class SSEClient:
    """A minimal HTTP/1.1 keep-alive client for streamed completions: one connection,
    one request at a time, chunked SSE read line by line.

    Why not httpx: on these 2 shared cores the client's own work weighs on what is
    measured, and httpx spends ~100 us per token more than the gRPC client of the
    direct path does. This one costs about what that gRPC client costs."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post_stream(self, path: str, body: dict):
        """Yield each `data:` payload (str) of the response, [DONE] excluded."""
        raw = json.dumps(body).encode()
        request = (f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\ncontent-type: "
                   f"application/json\r\ncontent-length: {len(raw)}\r\n\r\n").encode() + raw
        for attempt in (1, 2):
            fresh = self.writer is None
            if fresh:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            self.writer.write(request)
            try:
                head = await self.reader.readuntil(b"\r\n\r\n")
                break
            except (asyncio.IncompleteReadError, ConnectionError):
                # The server closed an idle keep-alive connection: once more on a new one.
                self.writer.close()
                self.writer = None
                if fresh:
                    raise
        status = int(head.split(b" ", 2)[1])
        if status != 200 or b"chunked" not in head.lower():
            raise RuntimeError(f"gateway answered {head[:200]!r}")
        pending = b""
        while True:
            size = int((await self.reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
            chunk = await self.reader.readexactly(size + 2)
            if size == 0:
                return
            pending += chunk[:-2]
            while b"\n\n" in pending:
                event, pending = pending.split(b"\n\n", 1)
                for line in event.split(b"\n"):
                    if line.startswith(b"data: ") and line != b"data: [DONE]":
                        yield line[6:].decode()

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def _gateway_one(http: SSEClient, i: int, out: Sample) -> None:
    body = {"model": "simfast", "messages": MESSAGES, "stream": True, "max_tokens": MAX_TOKENS,
            "seed": i, "temperature": 1.0, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    last = None
    async for payload in http.post_stream("/v1/chat/completions", body):
        chunk = json.loads(payload)
        if chunk.get("usage"):
            out.tokens += chunk["usage"]["completion_tokens"]
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            last = out.arrived(t0, last)


async def _run(concurrency: int, per_client: int, one, conns=None) -> tuple[Sample, float]:
    """`one(i, out)` or, with `conns` (one per client), `one(conn, i, out)`."""
    out = Sample()
    counter = iter(range(concurrency * per_client))

    async def client(k: int) -> None:
        for i in counter:
            await (one(conns[k], i, out) if conns is not None else one(i, out))
    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(concurrency)))
    return out, time.perf_counter() - t0


_TICK = os.sysconf("SC_CLK_TCK")
COMPONENTS = ("gateway", "orchestrator", "pool_manager", "worker")


def _processes(root: Path) -> dict[str, int]:
    """pid of each of the stack's daemons (their command lines name `root`) and of this
    benchmark (the clients)."""
    pids = {"clients": os.getpid()}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not any(str(root).encode() in a for a in args):
            continue
        for name in COMPONENTS:
            if f"{name}".encode() in args and b"-m" in args:
                pids[name] = int(entry.name)
    return pids


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _reference_us() -> float:
    """How fast this machine runs Python right now: the best of 20 timings of a fixed
    loop, in microseconds. The shared 2-core machine's speed drifts by tens of percent
    within seconds; each path's numbers come with the speed they were measured at."""
    best = float("inf")
    for _ in range(20):
        t0 = time.perf_counter()
        for _ in range(50):
            sum(range(1000))
        best = min(best, (time.perf_counter() - t0) / 50 * 1e6)
    return round(best, 1)


ROUNDS = 4  # blocks per path per concurrency, taking turns (see take_turns)
MIN_BLOCK = 8  # requests per client in a block, at least (fewer are one block)


async def take_turns(concurrency: int, per_client: int, paths: dict, pids: dict[str, int]
                     ) -> dict[str, tuple[Sample, float, dict[str, float]]]:
    """Send `per_client` requests per client down each of `paths` ({name: (one, conns)},
    as _run takes them), the paths taking turns in ROUNDS blocks each. Returns, per
    path, its sample, its seconds and each process's CPU microseconds per token; every
    sample carries the machine's speed before and after the whole (`reference_us`).

    Why turns: the shared machine's speed drifts by tens of percent within seconds,
    and one path measured after another compared two different machines. Why blocks
    and not single requests: each block starts all clients at once, and a block long
    enough (MIN_BLOCK) lets them fall out of step as a steady load does."""
    speed = _reference_us()
    block = max(min(per_client, MIN_BLOCK), per_client // ROUNDS)
    merged = {path: Sample() for path in paths}
    seconds = dict.fromkeys(paths, 0.0)
    cpu_s = {path: dict.fromkeys(pids, 0.0) for path in paths}
    for _ in range(max(1, per_client // block)):
        for path, (one, conns) in paths.items():
            before = {n: _cpu_seconds(p) for n, p in pids.items()}
            sample, took = await _run(concurrency, block, one, conns)
            for n, p in pids.items():
                cpu_s[path][n] += _cpu_seconds(p) - before[n]
            seconds[path] += took
            into = merged[path]
            into.ttft += sample.ttft
            into.itl += sample.itl
            into.tokens += sample.tokens
    speeds = (speed, _reference_us())
    out = {}
    for path, sample in merged.items():
        sample.reference_us = speeds
        cpu = {n: round(v / max(1, sample.tokens) * 1e6) for n, v in cpu_s[path].items()}
        out[path] = (sample, seconds[path], cpu)
    return out


def _added(prefix: str, path: dict, direct: dict) -> dict:
    """What `path` adds to the direct path, per percentile."""
    return {f"{prefix}added_{k}": round(path[k] - direct[k], 2)
            for k in ("ttft_p50", "ttft_p99", "itl_p50", "itl_p99")}


def _stats(s: Sample, seconds: float) -> dict:
    return {"reference_us": list(s.reference_us),
            "ttft_p50": round(pct(s.ttft, 50), 2), "ttft_p99": round(pct(s.ttft, 99), 2),
            "itl_p50": round(pct(s.itl, 50), 2), "itl_p99": round(pct(s.itl, 99), 2),
            "req_per_s": round(len(s.ttft) / seconds, 1), "tok_per_s": round(s.tokens / seconds),
            "n": len(s.ttft)}


async def measure(per_client: int | None = None) -> dict:
    """`per_client`: requests per client at every concurrency (default: REQUESTS)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = sim_model(root)
        stack = Stack(root, extra_config=f'[models.simfast]\nref = "file:{model}"\nengine = "sim"\n')
        stack.start()
        try:
            host, port = stack.base_url.rsplit("/", 1)[1].split(":")
            conns = [SSEClient(host, int(port)) for _ in range(max(CONCURRENCY))]
            try:
                await _gateway_one(conns[0], 0, Sample())  # starts the worker
                results = {}
                pids = _processes(root)
                async with grpc.aio.insecure_channel(stack.orchestrator) as ch:
                    orch = client_pb2_grpc.ClientServiceStub(ch)
                    snap = await orch.GetClusterSnapshot(client_pb2.GetClusterSnapshotRequest())
                    endpoint = next(w.endpoint for p in snap.pools for w in p.workers)
                    async with grpc.aio.insecure_channel(endpoint) as wch:
                        stub = worker_pb2_grpc.WorkerServiceStub(wch)
                        for c in CONCURRENCY:
                            n = per_client or max(1, REQUESTS.get(c, 8 * c) // c)
                            await _run(c, 1, _gateway_one, conns)  # warm
                            await _run(c, 1, lambda i, o: _orchestrator_one(orch, i, o))
                            runs = await take_turns(c, n, {
                                "direct": (lambda i, o: _direct_one(stub, i, o), None),
                                "orchestrator": (lambda i, o: _orchestrator_one(orch, i, o), None),
                                "gateway": (_gateway_one, conns)}, pids)
                            (*ds, d_cpu), (*os_, _), (*gs, g_cpu) = runs.values()
                            d, o, g = _stats(*ds), _stats(*os_), _stats(*gs)
                            results[c] = {"direct": d, "orchestrator": o, "gateway": g,
                                          "cpu_us_per_token": {"direct": d_cpu, "gateway": g_cpu},
                                          **_added("", g, d), **_added("orchestrator_", o, d)}
                            print(json.dumps({c: results[c]}), flush=True)
            finally:
                for conn in conns:
                    await conn.close()
        finally:
            stack.stop()
    return {"by_concurrency": results, "date": time.strftime("%Y-%m-%d")}


def render(r: dict) -> str:
    requests = " / ".join(str(x["gateway"]["n"]) for x in r["by_concurrency"].values())
    levels = " / ".join(str(c) for c in r["by_concurrency"])
    rows = []
    for c, x in r["by_concurrency"].items():
        d, g = x["direct"], x["gateway"]
        rows.append(f"| {c} | {d['ttft_p50']} / {d['ttft_p99']} | {g['ttft_p50']} / {g['ttft_p99']} | "
                    f"**{x['added_ttft_p50']}** / {x['added_ttft_p99']} | "
                    f"{d['itl_p50']} / {d['itl_p99']} | {g['itl_p50']} / {g['itl_p99']} | "
                    f"{x['added_itl_p99']} | {g['req_per_s']} | {g['tok_per_s']} |")
    table = "\n".join(rows)
    split_rows = []
    for c, x in r["by_concurrency"].items():
        if "orchestrator" not in x:
            continue
        o = x["orchestrator"]
        split_rows.append(
            f"| {c} | {o['ttft_p50']} / {o['ttft_p99']} | {x['orchestrator_added_ttft_p50']} / "
            f"{x['orchestrator_added_ttft_p99']} | "
            f"{round(x['added_ttft_p50'] - x['orchestrator_added_ttft_p50'], 2)} | "
            f"{o['itl_p50']} / {o['itl_p99']} | {x['orchestrator_added_itl_p99']} |")
    split = "\n".join(split_rows)
    speed = "\n".join(
        f"| {c} | " + " | ".join(" / ".join(str(v) for v in x.get(path, {}).get("reference_us", []))
                                 or "-" for path in ("direct", "orchestrator", "gateway")) + " |"
        for c, x in r["by_concurrency"].items())
    cpu_rows = []
    for c, x in r["by_concurrency"].items():
        cpu = x.get("cpu_us_per_token")
        if cpu:
            d, g = cpu["direct"], cpu["gateway"]
            tok_s = x["gateway"]["tok_per_s"]
            busy = {n: f"{g[n] * tok_s / 1e4:.0f}%" for n in ("gateway", "orchestrator") if n in g}
            cpu_rows.append(f"| {c} | {d.get('worker', '-')} | {d.get('clients', '-')} | "
                            f"{g.get('gateway', '-')} | {g.get('orchestrator', '-')} | "
                            f"{g.get('worker', '-')} | {g.get('pool_manager', '-')} | "
                            f"{g.get('clients', '-')} | {busy.get('gateway', '-')} / "
                            f"{busy.get('orchestrator', '-')} |")
    cpu_table = "\n".join(cpu_rows)
    return f"""<!-- gateway-overhead:start -->
## What the gateway and orchestrator add (`sim` engine)

`python bench/gateway_overhead.py --write` — one run, {r['date']}. Sim worker with a fixed
{SIM['ttft_ms']} ms time to first token and {SIM['itl_ms']} ms between tokens (no spread, no
slowdown, {SIM['slots']} slots), {MAX_TOKENS} tokens per request; {requests} requests per
path at concurrency {levels}, the three paths taking turns in blocks (up to {ROUNDS} each)
so the machine's drifting speed weighs on them alike. "direct" is the worker's Execute
over gRPC;
"gateway" is an OpenAI streamed chat completion through gateway -> orchestrator ->
worker, read by a minimal keep-alive SSE client (httpx costs ~100 us per token more
than the gRPC client of the direct path, on the same cores). Everything (clients,
gateway, orchestrator, pool manager, worker) shares the machine's 2 cores. Times in ms,
p50 / p99.

| concurrency | direct TTFT | gateway TTFT | added TTFT | direct ITL | gateway ITL | added ITL p99 | gateway req/s | gateway tok/s |
|---:|---|---|---|---|---|---:|---:|---:|
{table}

Where the added time goes: the same requests sent to the orchestrator's Generate over
gRPC (what the gateway sends, coalesced), without the gateway, in the same run. "the
gateway's share" is the gateway path's added TTFT p50 minus the orchestrator path's.

| concurrency | orchestrator TTFT | added by the orchestrator (TTFT) | the gateway's share (TTFT p50) | orchestrator ITL | added ITL p99 |
|---:|---|---|---:|---|---:|
{split}

The machine's speed while each path ran (microseconds for a fixed Python loop, before /
after the path's requests; lower is faster). This shared machine's speed drifts by
tens of percent within seconds, so compare paths measured at similar speeds.

| concurrency | direct | orchestrator | gateway |
|---:|---|---|---|
{speed}

CPU per streamed token, in microseconds, by process (user + system time over the
run, divided by the tokens it delivered; per-request work is included, spread over
{MAX_TOKENS} tokens, and at concurrency 1 so is everything a process does while
idle). "busy" is the share of one core the gateway and the orchestrator used: each
serves every stream from one Python event loop, so the busier it is, the longer a
new request's first token waits behind other streams' tokens.

| concurrency | direct: worker | direct: client | gateway | orchestrator | worker | pool manager | client | busy: gateway / orchestrator |
|---:|---:|---:|---:|---:|---:|---:|---:|---:|
{cpu_table}

Targets (issue 5): added TTFT p50 <= 2 ms and p99 <= 10 ms at concurrency 16; added
inter-token p99 <= 5 ms. The floor under these numbers, the same processes and
transports with none of our code in them, is `bench/bare_chain.py` (its own section).
<!-- gateway-overhead:end -->"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--requests-per-client", type=int, default=None,
                    help="the same at every concurrency (default: REQUESTS, per concurrency)")
    ns = ap.parse_args()
    r = asyncio.run(measure(ns.requests_per_client))
    if ns.write:
        write_section("gateway-overhead", render(r))


if __name__ == "__main__":
    main()
