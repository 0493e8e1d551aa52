"""What mTLS costs, on the `sim` engine: time to first token, throughput and CPU with
`security.tls` on versus off, in the same run.

Two lab-mode stacks run side by side on loopback, identical but for `security.tls`
(auth off in both, so only TLS differs; audit at lab mode's default in both, so the
mTLS orchestrator serves through its audited TLS gate, common/tls_gate.py): each an
orchestrator and a pool manager, the mTLS one joined with a join token, both serving
the model `simfast` on the sim engine (fixed time to first token and inter-token
latency, no spread, no slowdown, a slot for every concurrent request). Streamed
Generate calls through ClientService (one long-lived channel per stack, as the gateway
keeps) at concurrency 1 and 16, plus, at concurrency 1, a fresh channel per request
(a TLS handshake each time, as a short-lived script pays). Rounds alternate which
stack goes first, so drifting load on the shared machine hits both alike; same seeds,
so the same tokens. Reported per stack: TTFT p50/p99 (client side), requests/s,
tokens/s, and the CPU the stack's processes (orchestrator, pool manager, workers) used
per request, net of what each uses idle. Not a test: no assertions.

    .venv/bin/python bench/mtls.py [--write] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import write_section  # noqa: E402
from common import pki  # noqa: E402
from llama_orch.v1 import client_pb2, client_pb2_grpc, common_pb2 as C  # noqa: E402
from tests.stack import free_port, sim_model  # noqa: E402

SIM = {"ttft_ms": 20, "ttft_spread_ms": 0, "itl_ms": 10, "itl_spread_ms": 0,
       "prefill_us_per_token": 0, "slots": 128, "load_slowdown": 0}
MAX_TOKENS = 32
PROMPT = "Tell me a story about a fox who learned to read."
# (label, concurrency, requests per round, fresh channel per request)
PLAN = [("1", 1, 15, False), ("16", 16, 96, False), ("1, new connection each", 1, 12, True)]
CLK_TCK = os.sysconf("SC_CLK_TCK")
IDLE_S = 3.0  # how long each stack's idle CPU is measured


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))] if s else float("nan")


def cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"llama-orch {' '.join(args)}: {out.stderr}")
    return out.stdout.strip()


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError):
            pass
    return total / CLK_TCK


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return out


class LabStack:
    """An orchestrator and a pool manager in lab mode on loopback, TLS on or off."""

    def __init__(self, root: Path, tls: bool, model: Path):
        self.root, self.tls = root, tls
        root.mkdir()
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.config = root / "lab.toml"
        self.config.write_text(f"""
mode = "lab"
data_dir = "{root / 'data'}"
[orchestrator]
listen = "{self.address}"
metrics_listen = "127.0.0.1:{free_port()}"
[pool]
heartbeat_ms = 1000
[security]
tls = {'true' if tls else 'false'}
auth = false
[models.simfast]
ref = "file:{model}"
engine = "sim"
""")
        self.pki = root / "data" / "pki"
        self.procs: dict[str, subprocess.Popen] = {}

    def _start(self, name: str, args: list[str], env: dict | None = None) -> None:
        log = open(self.root / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen([sys.executable, "-m", *args], stdout=log,
                                            stderr=subprocess.STDOUT, cwd=ROOT,
                                            env={**os.environ, **(env or {})})

    def _wait(self, what: str, predicate, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited before {what}: {self.logs()}")
            time.sleep(0.2)
        raise TimeoutError(f"{what}: {self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                         for p in sorted(self.root.glob("*.log")))

    def start(self) -> "LabStack":
        if self.tls:
            cli("ca", "init", "--config", str(self.config))
            cli("ca", "issue", "--client", "bench", "--config", str(self.config))
        self._start("orchestrator", ["orchestrator", "--config", str(self.config)])

        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0
        self._wait("the orchestrator listening", listening)
        env = {}
        if self.tls:
            env["LLAMA_ORCH_JOIN_TOKEN"] = cli("ca", "join-token", "--pool-id", "bench",
                                               "--config", str(self.config))
        self._start("pool", ["pool_manager", "--config", str(self.config), "--pool-id", "bench",
                             "--listen", f"127.0.0.1:{free_port()}"], env)
        self._wait("the pool registering",
                   lambda: "registered as bench" in (self.root / "pool.log").read_text(
                       errors="replace"))
        return self

    def channel(self) -> grpc.aio.Channel:
        if not self.tls:
            return grpc.aio.insecure_channel(self.address)
        creds = grpc.ssl_channel_credentials((self.pki / "ca.crt").read_bytes(),
                                             (self.pki / "client-bench.key").read_bytes(),
                                             (self.pki / "client-bench.crt").read_bytes())
        return grpc.aio.secure_channel(self.address, creds, options=[
            ("grpc.ssl_target_name_override", pki.ORCHESTRATOR_NAME)])

    def pids(self) -> list[int]:
        """The stack's processes: orchestrator, pool manager, its workers."""
        out = [p.pid for p in self.procs.values()]
        return out + children(self.procs["pool"].pid)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


