"""Lab mode across hosts: the orchestrator and a pool manager on two network namespaces
joined by a veth pair (tests/netns.py), everything on the link captured.

Host a (10.77.0.1) runs the orchestrator in lab mode (mTLS on, API keys on). Host b
(10.77.0.2) runs a pool manager that joins with a join token and serves a `sim` model
with its workers listening on 10.77.0.2, and a client that submits a job whose prompt
is a canary, with a client certificate and an API key. The job crosses the link three
ways: client -> orchestrator, pool link, orchestrator -> worker (Execute carries the
rendered prompt). Both ends of the veth are captured for the whole run (a raw AF_PACKET
socket per end: what tcpdump would see there), and:

- the capture works: traffic between the two addresses was seen, nothing was dropped,
  and a plaintext control sent over the same link (a UDP datagram and a TCP stream, the
  canary split across two segments) is found, at the start and at the end;
- every connection to the orchestrator's port and to the worker's port starts with a TLS
  handshake, and neither the canary nor the API key appears anywhere but in the control.

The pool manager runs through `python -m tests.netns pool-manager --worker-host ...`,
which makes its workers listen on host b's address: pool_manager/supervisor.py starts
every worker with `--listen 127.0.0.1:0` and has no setting for it yet (tests/netns.py).

The second case runs the same stack with `security.tls = false`: the canary is then
found on the client link and on the worker link, so the first case's "not found" is
not vacuous (the prompt does cross both links, in bytes the search would match).

Root and iproute2 are needed (tools/install_netns_tools.sh); without them the module is
skipped, unless LLAMA_ORCH_REQUIRE_NETNS=1 (CI), which makes that a failure.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import netns
from tests.stack import free_port, sim_model

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CANARY = "PLAINTEXT-CANARY-7f3a"
POOL = "lab-b"
REQUIRE = os.environ.get("LLAMA_ORCH_REQUIRE_NETNS") == "1"


@pytest.fixture
def link():
    why = netns.unavailable()
    if why is None:
        try:
            made = netns.Link().__enter__()
        except netns.Unavailable as exc:
            why = str(exc)
    if why is not None:
        if REQUIRE:
            pytest.fail(f"LLAMA_ORCH_REQUIRE_NETNS=1 but {why}")
        pytest.skip(why)
    try:
        yield made
    finally:
        made.down()


def cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0, (args, out.stderr)
    return out.stdout.strip()


def write_config(root: Path, name: str, tls: bool, orch: str, extra: str) -> Path:
    model = root / "model"
    if not model.exists():
        sim_model(model, {"ttft_ms": 1, "ttft_spread_ms": 0, "itl_ms": 1, "itl_spread_ms": 0})
    path = root / f"{name}.toml"
    path.write_text(f"""
mode = "lab"
data_dir = "{root / name}"
{extra}
[pool]
orchestrator = "{orch}"
heartbeat_ms = 300
[security]
tls = {'true' if tls else 'false'}
[models.quick]
ref = "file:{model}"
engine = "sim"
""")
    return path


def logs(root: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                     for p in sorted(root.glob("*.log")))


def control_probe(link: netns.Link, tag: str) -> tuple[tuple, tuple]:
    """Plaintext over the same link, b -> a: a UDP datagram, and a TCP stream with the
    canary split across two segments (so finding it proves the reassembly). Their flows."""
    payload = f"control-{tag} {CANARY} end".encode()
    udp = link.socket("b", socket.AF_INET, socket.SOCK_DGRAM)
    sink = link.socket("a", socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind((link.addr["a"], 0))
    udp.bind((link.addr["b"], 0))
    udp.sendto(payload, sink.getsockname())
    assert sink.recv(1000) == payload
    server = link.socket("a", socket.AF_INET, socket.SOCK_STREAM)
    server.bind((link.addr["a"], 0))
    server.listen(1)
    client = link.socket("b", socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.settimeout(10)
    client.connect(server.getsockname())
    cut = payload.index(CANARY.encode()) + len(CANARY) // 2
    client.sendall(payload[:cut])
    time.sleep(0.1)
    client.sendall(payload[cut:])
    source = client.getsockname()
    client.close()
    conn, _ = server.accept()
    got = b""
    while chunk := conn.recv(1000):
        got += chunk
    assert got == payload
    flows = ((*udp.getsockname(), *sink.getsockname()), (*source, *server.getsockname()))
    for s in (udp, sink, server, conn):
        s.close()
    return flows


def wait_for(what: str, predicate, root: Path, procs: dict, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        for name, p in procs.items():
            if p.poll() is not None:
                pytest.fail(f"{name} exited ({p.returncode}) before {what}:\n{logs(root)}")
        time.sleep(0.2)
    pytest.fail(f"{what} did not happen in {timeout} s:\n{logs(root)}")


def listening(link: netns.Link, side: str, port: int) -> bool:
    s = link.socket(side, socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(1)
    try:
        return s.connect_ex((link.addr[side], port)) == 0
    finally:
        s.close()


@pytest.mark.parametrize("tls", [True, False], ids=["mtls", "plaintext-control"])
def test_lab_mode_across_hosts(link, tmp_path, tls):
    a, b = link.addr["a"], link.addr["b"]
    # Fresh namespaces: every port is free there; free_port() just picks distinct ones.
    orch_port, pool_port = free_port(), free_port()
    orch = f"{a}:{orch_port}"
    orch_cfg = write_config(tmp_path, "orch", tls, orch, f"""
