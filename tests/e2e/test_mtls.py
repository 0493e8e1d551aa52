"""mTLS with real processes: an orchestrator in lab mode (TLS on), a pool manager that
joins with a token, a job over mTLS end to end, renewal under a live stream, and the
adversary rows of ARCHITECTURE §6, each refused with a clear error, audited, and
changing no state (handshake refusals by the orchestrator's TLS gate, common/tls_gate.py).

One orchestrator and one pool manager serve the whole module (starting them is most of
the cost); the rows run in order against them, and the last one revokes the pool.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common import pki, tls
from common.errors import OrchError
from llama_orch.v1 import client_pb2, client_pb2_grpc, common_pb2 as C
from llama_orch.v1 import pool_link_pb2, pool_link_pb2_grpc, worker_pb2, worker_pb2_grpc
from pool_manager.enroll import signed_registration
from tests.stack import free_port, sim_model, start_daemon

pytestmark = pytest.mark.e2e

TERMINAL = (C.JOB_STATUS_SUCCEEDED, C.JOB_STATUS_FAILED, C.JOB_STATUS_CANCELLED)


def config(root: Path, name: str, orch_port: int, metrics_port: int, model: Path) -> Path:
    path = root / f"{name}.toml"
    path.write_text(f"""
mode = "lab"
data_dir = "{root / name}"
[orchestrator]
listen = "127.0.0.1:{orch_port}"
metrics_listen = "127.0.0.1:{metrics_port}"
retry_initial_s = 0.2
[pool]
heartbeat_ms = 300
[security]
auth = false  # API keys are tested elsewhere; here only certificates authenticate
[models.quick]
ref = "file:{model}"
engine = "sim"
""")
    return path


def cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def logs(root: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                     for p in sorted(root.glob("*.log")))


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        model = root / "model"
        sim_model(model, {"ttft_ms": 1, "ttft_spread_ms": 0, "itl_ms": 1, "itl_spread_ms": 0})
        self.addr = f"127.0.0.1:{free_port()}"
        port = int(self.addr.rsplit(":", 1)[1])
        self.orch_cfg = config(root, "orch", port, free_port(), model)
        self.pool_cfg = config(root, "pool", port, free_port(), model)
        self.pki = root / "orch" / "pki"
        self.pool_pki = root / "pool" / "pki" / "pool-pool-a"
        self.procs: dict[str, subprocess.Popen] = {}

    def material(self, name: str) -> tls.Material:
        return tls.Material(self.pki / f"client-{name}.key", self.pki / f"client-{name}.crt",
                            self.pki / "ca.crt")

    def channel(self, m: tls.Material | None = None, creds=None) -> grpc.Channel:
        if creds is None:
            key, cert, ca = m.read()
            creds = grpc.ssl_channel_credentials(ca, key, cert)
        return grpc.secure_channel(self.addr, creds, options=[
            ("grpc.ssl_target_name_override", pki.ORCHESTRATOR_NAME)])

    def client(self, m: tls.Material | None = None, creds=None):
        return client_pb2_grpc.ClientServiceStub(self.channel(m or self.material("tester"), creds))

    def enrolment_stub(self):
        key, cert = pki.enrolment_identity()
        creds = grpc.ssl_channel_credentials((self.pki / "ca.crt").read_bytes(), key, cert)
        return pool_link_pb2_grpc.PoolLinkServiceStub(self.channel(creds=creds))

    def state(self) -> tuple:
        """What no refused call may change: pools, jobs, tokens, nonces, provider keys."""
        stub = self.client()
        pools = sorted(p.pool_id for p in stub.GetClusterSnapshot(
            client_pb2.GetClusterSnapshotRequest(), timeout=10).pools)
        jobs = len(stub.ListJobs(client_pb2.ListJobsRequest(page_size=1000), timeout=10).jobs)
        files = tuple((p.name, p.read_bytes()) for p in sorted(self.pki.glob("*.json")))
        return pools, jobs, files

    def audit(self, after_id: int = 0) -> list:
        """Committed audit entries with id > after_id (AdminService, as an operator)."""
        from llama_orch.v1 import admin_pb2, admin_pb2_grpc
        admin = admin_pb2_grpc.AdminServiceStub(self.channel(self.material("tester")))
        return list(admin.ListAuditEntries(admin_pb2.ListAuditEntriesRequest(
            after_id=after_id, page_size=1000), timeout=10).entries)

    def last_audit_id(self) -> int:
        last = 0
        while True:  # each ListAuditEntries is audited too: stop at a short page
            page = self.audit(last)
            last = page[-1].id if page else last
            if len(page) < 1000:
                return last

    def wait(self, what: str, predicate, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if result := predicate():
                    return result
            except grpc.RpcError:
                pass
            time.sleep(0.2)
        pytest.fail(f"{what} did not happen:\n{logs(self.root)}")


def refused(call) -> OrchError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return OrchError.from_rpc_error(err.value)


def join_request(pool: str, token: str, signed=None) -> pool_link_pb2.JoinRequest:
    req = pool_link_pb2.JoinRequest(pool_id=pool, join_token=token,
                                    csr_pem=pki.make_csr(pki.new_key(), pool).decode())
    if signed is not None:
        req.signed.CopyFrom(signed)
    return req


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("mtls"))
    try:
        cli("ca", "init", "--config", str(c.orch_cfg))
        cli("ca", "issue", "--client", "tester", "--config", str(c.orch_cfg))
        c.procs["orch"] = start_daemon(c.root, "orchestrator.log", "orchestrator",
                                       "--config", str(c.orch_cfg))
        c.wait("the orchestrator serving over mTLS", lambda: health_pb2_grpc.HealthStub(
            c.channel(c.material("tester"))).Check(health_pb2.HealthCheckRequest(), timeout=1))
        c.token = cli("ca", "join-token", "--pool-id", "pool-a", "--config", str(c.orch_cfg))
        log = open(c.root / "pool-a.log", "ab")
        c.procs["pool-a"] = subprocess.Popen(
            [sys.executable, "-m", "pool_manager", "--config", str(c.pool_cfg), "--pool-id",
             "pool-a", "--listen", f"127.0.0.1:{free_port()}"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "LLAMA_ORCH_JOIN_TOKEN": c.token})
        c.wait("pool-a joining", lambda: "pool-a" in c.state()[0])
        yield c
    finally:
        for p in c.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in c.procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def test_the_pool_joined_with_its_token_and_holds_a_certificate_naming_it(cluster):
    key, cert = cluster.pool_pki / "key.pem", cluster.pool_pki / "cert.pem"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    ident = pki.identity_of(pki.load_cert(cert.read_bytes()))
    assert (ident.role, ident.name) == ("pool", "pool-a")
    # The CA was pinned from the token's fingerprint (the pool had no copy of it).
    assert (cluster.pool_pki / "ca.pem").read_bytes() == (cluster.pki / "ca.crt").read_bytes()


def test_a_job_runs_over_mtls_end_to_end(cluster):
    stub = cluster.client()
    job = stub.Submit(client_pb2.SubmitRequest(spec=C.JobSpec(
        model="quick", prompt="Over mTLS.", keep_output=True,
        sampling=C.SamplingParams(seed=1, max_tokens=8))), timeout=30).job
    done = cluster.wait("the job finishing", lambda: (j := stub.GetJob(client_pb2.GetJobRequest(
        job_id=job.job_id), timeout=10).job).status in TERMINAL and j, timeout=120)
    assert done.status == C.JOB_STATUS_SUCCEEDED, (done.error.code, done.error.message)
    assert done.pool_id == "pool-a" and done.usage.completion_tokens > 0


def tls_alert(addr: str, key: bytes | None, cert: bytes | None, tmp_path: Path) -> str:
    """The TLS alert the orchestrator answers a client presenting key/cert with. Under
    TLS 1.3 the client's side of the handshake completes first, so gRPC reports only
    UNAVAILABLE (its log names the alert); a plain TLS client reads the alert itself."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    if cert is not None:
        (tmp_path / "alert.key").write_bytes(key)
        (tmp_path / "alert.crt").write_bytes(cert)
        ctx.load_cert_chain(tmp_path / "alert.crt", tmp_path / "alert.key")
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock, \
            ctx.wrap_socket(sock) as conn:
        try:
            conn.recv(1)
        except ssl.SSLError as exc:
            return exc.reason
    return "no alert"


