"""API keys and tenant isolation against a real orchestrator in lab mode (auth on).

The operator bootstraps the first admin key with the CLI (straight in the store, before
the orchestrator starts), creates tenants A and B and their client keys through
AdminService, and then plays the adversary: no key, a garbage key, a forged secret for
a real key id, a revoked key, a client key calling AdminService, and tenant A reading,
streaming, cancelling and watching tenant B's job. Each is refused with its stable code,
each leaves an audit entry (read back through ListAuditEntries), and none changes
anything: B's job runs to the end untouched and the key list is as it was. Workers
run the `sim` engine, so no model weights are needed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from common.errors import OrchError
from llama_orch.v1 import admin_pb2 as A, admin_pb2_grpc, client_pb2 as CL, client_pb2_grpc
from llama_orch.v1 import common_pb2 as C
from tests.stack import free_port, sim_model, start_daemon, wait_serving

pytestmark = pytest.mark.e2e

TERMINAL = (C.JOB_STATUS_SUCCEEDED, C.JOB_STATUS_FAILED, C.JOB_STATUS_CANCELLED)
T = 30  # per-call deadline: generous, for loaded CI machines (no assertion is on timing)


def write_config(root: Path, orch_port: int, metrics_port: int) -> Path:
    model = root / "sim-model"
    # ~3 s per job: long enough to be running while tenant A tries to cancel it.
    sim_model(model, {
        "ttft_ms": 1, "ttft_spread_ms": 0, "itl_ms": 50, "itl_spread_ms": 0})
    path = root / "llama-orch.toml"
    path.write_text(f"""