class Sample:
    def __init__(self) -> None:
        self.ttft: list[float] = []
        self.tokens = 0
        self.seconds = 0.0
        self.cpu = 0.0
        self.client_cpu = 0.0
        self.errors = 0


async def one(stub, i: int, out: Sample) -> None:
    spec = C.JobSpec(model="simfast", prompt=PROMPT, sampling=C.SamplingParams(
        max_tokens=MAX_TOKENS, seed=i, temperature=1.0))
    t0 = time.perf_counter()
    first = True
    async for resp in stub.Generate(client_pb2.GenerateRequest(spec=spec), timeout=120):
        ev = resp.event
        kind = ev.WhichOneof("kind")
        if kind == "tokens" and ev.tokens.token_ids:
            if first:
                out.ttft.append((time.perf_counter() - t0) * 1000)
                first = False
            out.tokens += len(ev.tokens.token_ids)
        elif kind == "error":
            out.errors += 1


async def run(stack: LabStack, channel, concurrency: int, n: int, fresh: bool,
              first_seed: int) -> Sample:
    out = Sample()
    seeds = iter(range(first_seed, first_seed + n))
    stub = client_pb2_grpc.ClientServiceStub(channel)

    async def client() -> None:
        for i in seeds:
            if fresh:
                async with stack.channel() as ch:
                    await one(client_pb2_grpc.ClientServiceStub(ch), i, out)
            else:
                await one(stub, i, out)

    pids = stack.pids()
    cpu0, own0, t0 = cpu_seconds(pids), time.process_time(), time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    out.seconds = time.perf_counter() - t0
    out.cpu = cpu_seconds(pids) - cpu0
    out.client_cpu = time.process_time() - own0  # this process: the client side
    return out


def merge(samples: list[Sample], idle_cpu: float) -> dict:
    """`idle_cpu`: the stack's CPU seconds per second with no requests (heartbeats,
    timers), taken out of the CPU per request."""
    ttft = [t for s in samples for t in s.ttft]
    seconds = sum(s.seconds for s in samples)
    n = len(ttft)
    busy = sum(s.cpu for s in samples) - idle_cpu * seconds
    return {"n": n, "errors": sum(s.errors for s in samples),
            "ttft_p50": round(pct(ttft, 50), 2), "ttft_p99": round(pct(ttft, 99), 2),
            "round_ttft_p50": [round(pct(s.ttft, 50), 1) for s in samples],
            "req_per_s": round(n / seconds, 2),
            "tok_per_s": round(sum(s.tokens for s in samples) / seconds),
            "cpu_ms_per_req": round(1000 * busy / max(1, n), 2),
            "client_cpu_ms_per_req": round(
                1000 * sum(s.client_cpu for s in samples) / max(1, n), 2)}


async def measure(root: Path, rounds: int) -> dict:
    model = sim_model(root / "simfast", SIM)
    stacks = {"plaintext": LabStack(root / "plain", False, model),
              "mtls": LabStack(root / "mtls", True, model)}
    load_before = os.getloadavg()
    try:
        for s in stacks.values():
            s.start()
        channels = {k: s.channel() for k, s in stacks.items()}
        for k in stacks:  # starts each stack's worker, and warms the channel
            await run(stacks[k], channels[k], 1, 2, False, 10_000)
            await run(stacks[k], channels[k], 16, 16, False, 10_000)
        pids = {k: s.pids() for k, s in stacks.items()}
        cpu0 = {k: cpu_seconds(v) for k, v in pids.items()}
        await asyncio.sleep(IDLE_S)
        idle = {k: (cpu_seconds(v) - cpu0[k]) / IDLE_S for k, v in pids.items()}
        got: dict[str, dict[str, list[Sample]]] = {k: {p[0]: [] for p in PLAN} for k in stacks}
        for r in range(rounds):
            order = list(stacks) if r % 2 == 0 else list(stacks)[::-1]
            for label, conc, n, fresh in PLAN:
                for k in order:
                    got[k][label].append(await run(stacks[k], channels[k], conc, n, fresh, 0))
        for ch in channels.values():
            await ch.close()
        workers = {k: len(children(s.procs["pool"].pid)) for k, s in stacks.items()}
    finally:
        for s in stacks.values():
            s.stop()
    results = {}
    for label, *_ in PLAN:
        p = merge(got["plaintext"][label], idle["plaintext"])
        m = merge(got["mtls"][label], idle["mtls"])
        results[label] = {"plaintext": p, "mtls": m,
                          "added_ttft_p50": round(m["ttft_p50"] - p["ttft_p50"], 2),
                          "added_ttft_p99": round(m["ttft_p99"] - p["ttft_p99"], 2),
                          "req_ratio": round(m["req_per_s"] / p["req_per_s"], 3),
                          "tok_ratio": round(m["tok_per_s"] / p["tok_per_s"], 3),
                          "added_cpu_ms_per_req": round(
                              m["cpu_ms_per_req"] - p["cpu_ms_per_req"], 2),
                          "added_client_cpu_ms_per_req": round(
                              m["client_cpu_ms_per_req"] - p["client_cpu_ms_per_req"], 2)}
        print(json.dumps({label: results[label]}), flush=True)
    return {"by_case": results, "rounds": rounds, "workers": workers,
            "idle_cpu": {k: round(v, 3) for k, v in idle.items()},
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()],
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "grpc": grpc.__version__, "date": time.strftime("%Y-%m-%d")}


