"""`llama-orch up`: home mode on one machine — orchestrator, pool manager and gateway.

Each daemon is its own OS process (the same seams as a lab deployment). Ctrl-C or
SIGTERM stops them in reverse order, the pool manager stopping its workers; children
also get SIGTERM from the kernel if `up` itself is killed, so nothing is orphaned.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import time
import urllib.request

from common import config as config_mod

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def _spawn(module: str, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, *args], stdin=subprocess.DEVNULL,
                            preexec_fn=_die_with_parent)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def _serving(address: str) -> bool:
    """The orchestrator answers gRPC health: requests sent now will be admitted."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    try:
        with grpc.insecure_channel(address) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
            return resp.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def run(config_path: str | None) -> int:
    cfg = config_mod.load(config_path)  # fail fast, with one line, before spawning anything
    common = ["--config", config_path] if config_path else []
    stopping = False

    def request_stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    procs = [("orchestrator", _spawn("orchestrator", common))]
    procs.append(("pool-manager", _spawn("pool_manager", common)))
    metrics_url = f"http://{cfg.orchestrator.metrics_listen}/metrics"
    procs.append(("gateway", _spawn("gateway", [*common, "--listen", cfg.gateway.listen,
                                                "--orchestrator", cfg.gateway.orchestrator,
                                                "--orchestrator-metrics", metrics_url])))
    url = f"http://{cfg.gateway.listen}"
    announced = False
    code = 0
    while not stopping:
        for name, p in procs:
            if p.poll() is not None:
                print(f"llama-orch: {name} exited with code {p.returncode}; stopping", file=sys.stderr)
                code = p.returncode or 1
                stopping = True
        if (not announced and not stopping and _healthy(url + "/healthz")
                and _serving(cfg.gateway.orchestrator)):
            models = ", ".join(sorted(["tiny", *cfg.models])) if cfg.models else "tiny"
            print(f"llama-orch is up (home mode): OpenAI API at {url}/v1 — models: {models}. "
                  "Ctrl-C stops everything.", file=sys.stderr, flush=True)
            announced = True
        time.sleep(0.2)
    _stop_all(procs)
    return code


def _stop_all(procs: list[tuple[str, subprocess.Popen]], grace_s: float = 15.0) -> None:
    for _, p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for _, p in reversed(procs):
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