[orchestrator]
listen = "{orch}"
metrics_listen = "127.0.0.1:{free_port()}"
retry_initial_s = 0.2""")
    pool_cfg = write_config(tmp_path, "pool", tls, orch, "")
    pki_dir = tmp_path / "orch" / "pki"
    # The operator, on host a (the files are the orchestrator's): the CA, a client
    # certificate, a tenant and its client key, before anything serves.
    if tls:
        cli("ca", "init", "--config", str(orch_cfg))
        cli("ca", "issue", "--client", "tester", "--config", str(orch_cfg))
    cli("tenants", "create", "lab", "--config", str(orch_cfg))
    api_key = cli("keys", "create", "--tenant", "lab", "--scope", "client", "--config",
                  str(orch_cfg))
    assert api_key.startswith("lo_")

    caps = {side: link.capture(side) for side in ("a", "b")}
    procs: dict[str, subprocess.Popen] = {}
    log_files = [open(tmp_path / "orchestrator.log", "ab"), open(tmp_path / "pool.log", "ab")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRPC_VERBOSITY": "NONE"}
    started = time.monotonic()
    try:
        controls = [control_probe(link, "start")]
        procs["orchestrator"] = subprocess.Popen(
            link.exec("a") + [sys.executable, "-m", "orchestrator", "--config", str(orch_cfg)],
            stdout=log_files[0], stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        wait_for("the orchestrator listening on host a", lambda: listening(link, "a", orch_port),
                 tmp_path, procs)
        pool_env = dict(env)
        if tls:
            pool_env["LLAMA_ORCH_JOIN_TOKEN"] = cli("ca", "join-token", "--pool-id", POOL,
                                                    "--config", str(orch_cfg))
        procs["pool-manager"] = subprocess.Popen(
            link.exec("b") + [sys.executable, "-m", "tests.netns", "pool-manager",
                              "--worker-host", b, "--", "--config", str(pool_cfg),
                              "--pool-id", POOL, "--listen", f"{b}:{pool_port}"],
            stdout=log_files[1], stderr=subprocess.STDOUT, cwd=ROOT, env=pool_env)
        wait_for(f"{POOL} registering", lambda: f"registered as {POOL}" in (
            tmp_path / "pool.log").read_text(errors="replace"), tmp_path, procs)
        # The client on host b: certificate (when TLS is on) and API key, canary prompt.
        submit = subprocess.run(
            link.exec("b") + [sys.executable, "-m", "tests.netns", "submit", "--target", orch,
                              "--model", "quick", "--prompt", f"Tell me about {CANARY}.",
                              *(["--tls-dir", str(pki_dir)] if tls else [])],
            capture_output=True, text=True, timeout=180, cwd=ROOT,
            env={**env, "NETNS_API_KEY": api_key})
        assert submit.returncode == 0, f"{submit.stderr}\n{logs(tmp_path)}"
        job = json.loads(submit.stdout.strip().splitlines()[-1])
        assert job["status"] == "JOB_STATUS_SUCCEEDED", (job, logs(tmp_path))
        assert job["pool_id"] == POOL and job["completion_tokens"] > 0, job
        # The worker listens on host b's address, and the orchestrator dialled it there.
        (endpoint,) = job["endpoints"]
        host, port = endpoint.rsplit(":", 1)
        assert host == b, f"worker announced {endpoint}, not on {b}"
        worker_port = int(port)
        controls.append(control_probe(link, "end"))
    finally:
        frames = {side: cap.stop() for side, cap in caps.items()}
        drops = {side: cap.drops for side, cap in caps.items()}
        for side, cap in caps.items():
            cap.write_pcap(tmp_path / f"link-{side}.pcap")
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in log_files:
            f.close()
    elapsed = time.monotonic() - started

    canary, key = CANARY.encode(), api_key.encode()
    control_udp = {flow for flow, _ in controls}
    control_tcp = {flow for _, flow in controls}
    summary = {"tls": tls, "seconds": round(elapsed, 1)}
    for side, got in frames.items():
        assert drops[side] == 0, f"the capture on {side} dropped {drops[side]} frames"
        packets, size = netns.traffic_between(got, a, b)
        assert packets > 0, f"nothing captured between {a} and {b} on {side}"
        streams = netns.tcp_streams(got)
        udp = netns.udp_payloads(got)

        # The control: the capture and the search do find plaintext on this link.
        for flow in control_udp:
            assert any(f == flow and canary in p for f, p in udp), (side, flow, "UDP control")
        for flow in control_tcp:
            assert canary in streams.get(flow, b""), (side, flow, "TCP control")
            assert not any(canary in f.payload for f in got
                           if (f.src, f.sport, f.dst, f.dport) == flow), "control not split"

        def flows_to(host: str, port: int) -> dict:
            return {k: v for k, v in streams.items()
                    if (k[2], k[3]) == (host, port) or (k[0], k[1]) == (host, port)}

        to_orch, to_worker = flows_to(a, orch_port), flows_to(b, worker_port)
        assert any(k[0] == b for k in to_orch), f"no traffic to the orchestrator ({side})"
        assert any(k[0] == a for k in to_worker), f"no orchestrator traffic to the worker ({side})"
        others = {k: v for k, v in streams.items()
                  if k not in control_tcp and k not in to_orch and k not in to_worker}
        assert not others, f"unexpected TCP flows on the link: {list(others)}"
        summary[side] = {
            "packets": packets, "bytes": size, "frames": len(got),
            "orchestrator_flows": len(to_orch), "worker_flows": len(to_worker),
            "orchestrator_bytes": sum(map(len, to_orch.values())),
            "worker_bytes": sum(map(len, to_worker.values())), "dropped": drops[side],
            "canary_in_control_flows": sum(canary in streams.get(f, b"") for f in control_tcp)
            + sum(canary in pl for f, pl in udp if f in control_udp),
            "canary_in_orchestrator_flows": sum(canary in v for v in to_orch.values()),
            "canary_in_worker_flows": sum(canary in v for v in to_worker.values())}
        if tls:
            # Every connection opens with a TLS handshake record (not HTTP/2's preface)...
            for k, data in {**to_orch, **to_worker}.items():
                assert data[:1] == b"\x16" and data[1:2] == b"\x03", (k, data[:24])
            # ...and the prompt and the API key appear nowhere but in the control.
            for f in got:
                flow = (f.src, f.sport, f.dst, f.dport)
                if flow in control_udp or flow in control_tcp:
                    continue
                assert canary not in f.raw and key not in f.raw, (side, flow)
            for k, data in {**to_orch, **to_worker}.items():
                assert canary not in data and key not in data, (side, k)
        else:
            # Plaintext: the same search finds the prompt on the client link and on the
            # worker link (Execute carries it), and the API key on the client link.
            assert any(canary in v and key in v for k, v in to_orch.items() if k[0] == b), side
            assert any(canary in v for k, v in to_worker.items() if k[0] == a), side
    (tmp_path / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