def render(r: dict) -> str:
    rows = []
    for label, x in r["by_case"].items():
        p, m = x["plaintext"], x["mtls"]
        rows.append(f"| {label} | {p['n']} | {p['ttft_p50']} / {p['ttft_p99']} | "
                    f"{m['ttft_p50']} / {m['ttft_p99']} | **{x['added_ttft_p50']}** / "
                    f"{x['added_ttft_p99']} | {p['req_per_s']} / {m['req_per_s']} "
                    f"({x['req_ratio']}×) | {p['tok_per_s']} / {m['tok_per_s']} "
                    f"({x['tok_ratio']}×) | {p['cpu_ms_per_req']} / {m['cpu_ms_per_req']} "
                    f"({x['added_cpu_ms_per_req']:+}) | "
                    f"{p['client_cpu_ms_per_req']} / {m['client_cpu_ms_per_req']} "
                    f"({x['added_client_cpu_ms_per_req']:+}) |")
    table = "\n".join(rows)
    verdicts = []
    for label, x in r["by_case"].items():
        p, m = x["plaintext"]["round_ttft_p50"], x["mtls"]["round_ttft_p50"]
        noise = max(max(p) - min(p), max(m) - min(m))
        added = x["added_ttft_p50"]
        verdicts.append(
            f"- {label}: {added:+} ms; per-round p50 plaintext {p}, mTLS {m}: "
            + ("within that spread ({:.1f} ms), not distinguishable from noise"
               if abs(added) <= noise else "more than that spread ({:.1f} ms)").format(noise))
    verdict = "\n".join(verdicts)
    errors = sum(x[k]["errors"] for x in r["by_case"].values() for k in ("plaintext", "mtls"))
    lb, la = r["load_before"], r["load_after"]
    plan = ", ".join(f"{n} at concurrency {c}" + (" (new channel each)" if fresh else "")
                     for _, c, n, fresh in PLAN)
    return f"""<!-- mtls:start -->
## What mTLS costs (`sim` engine, lab mode, TLS on vs off)

`python bench/mtls.py --write` — one run, {r['date']}. Two lab-mode stacks side by side
on loopback (orchestrator + pool manager + sim worker each), identical but for
`security.tls` (auth off in both; the mTLS pool joined with a join token). The mTLS
orchestrator terminates TLS in its audited TLS gate (common/tls_gate.py: lab mode audits,
so the gate is on), which relays each connection to its gRPC server on loopback; the
numbers include that relay. Streamed
`ClientService.Generate` calls, {MAX_TOKENS} tokens each, over one long-lived channel per
stack; sim worker with a fixed {SIM['ttft_ms']} ms time to first token and {SIM['itl_ms']} ms
between tokens (no spread, no slowdown, {SIM['slots']} slots). Per round and stack:
{plan}; {r['rounds']} rounds, alternating which stack goes first; same seeds on both.
"new connection each" opens a fresh channel per request, so it pays a TLS handshake
(ECDSA P-256) each time. TTFT is client-side, in ms (p50 / p99). Stack CPU is what the
stack's processes (orchestrator, pool manager, worker) used per request, net of their
idle use (plaintext {r['idle_cpu']['plaintext']}, mTLS {r['idle_cpu']['mtls']} CPU-s/s over
{IDLE_S:g} s); client CPU is the benchmark process's own (its gRPC client). Requests that
ended in an error: {errors}. Python {r['python']}, grpcio {r['grpc']}; {r['cpus']} cores
shared by the clients, both stacks and other work: 1/5/15-minute load average
{lb[0]} / {lb[1]} / {lb[2]} before, {la[0]} / {la[1]} / {la[2]} after.

| concurrency | requests | plaintext TTFT | mTLS TTFT | added TTFT | req/s plaintext / mTLS | tokens/s plaintext / mTLS | stack CPU ms/request plaintext / mTLS | client CPU ms/request plaintext / mTLS |
|---|---:|---|---|---|---|---|---|---|
{table}

Added TTFT p50, against how far each stack's own per-round p50 moved:

{verdict}
<!-- mtls:end -->"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ns = ap.parse_args()
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    with tempfile.TemporaryDirectory() as tmp:
        r = asyncio.run(measure(Path(tmp), ns.rounds))
    print(json.dumps({k: v for k, v in r.items() if k != "by_case"}))
    if ns.write:
        write_section("mtls", render(r))


if __name__ == "__main__":
    main()
