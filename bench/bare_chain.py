"""The gateway path's hops with nothing in them: what they add on this machine under load.

bench/gateway_overhead.py measures what the real gateway and orchestrator add to
calling the worker directly; bench/transport_floor.py what one idle hop costs. This
one answers the question between them: with the architecture's processes and
transports (HTTP/1.1 SSE on uvicorn -> gRPC relay -> gRPC worker) but none of our
code — no admission, queue, store, scheduler or OpenAI mapping — what does the chain
add at concurrency 1, 16 and 64 on these cores? Each process is as bare as the
transport allows:

- worker: a grpc.aio server streaming `MAX_TOKENS` 32-byte messages, the first after
  `TTFT_S`, then one every `ITL_S` (the sim timing gateway_overhead uses);
- relay: a grpc.aio server whose handler opens a call to the worker and yields each
  message it reads (the orchestrator's place);
- http: uvicorn (h11, as the gateway runs it) with a raw ASGI app that opens a call
  to the relay and writes each message as one SSE event (the gateway's place).

Paths, in the same run: "direct" (client -> worker over gRPC), "relay" (client ->
relay -> worker) and "chain" (SSE client -> http -> relay -> worker). If the bare
chain already adds more than a budget, no implementation of the real components in
these processes can meet it on this machine.

    .venv/bin/python bench/bare_chain.py [--write] [--requests-per-client N]

Not a test: no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gateway_overhead import (  # noqa: E402
    CONCURRENCY, MAX_TOKENS, REQUESTS, ROUNDS, SSEClient, Sample, _run, pct, take_turns)
from bench.report import write_section  # noqa: E402

TTFT_S, ITL_S = 0.020, 0.010
PAYLOAD = b"t" * 32
EXECUTE, GENERATE = "/bare.Worker/Execute", "/bare.Relay/Generate"


async def _serve(path: str, handler, ports: mp.Queue) -> None:
    """Serve the server-streaming `handler` at `path` ("/service/Method") on a free port,
    put that port on `ports`, and run until killed."""
    service, method = path.strip("/").split("/")
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {
        method: grpc.unary_stream_rpc_method_handler(handler)}),))
    ports.put(server.add_insecure_port("127.0.0.1:0"))
    await server.start()
    await server.wait_for_termination()


def _worker(ports: mp.Queue) -> None:
    async def execute(_req, _ctx):
        await asyncio.sleep(TTFT_S)
        for i in range(MAX_TOKENS):
            if i:
                await asyncio.sleep(ITL_S)
            yield PAYLOAD
    asyncio.run(_serve(EXECUTE, execute, ports))


def _relay(worker_port: int, ports: mp.Queue) -> None:
    async def main() -> None:
        execute = grpc.aio.insecure_channel(f"127.0.0.1:{worker_port}").unary_stream(EXECUTE)

        async def generate(req, _ctx):
            async for m in execute(req):
                yield m
        await _serve(GENERATE, generate, ports)
    asyncio.run(main())


def _http(relay_port: int, ports: mp.Queue) -> None:
    import socket

    import uvicorn

    state: dict = {}

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] == "lifespan.startup":
                channel = grpc.aio.insecure_channel(f"127.0.0.1:{relay_port}")
                state["generate"] = channel.unary_stream(GENERATE)
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        async for m in state["generate"](body):
            await send({"type": "http.response.body", "body": b"data: " + m + b"\n\n",
                        "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    ports.put(sock.getsockname()[1])
    config = uvicorn.Config(app, http="h11", log_config=None, access_log=False, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])


async def _grpc_one(call, i: int, out: Sample) -> None:
    t0 = time.perf_counter()
    last = None
    async for _ in call(str(i).encode()):
        last = out.arrived(t0, last)
        out.tokens += 1


async def _sse_one(http: SSEClient, i: int, out: Sample) -> None:
    t0 = time.perf_counter()
    last = None
    async for _ in http.post_stream("/", {"i": i}):
        last = out.arrived(t0, last)
        out.tokens += 1


def _stats(s: Sample) -> dict:
    return {"ttft_p50": round(pct(s.ttft, 50), 2), "ttft_p99": round(pct(s.ttft, 99), 2),
            "itl_p99": round(pct(s.itl, 99), 2), "n": len(s.ttft)}


async def measure(per_client: int | None = None) -> dict:
    ctx = mp.get_context("spawn")
    ports: mp.Queue = ctx.Queue()
    procs = {}
    try:
        procs["worker"] = ctx.Process(target=_worker, args=(ports,), daemon=True)
        procs["worker"].start()
        worker_port = ports.get(timeout=60)
        procs["relay"] = ctx.Process(target=_relay, args=(worker_port, ports), daemon=True)
        procs["relay"].start()
        relay_port = ports.get(timeout=60)
        procs["http"] = ctx.Process(target=_http, args=(relay_port, ports), daemon=True)
        procs["http"].start()
        http_port = ports.get(timeout=60)
        pids = {"clients": mp.current_process().pid, **{n: p.pid for n, p in procs.items()}}
        conns = [SSEClient("127.0.0.1", http_port) for _ in range(max(CONCURRENCY))]
        results = {}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{worker_port}") as wch, \
                grpc.aio.insecure_channel(f"127.0.0.1:{relay_port}") as rch:
            execute, generate = wch.unary_stream(EXECUTE), rch.unary_stream(GENERATE)
            for _ in range(60):  # uvicorn takes a moment after binding
                try:
                    await _sse_one(conns[0], 0, Sample())
                    break
                except OSError:
                    await asyncio.sleep(0.5)
            for c in CONCURRENCY:
                n = per_client or max(1, REQUESTS.get(c, 8 * c) // c)
                await _run(c, 1, _sse_one, conns)  # warm every connection
                runs = await take_turns(c, n, {
                    "direct": (lambda i, o: _grpc_one(execute, i, o), None),
                    "relay": (lambda i, o: _grpc_one(generate, i, o), None),
                    "chain": (_sse_one, conns)}, pids)
                row = {path: {**_stats(s), "req_per_s": round(len(s.ttft) / took, 1)}
                       for path, (s, took, _) in runs.items()}
                cpu = {path: cpu for path, (_, _, cpu) in runs.items()}
                d = row["direct"]
                for path in ("relay", "chain"):
                    row[path]["added_ttft_p50"] = round(row[path]["ttft_p50"] - d["ttft_p50"], 2)
                    row[path]["added_ttft_p99"] = round(row[path]["ttft_p99"] - d["ttft_p99"], 2)
                    row[path]["added_itl_p99"] = round(row[path]["itl_p99"] - d["itl_p99"], 2)
                results[c] = {**row, "cpu_us_per_token": cpu}
                print(json.dumps({c: results[c]}), flush=True)
        for conn in conns:
            await conn.close()
    finally:
        for p in procs.values():
            p.kill()
    return {"by_concurrency": results, "date": time.strftime("%Y-%m-%d"),
            "grpc": grpc.__version__}


def render(r: dict) -> str:
    rows, cpu_rows = [], []
    for c, x in r["by_concurrency"].items():
        d, rl, ch = x["direct"], x["relay"], x["chain"]
        rows.append(f"| {c} | {d['ttft_p50']} / {d['ttft_p99']} | "
                    f"{rl['added_ttft_p50']} / {rl['added_ttft_p99']} | "
                    f"**{ch['added_ttft_p50']}** / {ch['added_ttft_p99']} | "
                    f"{d['itl_p99']} | {rl['added_itl_p99']} | {ch['added_itl_p99']} | "
                    f"{ch['req_per_s']} |")
        cc = x["cpu_us_per_token"]["chain"]
        cpu_rows.append(f"| {c} | {cc['http']} | {cc['relay']} | {cc['worker']} | "
                        f"{cc['clients']} | {sum(cc.values())} |")
    n = " / ".join(str(x["chain"]["n"]) for x in r["by_concurrency"].values())
    return f"""<!-- bare-chain:start -->