@pytest.mark.parametrize("who, alert, outcome", [
    ("none", "TLSV13_ALERT_CERTIFICATE_REQUIRED", "refused: no client certificate"),
    ("another CA", "TLSV1_ALERT_UNKNOWN_CA", "refused: certificate not issued by a trusted CA"),
    ("expired", "SSLV3_ALERT_CERTIFICATE_EXPIRED", "refused: certificate has expired"),
])
def test_handshake_refusals(cluster, tmp_path, who, alert, outcome):
    """Refused by the orchestrator's TLS gate: nothing reaches a servicer, the client is
    told why by a TLS alert, and the refusal is in the audit log (common/tls_gate.py)."""
    ca = pki.CA.load(cluster.pki)
    ca_pem = ca.cert_pem
    key = cert = None
    if who == "another CA":
        key, cert = pki.CA.init(tmp_path / "other")[0].issue_new("client", "tester")
    elif who == "expired":
        key, cert = ca.issue_new("client", "late", ttl_s=-60)
    creds = grpc.ssl_channel_credentials(ca_pem, key, cert)
    before, last = cluster.state(), cluster.last_audit_id()
    err = refused(lambda: cluster.client(creds=creds).Submit(client_pb2.SubmitRequest(
        spec=C.JobSpec(model="quick", prompt="x")), timeout=10))
    assert err.code == "UNAVAILABLE"  # the TLS handshake fails: nothing reaches a servicer
    assert tls_alert(cluster.addr, key, cert, tmp_path) == alert
    entries = cluster.wait("the refusal in the audit log", lambda: [
        e for e in cluster.audit(last) if e.action == "tls.handshake"])
    assert {(e.principal, e.target) for e in entries} == {("anonymous", cluster.addr)}
    assert any(e.outcome.startswith(outcome) for e in entries), [e.outcome for e in entries]
    assert all(e.correlation_id.startswith("127.0.0.1:") for e in entries)  # the peer
    assert cluster.state() == before


