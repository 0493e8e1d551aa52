"""`llama-orch up`: home mode on one machine — orchestrator, pool manager and gateway.

Each daemon is its own OS process (the same seams as a lab deployment). Ctrl-C or
SIGTERM stops them in reverse order, the pool manager stopping its workers; children
also get SIGTERM from the kernel if `up` itself is killed, so nothing is orphaned.

With security.tls = true, `up` first does what `llama-orch ca init` and
`llama-orch ca issue --client gateway` would: it creates the CA in pki_dir unless one
exists and (re)issues <pki_dir>/client-gateway.key/.crt unless they hold a certificate
of that CA with a third of its lifetime left. The gateway gets them through
LLAMA_ORCH_TLS_KEY/CERT/CA (common/tls.py) and dials the orchestrator with them; `up`'s
own readiness probe uses them too. While running, `up` checks every 30 s
(tls.check_interval_s) whether the certificate is due, reissues it over the same files
when it is, and the gateway moves new requests to it (gateway/identity.py). The
orchestrator issues its own certificate and the pool manager, which can read the CA's
key on this machine, its own.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
import urllib.request

from common import config as config_mod, pki, tls

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def _spawn(module: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, *args], stdin=subprocess.DEVNULL,
                            preexec_fn=_die_with_parent,
                            env={**os.environ, **env} if env else None)


def gateway_identity(cfg: config_mod.Config) -> tls.Material | None:
    """TLS on: the gateway's client certificate from the local CA (the CA made first if
    there is none), issued unless a valid one is there already. None with TLS off."""
    if not cfg.security.tls:
        return None
    dir = config_mod.pki_dir(cfg)
    ca, created = pki.CA.init(dir)  # before the orchestrator starts: never two CAs racing
    if created:
        print(f"llama-orch: created a CA in {dir} (ca.key is 0600: keep it on this machine); "
              f"fingerprint (sha256) {pki.fingerprint(ca.cert)}", file=sys.stderr)
    m = tls.Material(dir / "client-gateway.key", dir / "client-gateway.crt", dir / "ca.crt")
    ca.ensure(m.key, m.cert, "client", "gateway", ttl_s=cfg.security.cert_ttl_s)
    return m


def _renew_gateway_identity(cfg: config_mod.Config, m: tls.Material) -> None:
    before = tls.file_stamp((m.key, m.cert))
    try:
        gateway_identity(cfg)
        if tls.file_stamp((m.key, m.cert)) != before:
            print("llama-orch: renewed the gateway's client certificate", file=sys.stderr)
    except (OSError, ValueError) as exc:  # a full disk must not stop home mode: try again
        print(f"llama-orch: cannot renew the gateway's certificate: {exc}", file=sys.stderr)


def _env_of(m: tls.Material | None) -> dict[str, str]:
    return dict(zip(tls.ENV, (str(m.key), str(m.cert), str(m.ca)))) if m else {}


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def _serving(address: str, identity: tls.Material | None = None) -> bool:
    """The orchestrator answers gRPC health: requests sent now will be admitted. With
    TLS the probe presents `identity` and pins the orchestrator's name, as the gateway."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    try:
        if identity is None:
            ch = grpc.insecure_channel(address)
        else:
            key, cert, ca = identity.read()
            ch = grpc.secure_channel(address, grpc.ssl_channel_credentials(ca, key, cert),
                                     options=[("grpc.ssl_target_name_override",
                                               pki.ORCHESTRATOR_NAME)])
        with ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
            return resp.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def run(config_path: str | None) -> int:
    cfg = config_mod.load(config_path)  # fail fast, with one line, before spawning anything
    identity = gateway_identity(cfg)
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
                                                "--orchestrator-metrics", metrics_url],
                                         env=_env_of(identity))))
    url = f"http://{cfg.gateway.listen}"
    announced = False
    code = 0
    renew_at = time.monotonic() + tls.check_interval_s()
    while not stopping:
        if identity is not None and time.monotonic() >= renew_at:
            # Reissued with a third of its lifetime left; the gateway follows the files.
            _renew_gateway_identity(cfg, identity)
            renew_at = time.monotonic() + tls.check_interval_s()
        for name, p in procs:
            if p.poll() is not None:
                print(f"llama-orch: {name} exited with code {p.returncode}; stopping", file=sys.stderr)
                code = p.returncode or 1
                stopping = True
        if (not announced and not stopping and _healthy(url + "/healthz")
                and _serving(cfg.gateway.orchestrator, identity)):
            models = ", ".join(sorted(["tiny", *cfg.models])) if cfg.models else "tiny"
            print(f"llama-orch is up ({cfg.mode} mode{', mTLS' if identity else ''}): OpenAI "
                  f"API at {url}/v1 — models: {models}. Ctrl-C stops everything.",
                  file=sys.stderr, flush=True)
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