mode = "lab"
data_dir = "{root / 'data'}"
[security]
tls = false
[orchestrator]
listen = "127.0.0.1:{orch_port}"
metrics_listen = "127.0.0.1:{metrics_port}"
[pool]
heartbeat_ms = 500
[models.sim]
ref = "file:{model}"
engine = "sim"
""")
    return path


def cli(*args: str) -> str:
    """Run `llama-orch ARGS`; its stdout (the CLI prints ids and keys there)."""
    done = subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout.strip()


def md(key: str = "", cid: str = "") -> tuple[tuple[str, str], ...]:
    pairs = (("authorization", f"Bearer {key}"),) if key else ()
    return pairs + ((("x-correlation-id", cid),) if cid else ())


def refusal(call) -> str:
    """The stable code of a call that must fail (unary, or a stream read to its end)."""
    with pytest.raises(grpc.RpcError) as err:
        result = call()
        if not hasattr(result, "ByteSize"):  # a stream: the refusal comes when read
            for _ in result:
                pass
    return OrchError.from_rpc_error(err.value).code


def logs(root: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                     for p in sorted(root.glob("*.log")))


def test_keys_scopes_and_tenant_isolation_in_lab_mode(tmp_path):
    orch_port, metrics_port = free_port(), free_port()
    config = write_config(tmp_path, orch_port, metrics_port)
    orchestrator = f"127.0.0.1:{orch_port}"

    # Bootstrap, before anything serves: the first tenant and admin key, from the CLI.
    ops = cli("tenants", "create", "ops", "--config", str(config))
    admin_key = cli("keys", "create", "--tenant", "ops", "--scope", "admin", "--name", "boot",
                    "--config", str(config))
    assert ops.startswith("t-") and admin_key.startswith("lo_")
    listed = cli("keys", "list", "--config", str(config))
    assert admin_key not in listed and admin_key.split("_")[1] in listed  # id yes, secret no

    procs: dict[str, subprocess.Popen] = {}
    try:
        procs["orch"] = start_daemon(tmp_path, "orchestrator.log", "orchestrator",
                                     "--config", str(config))
        wait_serving(orchestrator)
        procs["pool"] = start_daemon(tmp_path, "pool.log", "pool_manager", "--config",
                                     str(config), "--listen", f"127.0.0.1:{free_port()}")
        with grpc.insecure_channel(orchestrator) as ch:
            client = client_pb2_grpc.ClientServiceStub(ch)
            admin = admin_pb2_grpc.AdminServiceStub(ch)
            root = md(admin_key)

            # The operator sets up two tenants with a client key each.
            ta = admin.CreateTenant(A.CreateTenantRequest(name="A"), metadata=root,
                                    timeout=T).tenant.tenant_id
            tb = admin.CreateTenant(A.CreateTenantRequest(name="B"), metadata=root,
                                    timeout=T).tenant.tenant_id
            key_a, key_b = (admin.CreateApiKey(A.CreateApiKeyRequest(
                tenant_id=t, scope=A.API_KEY_SCOPE_CLIENT), metadata=root, timeout=T).key.secret
                for t in (ta, tb))
            doomed = admin.CreateApiKey(A.CreateApiKeyRequest(
                tenant_id=ta, scope=A.API_KEY_SCOPE_CLIENT, name="doomed"), metadata=root,
                timeout=T).key
            client.ListModels(CL.ListModelsRequest(), metadata=md(doomed.secret), timeout=T)
            admin.RevokeApiKey(A.RevokeApiKeyRequest(key_id=doomed.key_id), metadata=root,
                               timeout=T)

            deadline = time.monotonic() + 120
            while not client.GetClusterSnapshot(CL.GetClusterSnapshotRequest(), metadata=root,
                                                timeout=T).pools:
                assert time.monotonic() < deadline, f"the pool never joined:\n{logs(tmp_path)}"
                time.sleep(0.2)

            job_b = client.Submit(CL.SubmitRequest(spec=C.JobSpec(
                model="sim", prompt="B's private prompt", keep_output=True,
                sampling=C.SamplingParams(seed=7, max_tokens=60))), metadata=md(key_b),
                timeout=30).job
            assert job_b.tenant_id == tb
            keys_before = admin.ListApiKeys(A.ListApiKeysRequest(), metadata=root, timeout=T).keys

            # ---- the adversary ----
            ghost = "lo_0123456789abcdef_" + "x" * 43
            forged = f"lo_{admin_key.split('_')[1]}_" + "y" * 43
            jid = job_b.job_id
            rows = [  # (correlation id, the call, the code it must get)
                ("no-key", lambda: client.ListModels(CL.ListModelsRequest(), metadata=md(
                    cid="no-key"), timeout=T), "UNAUTHENTICATED"),
                ("no-key-admin", lambda: admin.ListApiKeys(A.ListApiKeysRequest(), metadata=md(
                    cid="no-key-admin"), timeout=T), "UNAUTHENTICATED"),
                ("garbage", lambda: client.GetJob(CL.GetJobRequest(job_id=jid), metadata=md(
                    "garbage", "garbage"), timeout=T), "UNAUTHENTICATED"),
                ("ghost", lambda: client.GetJob(CL.GetJobRequest(job_id=jid), metadata=md(
                    ghost, "ghost"), timeout=T), "UNAUTHENTICATED"),
                ("forged", lambda: admin.ListApiKeys(A.ListApiKeysRequest(), metadata=md(
                    forged, "forged"), timeout=T), "UNAUTHENTICATED"),
                ("revoked", lambda: client.ListModels(CL.ListModelsRequest(), metadata=md(
                    doomed.secret, "revoked"), timeout=T), "UNAUTHENTICATED"),
                ("escalate", lambda: admin.CreateApiKey(A.CreateApiKeyRequest(
                    tenant_id=ta, scope=A.API_KEY_SCOPE_ADMIN), metadata=md(key_a, "escalate"),
                    timeout=T), "PERMISSION_DENIED"),
                ("a-get", lambda: client.GetJob(CL.GetJobRequest(job_id=jid), metadata=md(
                    key_a, "a-get"), timeout=T), "NOT_FOUND"),
                ("a-cancel", lambda: client.CancelJob(CL.CancelJobRequest(job_id=jid),
                    metadata=md(key_a, "a-cancel"), timeout=T), "NOT_FOUND"),
                ("a-stream", lambda: client.StreamJob(CL.StreamJobRequest(job_id=jid),
                    metadata=md(key_a, "a-stream"), timeout=T), "NOT_FOUND"),
                ("a-watch", lambda: client.WatchFacts(CL.WatchFactsRequest(job_id=jid),
                    metadata=md(key_a, "a-watch"), timeout=T), "NOT_FOUND"),
            ]
            got = {cid: refusal(call) for cid, call, _ in rows}
            assert got == {cid: code for cid, _, code in rows}, logs(tmp_path)
            mine = client.ListJobs(CL.ListJobsRequest(), metadata=md(key_a), timeout=T).jobs
            assert jid not in {j.job_id for j in mine}

            # Nothing changed: B's job runs to its end, and B reads all of it.
            deadline = time.monotonic() + 120
            while (job := client.GetJob(CL.GetJobRequest(job_id=jid), metadata=md(key_b),
                                        timeout=T).job).status not in TERMINAL:
                assert time.monotonic() < deadline, f"B's job never ended:\n{logs(tmp_path)}"
                time.sleep(0.2)
            assert job.status == C.JOB_STATUS_SUCCEEDED, (job.error, logs(tmp_path))
            assert job.output and job.usage.completion_tokens > 0
            kinds = [r.event.WhichOneof("kind") for r in client.StreamJob(
                CL.StreamJobRequest(job_id=jid), metadata=md(key_b), timeout=30)]
            assert kinds[0] == "queued" and kinds[-1] == "end" and "error" not in kinds
            keys_after = admin.ListApiKeys(A.ListApiKeysRequest(), metadata=root, timeout=T).keys
            assert list(keys_after) == list(keys_before)

            # Every refusal is in the audit log, with who (as far as known) and the code.
            entries = {e.correlation_id: e for e in admin.ListAuditEntries(
                A.ListAuditEntriesRequest(page_size=1000), metadata=root, timeout=T).entries}
            key_id_a = key_a.split("_")[1]
            expect = {"no-key": ("anonymous", "ClientService/ListModels"),
                      "no-key-admin": ("anonymous", "AdminService/ListApiKeys"),
                      "garbage": ("anonymous", "ClientService/GetJob"),
                      "ghost": ("anonymous", "ClientService/GetJob"),
                      "forged": ("anonymous", "AdminService/ListApiKeys"),
                      "revoked": (doomed.key_id, "ClientService/ListModels"),
                      "escalate": (key_id_a, "AdminService/CreateApiKey"),
                      "a-get": (key_id_a, "ClientService/GetJob"),
                      "a-cancel": (key_id_a, "ClientService/CancelJob"),
                      "a-stream": (key_id_a, "ClientService/StreamJob"),
                      "a-watch": (key_id_a, "ClientService/WatchFacts")}
            for cid, (principal, action) in expect.items():
                assert cid in entries, (cid, sorted(entries))
                e = entries[cid]
                assert (e.principal, e.action, e.outcome) == (principal, action, got[cid]), cid
            # The operator's own actions are there too (lab audits AdminService).
            actions = [e.action for e in entries.values()]
            assert {"AdminService/CreateTenant", "AdminService/CreateApiKey",
                    "AdminService/RevokeApiKey"} <= set(actions)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