def test_the_grpc_server_behind_the_gate_refuses_a_direct_caller(cluster):
    """Behind the gate gRPC listens in plaintext on loopback; a local process that dials
    it directly is refused (UNAUTHENTICATED, audited), Join and Health included."""
    log = (cluster.root / "orchestrator.log").read_text()
    internal = json.loads(next(line for line in log.splitlines() if '"tls.gate"' in line))
    addr = f"127.0.0.1:{internal['internal_port']}"
    before, last = cluster.state(), cluster.last_audit_id()
    with grpc.insecure_channel(addr) as ch:
        err = refused(lambda: client_pb2_grpc.ClientServiceStub(ch).Submit(
            client_pb2.SubmitRequest(spec=C.JobSpec(model="quick", prompt="x")), timeout=10))
        assert err.code == "UNAUTHENTICATED" and "TLS gate" in err.message
        err = refused(lambda: pool_link_pb2_grpc.PoolLinkServiceStub(ch).Join(
            join_request("pool-z", "x"), timeout=10))
        assert err.code == "UNAUTHENTICATED"
        err = refused(lambda: health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(), timeout=10))
        assert err.code == "UNAUTHENTICATED"

    def refusals():
        found = [e for e in cluster.audit(last) if e.outcome == "UNAUTHENTICATED"]
        return found if len(found) >= 3 else None

    entries = cluster.wait("the refusals in the audit log", refusals)
    assert {(e.principal, e.action) for e in entries} == {
        ("anonymous", "ClientService/Submit"), ("anonymous", "PoolLinkService/Join"),
        ("anonymous", "Health/Check")}
    assert cluster.state() == before


def test_a_revoked_client_certificate_is_refused_from_its_next_call(cluster):
    cli("ca", "issue", "--client", "leaver", "--config", str(cluster.orch_cfg))
    m = cluster.material("leaver")
    stub = cluster.client(m)
    stub.ListModels(client_pb2.ListModelsRequest(), timeout=10)  # accepted while valid
    serial = format(pki.load_cert(m.cert.read_bytes()).serial_number, "x")
    cli("ca", "revoke", serial, "--config", str(cluster.orch_cfg))
    before = cluster.state()
    err = refused(lambda: stub.Submit(client_pb2.SubmitRequest(
        spec=C.JobSpec(model="quick", prompt="x")), timeout=10))
    assert err.code == "CERTIFICATE_REJECTED" and "revoked" in err.message and serial in err.message
    assert cluster.state() == before