## The gateway path's hops with nothing in them (`bench/bare_chain.py`)

`python bench/bare_chain.py --write` — one run, {r['date']}, grpcio {r['grpc']}. The
architecture's processes and transports with none of our code: a bare grpc.aio
"worker" ({TTFT_S * 1000:.0f} ms to the first of {MAX_TOKENS} messages, then one every
{ITL_S * 1000:.0f} ms, as in the gateway-overhead run), a bare gRPC "relay" in the
orchestrator's place (each message it reads from a new call to the worker, yielded on),
and uvicorn (h11) with a raw ASGI app in the gateway's place (each message one SSE
event). "relay" and "chain" are what going through the relay, and through uvicorn and
the relay, add to calling the worker directly; {n} requests per path, sent in {ROUNDS}
blocks per path taking turns (so the machine's drifting speed weighs on the three
paths alike); all four processes share the machine's 2 cores. Times in ms, p50 / p99.

| concurrency | direct TTFT | relay: added TTFT | chain: added TTFT | direct ITL p99 | relay: added ITL p99 | chain: added ITL p99 | chain req/s |
|---:|---|---|---|---:|---:|---:|---:|
{chr(10).join(rows)}

CPU per streamed token on the chain path, in microseconds, by process (user + system
over the run, divided by the tokens delivered):

| concurrency | http (uvicorn) | relay | worker | client | all |
|---:|---:|---:|---:|---:|---:|
{chr(10).join(cpu_rows)}

Read against the gateway-overhead targets (added TTFT p50 <= 2 ms, p99 <= 10 ms at
concurrency 16): the "chain" column is what the hops alone add here, with every
process doing the least its transport lets it. What the real gateway and
orchestrator add beyond it is their own work.
<!-- bare-chain:end -->"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--requests-per-client", type=int, default=None)
    ns = ap.parse_args()
    r = asyncio.run(measure(ns.requests_per_client))
    if ns.write:
        write_section("bare-chain", render(r))


if __name__ == "__main__":
    main()
