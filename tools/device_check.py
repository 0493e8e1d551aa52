"""Device check: the `hf` engine's CUDA path and the NVML inventory on a real GPU.

Run on a machine with an NVIDIA GPU (the project's device machine, when one is lent):

    .venv/bin/python tools/device_check.py --write     # records docs/DEVICE_CHECK.md

What it does, each step recorded with what it saw:
1. NVML inventory through the pool manager's own code (pool_manager/inventory.py): every
   GPU by UUID with name, memory, utilisation, temperature, per-process memory.
2. torch's view of CUDA (version, device name, capability).
3. A real worker process (`python -m worker --engine hf --devices <GPU UUID>`), the
   same command line the supervisor builds, serving the embedded `tiny` model on the
   first GPU: time to ready, the device bytes it reports, and NVML's per-process memory
   for its pid while it runs.
4. Seeded generation: the same seed twice on the GPU worker (identical tokens?), and the
   same request on a CPU worker (same tokens as CPU?), with time to first token and
   tokens/s, and each job's proof record (engine, device, token hash).
5. With `--gateway-bench`: bench/gateway_overhead.py on this machine (the `sim` engine,
   no GPU involved): what the gateway and orchestrator add to time to first token at
   concurrency 1, 16 and 64, with the machine's CPU count. Issue 5's target is set for
   concurrency 16; the project's own machines have 2 cores for all five processes, the
   device machine one each. Then bench/bare_chain.py: the same processes and
   transports with none of our code in them, the floor under those numbers here. Adds
   about four minutes.
Without a GPU it says why and exits 2 without writing anything. `--device cpu` runs
the same steps with the "device" worker on the CPU: a self-test of this script for
machines without a GPU (never written to docs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from common.grpc_server import Server  # noqa: E402
from llama_orch.v1 import (common_pb2, worker_callback_pb2, worker_callback_pb2_grpc,  # noqa: E402
                           worker_pb2, worker_pb2_grpc)
from orchestrator.catalog import TINY_PATH  # noqa: E402
from pool_manager import inventory  # noqa: E402

DOC = ROOT / "docs" / "DEVICE_CHECK.md"
PROMPT_IDS = [1, 17, 42, 99, 7, 3]
SEEDS = (11, 12, 13)


class Ready(worker_callback_pb2_grpc.WorkerCallbackServiceServicer):
    def __init__(self) -> None:
        self.futures: dict[str, asyncio.Future] = {}

    async def ReportReady(self, request, context):
        fut = self.futures.get(request.worker_id)
        if fut is not None and not fut.done():
            fut.set_result(request)
        return worker_callback_pb2.ReportReadyResponse()

    async def ReportFailure(self, request, context):
        fut = self.futures.get(request.worker_id)
        if fut is not None and not fut.done():
            fut.set_exception(RuntimeError(f"{request.error.code}: {request.error.message}"))
        return worker_callback_pb2.ReportFailureResponse()


def nvml_inventory() -> tuple[str, list[dict]]:
    nvml = inventory.Nvml.open()
    try:
        inv = inventory.take(nvml, [], ["hf"])
        gpus = [{"id": d.id, "name": d.name, "total_mib": d.memory_total_bytes >> 20,
                 "free_mib": d.memory_free_bytes >> 20, "util_pct": d.utilization_percent,
                 "temp_c": d.temperature_c,
                 "processes": [{"pid": p.pid, "mib": p.used_memory_bytes >> 20} for p in d.processes]}
                for d in inv.devices if d.kind == common_pb2.DEVICE_KIND_GPU]
        return nvml.status, gpus
    finally:
        nvml.close()


def process_memory(gpu_id: str, pid: int) -> int | None:
    _, gpus = nvml_inventory()
    for g in gpus:
        if g["id"] == gpu_id:
            return next((p["mib"] for p in g["processes"] if p["pid"] == pid), None)
    return None


async def start(ready: Ready, callback: str, worker_id: str, device: str):
    fut = ready.futures[worker_id] = asyncio.get_running_loop().create_future()
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               CUDA_VISIBLE_DEVICES="" if device == "cpu" else device)
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "--worker-id", worker_id, "--model-ref",
        f"file:{TINY_PATH}", "--engine", "hf", "--devices", device, "--callback", callback,
        "--listen", "127.0.0.1:0", "--threads", "1", cwd=ROOT, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    exited = asyncio.ensure_future(proc.wait())
    await asyncio.wait([fut, exited], timeout=600, return_when=asyncio.FIRST_COMPLETED)
    if not fut.done() or fut.exception() is not None:
        proc.kill()
        await exited
        tail = (await proc.stderr.read()).decode(errors="replace")[-800:]
        raise RuntimeError(f"{device} worker did not get ready: "
                           f"{fut.exception() if fut.done() else 'timeout'}\n{tail}")
    return proc, fut.result(), (time.perf_counter() - t0) * 1000


async def generate(endpoint: str, seed: int) -> dict:
    async with grpc.aio.insecure_channel(endpoint) as ch:
        stub = worker_pb2_grpc.WorkerServiceStub(ch)
        t0 = time.perf_counter()
        first = None
        ids: list[int] = []
        proof = None
        async for r in stub.Execute(worker_pb2.ExecuteRequest(
                job_id=f"check-{seed}-{time.monotonic_ns()}", prompt_token_ids=PROMPT_IDS,
                sampling=common_pb2.SamplingParams(max_tokens=48, seed=seed, temperature=1.0))):
            kind = r.WhichOneof("event")
            if kind == "tokens":
                first = first or time.perf_counter()
                ids.extend(r.tokens.token_ids)
            elif kind == "end":
                proof = r.end.proof
            elif kind == "error":
                raise RuntimeError(f"{r.error.code}: {r.error.message}")
        done = time.perf_counter()
    return {"ids": ids, "ttft_ms": round(((first or done) - t0) * 1000, 2),
            "tok_s": round(len(ids) / max(1e-6, done - t0), 1),
            "proof": {"engine": proof.engine_version if proof else "", "device": proof.device
                      if proof else "", "token_hash": proof.token_hash if proof else ""}}


async def check(device: str = "") -> dict:
    status, gpus = nvml_inventory()
    import torch
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "host": platform.node(), "python": platform.python_version(),
              "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
              "torch_cuda": torch.version.cuda, "nvml_status": status, "gpus": gpus}
    if device != "cpu" and (not gpus or not torch.cuda.is_available()):
        result["skipped"] = (f"no GPU to check: NVML {status!r}, "
                             f"torch.cuda.is_available() = {torch.cuda.is_available()}")
        return result
    gpu = device or gpus[0]["id"]
    cuda = gpu != "cpu"
    result["torch_device"] = torch.cuda.get_device_name(0) if cuda else "cpu (self-test)"
    result["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else "-"
    ready = Ready()
    server = Server([worker_callback_pb2.DESCRIPTOR.services_by_name["WorkerCallbackService"].full_name])
    server.bind("127.0.0.1:0")
    worker_callback_pb2_grpc.add_WorkerCallbackServiceServicer_to_server(ready, server.grpc)
    await server.start()
    procs = []
    try:
        callback = f"127.0.0.1:{server.port}"
        gproc, ginfo, gready = await start(ready, callback, "check-gpu", gpu)
        procs.append(gproc)
        cproc, cinfo, cready = await start(ready, callback, "check-cpu", "cpu")
        procs.append(cproc)
        gpu_runs = {s: [await generate(ginfo.endpoint, s) for _ in range(2)] for s in SEEDS}
        cpu_runs = {s: await generate(cinfo.endpoint, s) for s in SEEDS}
        result["gpu_worker"] = {"ready_ms": round(gready), "load_ms": ginfo.load_ms,
                                "device_bytes": dict(ginfo.device_bytes),
                                "nvml_process_mib": process_memory(gpu, gproc.pid) if cuda else None}
        result["cpu_worker"] = {"ready_ms": round(cready), "load_ms": cinfo.load_ms}
        result["seeds"] = [{
            "seed": s, "gpu_repeat_identical": runs[0]["ids"] == runs[1]["ids"],
            "gpu_equals_cpu": runs[0]["ids"] == cpu_runs[s]["ids"],
            "gpu_ttft_ms": runs[1]["ttft_ms"], "gpu_tok_s": runs[1]["tok_s"],
            "cpu_ttft_ms": cpu_runs[s]["ttft_ms"], "cpu_tok_s": cpu_runs[s]["tok_s"],
            "gpu_proof": runs[0]["proof"], "cpu_proof": cpu_runs[s]["proof"]}
            for s, runs in gpu_runs.items()]
    finally:
        for p in procs:
            if p.returncode is None:
                p.terminate()
                await p.wait()
        await server.stop(0.5)
    return result


def gateway_bench(per_client: int | None = None) -> dict:
    """Step 5: the gateway-overhead benchmark here, in its own event loop and stack."""
    from bench import bare_chain, gateway_overhead
    with contextlib.redirect_stdout(sys.stderr):  # their progress lines; stdout is our JSON
        measured = asyncio.run(gateway_overhead.measure(per_client))
        floor = asyncio.run(bare_chain.measure(per_client))["by_concurrency"]
    rows = {c: {"added_ttft_p50": x["added_ttft_p50"], "added_ttft_p99": x["added_ttft_p99"],
                "orchestrator_added_ttft_p50": x["orchestrator_added_ttft_p50"],
                "bare_chain_added_ttft_p50": floor[c]["chain"]["added_ttft_p50"],
                "bare_chain_added_ttft_p99": floor[c]["chain"]["added_ttft_p99"],
                "added_itl_p99": x["added_itl_p99"], "req_per_s": x["gateway"]["req_per_s"],
                "requests": x["gateway"]["n"]}
            for c, x in measured["by_concurrency"].items()}
    return {"cpus": os.cpu_count(), "by_concurrency": rows}


def render(r: dict) -> str:
    lines = ["# Device check", "",
             "Written by `tools/device_check.py --write` on a machine with a GPU; do not edit.",
             "", f"- date: {r['date']}; host: {r['host']}; Python {r['python']}; torch "
             f"{r['torch']} (CUDA {r['torch_cuda']}); NVML: {r['nvml_status']}", ""]
    lines += ["## NVML inventory", "", "| GPU (UUID) | name | total MiB | free MiB | util % | °C |",
              "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {g['id']} | {g['name']} | {g['total_mib']} | {g['free_mib']} | {g['util_pct']} "
              f"| {g['temp_c']} |" for g in r["gpus"]]
    if "gpu_worker" in r:
        w = r["gpu_worker"]
        lines += ["", "## `hf` worker on the GPU (`tiny`)", "",
                  f"- torch sees {r['torch_device']} (compute capability {r['capability']})",
                  f"- ready in {w['ready_ms']} ms (load {w['load_ms']} ms); reports "
                  f"{w['device_bytes']} bytes on its device; NVML shows {w['nvml_process_mib']} MiB "
                  "for its pid", f"- CPU worker for comparison: ready in {r['cpu_worker']['ready_ms']} ms",
                  "", "| seed | GPU twice identical | GPU = CPU tokens | GPU TTFT ms | GPU tok/s "
                  "| CPU TTFT ms | CPU tok/s | GPU proof device |", "|---:|---|---|---:|---:|---:|---:|---|"]
        lines += [f"| {s['seed']} | {s['gpu_repeat_identical']} | {s['gpu_equals_cpu']} | "
                  f"{s['gpu_ttft_ms']} | {s['gpu_tok_s']} | {s['cpu_ttft_ms']} | {s['cpu_tok_s']} | "
                  f"{s['gpu_proof']['device']} |" for s in r["seeds"]]
    if "gateway_overhead" in r:
        g = r["gateway_overhead"]
        lines += ["", "## What the gateway and orchestrator add, on this machine (`sim` engine)",
                  "",
                  f"`bench/gateway_overhead.py` on {g['cpus']} CPUs (the project's machines: 2 "
                  "for all five processes). Added time to first token against calling the "
                  "worker directly, ms; issue 5's targets at concurrency 16: p50 <= 2, "
                  "p99 <= 10, added inter-token p99 <= 5. \"bare hops\": what "
                  "`bench/bare_chain.py` measured here for the same processes and transports "
                  "with none of our code in them (the floor under the first two columns).", "",
                  "| concurrency | requests | added TTFT p50 | added TTFT p99 | of it, the "
                  "orchestrator (p50) | bare hops: added TTFT p50 / p99 | added ITL p99 | req/s |",
                  "|---:|---:|---:|---:|---:|---|---:|---:|"]
        lines += [f"| {c} | {x['requests']} | {x['added_ttft_p50']} | {x['added_ttft_p99']} | "
                  f"{x['orchestrator_added_ttft_p50']} | {x['bare_chain_added_ttft_p50']} / "
                  f"{x['bare_chain_added_ttft_p99']} | {x['added_itl_p99']} | {x['req_per_s']} |"
                  for c, x in g["by_concurrency"].items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true", help=f"record the result in {DOC}")
    ap.add_argument("--device", default="", help="a GPU UUID (default: the first), or cpu "
                    "to self-test this script without a GPU")
    ap.add_argument("--gateway-bench", action="store_true",
                    help="also run bench/gateway_overhead.py and bench/bare_chain.py here "
                    "(step 5, ~4 minutes)")
    ap.add_argument("--gateway-bench-requests", type=int, default=None, metavar="N",
                    help="requests per client at every concurrency (default: the benchmark's)")
    ns = ap.parse_args()
    if ns.write and ns.device == "cpu":
        ap.error("--device cpu is a self-test; it is never recorded")
    if ns.gateway_bench_requests is not None and ns.gateway_bench_requests < 1:
        ap.error("--gateway-bench-requests must be at least 1")
    result = asyncio.run(check(ns.device))
    if "skipped" in result:
        print(json.dumps(result, indent=2, default=str))
        print(f"device check: {result['skipped']}", file=sys.stderr)
        return 2
    if ns.gateway_bench:
        result["gateway_overhead"] = gateway_bench(ns.gateway_bench_requests)
    print(json.dumps(result, indent=2, default=str))
    if ns.write:
        DOC.write_text(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