def test_a_pool_certificate_cannot_be_used_as_a_client(cluster):
    pool = tls.Material(cluster.pool_pki / "key.pem", cluster.pool_pki / "cert.pem",
                        cluster.pool_pki / "ca.pem")
    before = cluster.state()
    err = refused(lambda: cluster.client(pool).Submit(client_pb2.SubmitRequest(
        spec=C.JobSpec(model="quick", prompt="x")), timeout=10))
    assert err.code == "PERMISSION_DENIED" and "pool certificate" in err.message
    # And the enrolment certificate gets nobody past Join.
    key, cert = pki.enrolment_identity()
    anon = grpc.ssl_channel_credentials(pool.ca.read_bytes(), key, cert)
    err = refused(lambda: cluster.client(creds=anon).ListJobs(client_pb2.ListJobsRequest(),
                                                              timeout=10))
    assert err.code == "UNAUTHENTICATED"
    assert cluster.state() == before


def test_a_worker_must_show_the_certificate_of_the_pool_that_announced_it(cluster):
    """The orchestrator pins <pool>.pool.llama-orch when it dials a worker: pool-a's
    worker, announced by any other pool, fails the handshake. And a worker answers
    only the orchestrator."""
    snap = cluster.client().GetClusterSnapshot(client_pb2.GetClusterSnapshotRequest(), timeout=10)
    endpoint = next(w.endpoint for p in snap.pools for w in p.workers if w.endpoint)
    orch = tls.Material(cluster.pki / "orchestrator.key", cluster.pki / "orchestrator.crt",
                        cluster.pki / "ca.crt")

    def status(pool_id: str, m: tls.Material) -> str:
        key, cert, ca = m.read()
        with grpc.secure_channel(endpoint, grpc.ssl_channel_credentials(ca, key, cert), options=[
                ("grpc.ssl_target_name_override", pki.pool_dns(pool_id))]) as ch:
            try:
                worker_pb2_grpc.WorkerServiceStub(ch).GetStatus(worker_pb2.GetStatusRequest(),
                                                                 timeout=10)
                return "ok"
            except grpc.RpcError as exc:
                return OrchError.from_rpc_error(exc).code

    assert status("pool-a", orch) == "ok"
    assert status("pool-b", orch) == "UNAVAILABLE"
    assert status("pool-a", cluster.material("tester")) == "PERMISSION_DENIED"


def test_join_token_refusals(cluster):
    stub = cluster.enrolment_stub()
    other = cli("ca", "join-token", "--pool-id", "pool-y", "--config", str(cluster.orch_cfg))
    # Last: making a token drops the expired ones, and this one must still be there.
    short = cli("ca", "join-token", "--pool-id", "pool-x", "--ttl", "1", "--config",
                str(cluster.orch_cfg))
    time.sleep(1.2)
    before = cluster.state()
    for req, why in [(join_request("pool-a", cluster.token), "already used"),
                     (join_request("pool-x", short), "expired"),
                     (join_request("pool-x", other), "another pool"),
                     (join_request("pool-x", ""), "required")]:
        err = refused(lambda: stub.Join(req, timeout=10))
        assert err.code == "JOIN_TOKEN_INVALID" and why in err.message, err.message
    assert cluster.state() == before


def test_signed_registration_refusals(cluster, tmp_path):
    """Lab mode checks a signed registration when one is sent (platform requires it)."""
    key_file = tmp_path / "provider.pem"
    cli("ca", "provider-keygen", "--out", str(key_file), "--config", str(cluster.orch_cfg))
    cli("ca", "enroll-provider", "--provider-id", "acme", f"{key_file}.pub",
        "--config", str(cluster.orch_cfg))
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    stub = cluster.enrolment_stub()

    def token() -> str:
        return cli("ca", "join-token", "--pool-id", "pool-c", "--config", str(cluster.orch_cfg))

    good = signed_registration(key, "pool-c", "10.0.0.9:9200", C.Inventory())
    assert stub.Join(join_request("pool-c", token(), good), timeout=10).certificate_pem
    tampered = signed_registration(key, "pool-c", "10.0.0.9:9200", C.Inventory())
    tampered.signature = bytes([tampered.signature[0] ^ 1]) + tampered.signature[1:]
    stranger = signed_registration(Ed25519PrivateKey.generate(), "pool-c", "x", C.Inventory())
    fresh = token()
    before = cluster.state()
    for signed, why in [(good, "replayed"), (tampered, "does not verify"),
                        (stranger, "unknown provider key")]:
        err = refused(lambda: stub.Join(join_request("pool-c", fresh, signed), timeout=10))
        assert err.code == "REGISTRATION_REJECTED" and why in err.message, err.message
    assert cluster.state() == before  # the token is still unused, no nonce was claimed


