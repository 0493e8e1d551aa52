"""What one hop between two processes costs on this machine, before any of our code.

The gateway-overhead targets (issue 5) are budgets in milliseconds for work that crosses
processes: the gateway path adds, to calling the worker directly, one HTTP exchange,
one gRPC call (gateway -> orchestrator) and one more one-way message per token
(orchestrator -> gateway). This measures those hops bare, between a server process and
this one, with requests spaced like a streamed completion's (idle gaps between them):

- TCP round trip: asyncio streams, 40 bytes each way (the kernel and two wake-ups);
- gRPC (grpc.aio on both sides, as the stack uses it): a unary round trip, a new
  server-streaming call until its first message, a message round trip on an open
  bidirectional stream, and the one-way latency of a streamed message (sender's and
  receiver's time.perf_counter(), one clock on Linux).

    .venv/bin/python bench/transport_floor.py [--write] [--samples 200]

Not a test: no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import struct
import sys
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import write_section  # noqa: E402

GAP_S = 0.005  # idle time between samples, like the gaps between a stream's tokens
STREAM_GAP_S = 0.01


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def _serve(ports: mp.Queue, samples: int) -> None:
    async def main() -> None:
        async def unary(_req, _ctx):
            return b"ok"

        async def first(_req, _ctx):
            yield b"first"

        async def echo(requests, _ctx):
            async for m in requests:
                yield m

        async def timed(_req, _ctx):  # each message carries its send time
            for _ in range(samples):
                await asyncio.sleep(STREAM_GAP_S)
                yield struct.pack("d", time.perf_counter())

        handler = grpc.method_handlers_generic_handler("floor.F", {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "First": grpc.unary_stream_rpc_method_handler(first),
            "Echo": grpc.stream_stream_rpc_method_handler(echo),
            "Timed": grpc.unary_stream_rpc_method_handler(timed)})
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        grpc_port = server.add_insecure_port("127.0.0.1:0")
        await server.start()

        async def tcp_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(100):
                writer.write(data)
        tcp = await asyncio.start_server(tcp_echo, "127.0.0.1", 0)
        ports.put((grpc_port, tcp.sockets[0].getsockname()[1]))
        await server.wait_for_termination()
    asyncio.run(main())


async def _timed_loop(samples: int, once) -> list[float]:
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        await once()
        out.append((time.perf_counter() - t0) * 1000)
        await asyncio.sleep(GAP_S)
    return out


async def measure(samples: int) -> dict:
    ports: mp.Queue = mp.Queue()
    server = mp.Process(target=_serve, args=(ports, samples), daemon=True)
    server.start()
    try:
        grpc_port, tcp_port = ports.get(timeout=60)
        reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port)

        async def tcp_once() -> None:
            writer.write(b"x" * 40)
            await reader.readexactly(40)
        await tcp_once()
        rows = {"TCP round trip": await _timed_loop(samples, tcp_once)}
        writer.close()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
            unary = ch.unary_unary("/floor.F/Unary")
            first = ch.unary_stream("/floor.F/First")
            await unary(b"")
            rows["gRPC unary round trip"] = await _timed_loop(samples, lambda: unary(b""))

            async def first_once() -> None:
                async for _ in first(b""):
                    break
            rows["gRPC new stream, call -> first message"] = await _timed_loop(samples, first_once)
            echo = ch.stream_stream("/floor.F/Echo")()

            async def echo_once() -> None:
                await echo.write(b"x" * 40)
                await echo.read()
            await echo_once()
            rows["gRPC message round trip on an open stream"] = await _timed_loop(samples, echo_once)
            await echo.done_writing()
            one_way = []
            async for m in ch.unary_stream("/floor.F/Timed")(b""):
                one_way.append((time.perf_counter() - struct.unpack("d", m)[0]) * 1000)
            rows["gRPC streamed message, one way"] = one_way
    finally:
        server.kill()
    return {"rows": {k: {"p50": round(pct(v, 50), 3), "p90": round(pct(v, 90), 3),
                         "p99": round(pct(v, 99), 3), "n": len(v)} for k, v in rows.items()},
            "date": time.strftime("%Y-%m-%d"), "grpc": grpc.__version__}


def render(r: dict) -> str:
    table = "\n".join(f"| {name} | {x['p50']} | {x['p90']} | {x['p99']} |"
                      for name, x in r["rows"].items())
    rows = r["rows"]
    call = rows["gRPC new stream, call -> first message"]["p50"]
    one_way = rows["gRPC streamed message, one way"]["p50"]
    return f"""<!-- transport-floor:start -->
## What one hop costs on this machine, before our code (`bench/transport_floor.py`)

`python bench/transport_floor.py --write` — one run, {r['date']}, grpcio {r['grpc']}. Two
processes on the 2-core machine, nothing else running; samples spaced like a stream's
tokens ({GAP_S * 1000:.0f} ms idle between requests, {STREAM_GAP_S * 1000:.0f} ms between streamed
messages). Times in ms.

| hop | p50 | p90 | p99 |
|---|---:|---:|---:|
{table}

Against the gateway-overhead budget (added time to first token p50 <= 2 ms): the
gateway path makes one more gRPC call than calling the worker directly (gateway ->
orchestrator, {call} ms to its first message here) and relays the first token one more
time ({one_way} ms one way), before any HTTP, admission or scheduling work. A round
trip on an open stream costs about half a new call's. That alone does not make a
multiplexed stream faster end to end: one stream per worker for all its jobs was tried
(2026-11-29) and time to first token and CPU per token did not change measurably at
concurrency 1, 16 or 64, because each event then took one more task hand-off on each
side than the call it replaced.
<!-- transport-floor:end -->"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--samples", type=int, default=200)
    ns = ap.parse_args()
    r = asyncio.run(measure(ns.samples))
    for name, x in r["rows"].items():
        print(f"{name:45s} p50 {x['p50']:7.3f}  p90 {x['p90']:7.3f}  p99 {x['p99']:7.3f} ms")
    if ns.write:
        write_section("transport-floor", render(r))


if __name__ == "__main__":
    main()