def test_a_pool_certificate_cannot_register_as_another_pool(cluster, tmp_path):
    stub = cluster.enrolment_stub()
    key = pki.new_key()
    token = cli("ca", "join-token", "--pool-id", "pool-d", "--config", str(cluster.orch_cfg))
    resp = stub.Join(pool_link_pb2.JoinRequest(pool_id="pool-d", join_token=token,
                                               csr_pem=pki.make_csr(key, "d").decode()), timeout=10)
    creds = grpc.ssl_channel_credentials(resp.ca_certificate_pem.encode(), pki.key_pem(key),
                                         resp.certificate_pem.encode())
    link = pool_link_pb2_grpc.PoolLinkServiceStub(cluster.channel(creds=creds))
    before = cluster.state()
    reg = pool_link_pb2.ConnectRequest(registration=pool_link_pb2.PoolRegistration(
        pool_id="pool-a", version="rogue"))
    err = refused(lambda: list(link.Connect(iter([reg]), timeout=10)))
    assert err.code == "PERMISSION_DENIED" and "pool-d" in err.message
    assert cluster.state() == before  # pool-a is still the real one


def test_every_refusal_and_enrolment_is_in_the_audit_log(cluster):
    from llama_orch.v1 import admin_pb2, admin_pb2_grpc
    admin = admin_pb2_grpc.AdminServiceStub(cluster.channel(cluster.material("tester")))
    entries = admin.ListAuditEntries(admin_pb2.ListAuditEntriesRequest(page_size=1000),
                                     timeout=10).entries
    seen = {(e.principal, e.action, e.outcome) for e in entries}
    for row in [("anonymous", "PoolLinkService/Join", "OK"),  # pool-a's first join
                ("anonymous", "PoolLinkService/Join", "JOIN_TOKEN_INVALID"),
                ("anonymous", "PoolLinkService/Join", "REGISTRATION_REJECTED"),
                ("llama-orch://pool/pool-a", "ClientService/Submit", "PERMISSION_DENIED"),
                ("llama-orch://client/leaver", "ClientService/Submit", "CERTIFICATE_REJECTED"),
                ("anonymous", "ClientService/ListJobs", "UNAUTHENTICATED"),
                ("llama-orch://pool/pool-d", "PoolLinkService/Connect", "PERMISSION_DENIED")]:
        assert row in seen, (row, sorted(seen))


def test_renewal_keeps_the_open_stream_and_new_connections_use_the_new_certificate(cluster):
    from pool_manager.enroll import PoolIdentity
    from common import config as config_mod
    import asyncio

    cfg = config_mod.load(cluster.pool_cfg)
    cfg.pool.id = "pool-a"
    identity = PoolIdentity(cfg)
    old = identity.certificate().serial_number
    stub = cluster.client()
    pid_before = [w.pid for p in stub.GetClusterSnapshot(
        client_pb2.GetClusterSnapshotRequest(), timeout=10).pools for w in p.workers]
    # What the pool manager's timer does at two thirds of the lifetime, on its files.
    asyncio.run(identity.renew(lambda: ("", C.Inventory())))
    new = identity.certificate().serial_number
    assert new != old
    time.sleep(1.0)  # three heartbeats on the old stream
    snap = stub.GetClusterSnapshot(client_pb2.GetClusterSnapshotRequest(), timeout=10)
    assert [p.pool_id for p in snap.pools] == ["pool-a"]
    assert [w.pid for p in snap.pools for w in p.workers] == pid_before
    assert "pool.link_lost" not in (cluster.root / "pool-a.log").read_text()
    # A new job still runs (the worker's server picks up the renewed files for new
    # connections; the orchestrator's open channel keeps its session).
    job = stub.Submit(client_pb2.SubmitRequest(spec=C.JobSpec(
        model="quick", prompt="After renewal.", sampling=C.SamplingParams(max_tokens=4))),
        timeout=30).job
    done = cluster.wait("the job finishing", lambda: (j := stub.GetJob(client_pb2.GetJobRequest(
        job_id=job.job_id), timeout=10).job).status in TERMINAL and j, timeout=120)
    assert done.status == C.JOB_STATUS_SUCCEEDED
    cluster.old_serials = (old, new)


def test_a_revoked_pool_is_cut_off_at_its_next_heartbeat(cluster):
    for serial in cluster.old_serials:
        cli("ca", "revoke", format(serial, "x"), "--config", str(cluster.orch_cfg))
    proc = cluster.procs["pool-a"]
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the revoked pool manager kept running:\n{logs(cluster.root)}")
    assert proc.returncode == 2
    assert "CERTIFICATE_REJECTED" in (cluster.root / "pool-a.log").read_text()
    cluster.wait("pool-a leaving the snapshot", lambda: "pool-a" not in cluster.state()[0])


def test_platform_mode_pools_sign_every_join_and_connect(tmp_path):
    """Platform: a pool manager without a provider key does not start; one whose key is
    not enrolled is refused at Join; an enrolled one joins and registers (both signed)."""
    c = Cluster(tmp_path)
    for path in (c.orch_cfg, c.pool_cfg):
        path.write_text(path.read_text().replace('mode = "lab"', 'mode = "platform"')
                        .replace("auth = false  #", "#"))
    key_file = tmp_path / "provider.pem"
    cli("ca", "init", "--config", str(c.orch_cfg))
    cli("ca", "issue", "--client", "tester", "--config", str(c.orch_cfg))
    cli("ca", "provider-keygen", "--out", str(key_file), "--config", str(c.orch_cfg))
    orch = start_daemon(tmp_path, "orchestrator.log", "orchestrator", "--config", str(c.orch_cfg))

    def pool_manager(name: str, provider_key: str | None) -> subprocess.Popen:
        cfg = tmp_path / f"{name}.toml"
        text = c.pool_cfg.read_text().replace(str(tmp_path / "pool"), str(tmp_path / name))
        if provider_key is not None:
            text = text.replace("[security]", f'[security]\nprovider_key = "{provider_key}"')
        cfg.write_text(text)
        token = cli("ca", "join-token", "--pool-id", name, "--config", str(c.orch_cfg))
        return subprocess.Popen(
            [sys.executable, "-m", "pool_manager", "--config", str(cfg), "--pool-id", name,
             "--listen", f"127.0.0.1:{free_port()}"], stdout=open(tmp_path / f"{name}.log", "ab"),
            stderr=subprocess.STDOUT, env={**os.environ, "LLAMA_ORCH_JOIN_TOKEN": token})

    procs = [orch]
    try:
        c.wait("the orchestrator serving over mTLS", lambda: health_pb2_grpc.HealthStub(
            c.channel(c.material("tester"))).Check(health_pb2.HealthCheckRequest(), timeout=1))
        procs.append(unkeyed := pool_manager("no-key", None))
        assert unkeyed.wait(60) == 2
        assert "security.provider_key" in (tmp_path / "no-key.log").read_text()
        procs.append(stranger := pool_manager("stranger", str(key_file)))
        assert stranger.wait(60) == 2
        assert "REGISTRATION_REJECTED: unknown provider key" in (tmp_path / "stranger.log").read_text()
        assert not (tmp_path / "stranger" / "pki" / "pool-stranger" / "cert.pem").exists()
        cli("ca", "enroll-provider", f"{key_file}.pub", "--config", str(c.orch_cfg))
        procs.append(good := pool_manager("good", str(key_file)))
        c.wait("the signed pool registering", lambda: "registered as good" in (
            tmp_path / "good.log").read_text())
        assert good.poll() is None
        nonces = json.loads((c.pki / "nonces.json").read_text())
        assert len(nonces) == 2  # one signed Join, one signed Connect
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
