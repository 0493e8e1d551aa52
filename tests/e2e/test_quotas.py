"""Tenant quotas with real processes, in platform mode (mTLS, API keys, a pool manager
joining with a signed registration from an enrolled provider key).

One `sim` worker with 4 slots serves the model, and tenant "acme" may run 2 jobs at
once. acme submits 5 jobs at once: every one is admitted (nothing is rejected for
quota), at most 2 of them are ever dispatched or running at the same time although the
worker has 4 slots, the others wait in the queue with the reason "tenant quota: 2 of 2
concurrent jobs" (on the job, and in the fact stream acme watches), and all 5 succeed
as capacity frees. Workers are never shared between tenants: a job of tenant "other"
submitted meanwhile does not run on acme's worker while acme's jobs do.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common import pki
from llama_orch.v1 import admin_pb2 as A, admin_pb2_grpc, client_pb2 as CL, client_pb2_grpc
from llama_orch.v1 import common_pb2 as C, events_pb2 as E
from tests.stack import free_port, sim_model, start_daemon

pytestmark = pytest.mark.e2e

T = 30  # per-call deadline: generous for loaded machines (nothing asserts on timing)
QUOTA, JOBS, SLOTS = 2, 5, 4
TERMINAL = (C.JOB_STATUS_SUCCEEDED, C.JOB_STATUS_FAILED, C.JOB_STATUS_CANCELLED)
IN_SLOTS = (C.JOB_STATUS_DISPATCHED, C.JOB_STATUS_RUNNING)
REASON = f"tenant quota: {QUOTA} of {QUOTA} concurrent jobs"


def cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout.strip()


def logs(root: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
                     for p in sorted(root.glob("*.log")))


def write_config(root: Path, name: str, orch_port: int, model: Path, extra: str = "") -> Path:
    path = root / f"{name}.toml"
    path.write_text(f"""
mode = "platform"
data_dir = "{root / name}"
[orchestrator]
listen = "127.0.0.1:{orch_port}"
metrics_listen = "127.0.0.1:{free_port()}"
[pool]
heartbeat_ms = 300
[security]
{extra}
[models.quick]
ref = "file:{model}"
engine = "sim"
""")
    return path


def wait(root: Path, what: str, predicate, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if result := predicate():
                return result
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{what} did not happen:\n{logs(root)}")


def test_a_tenant_over_its_concurrent_job_quota_waits_and_then_completes(tmp_path):
    model = tmp_path / "model"
    # 24 tokens at 40 ms: about a second a job, long enough to watch who runs at once.
    sim_model(model, {
        "slots": SLOTS, "ttft_ms": 1, "ttft_spread_ms": 0, "itl_ms": 40, "itl_spread_ms": 0,
        "load_slowdown": 0})
    orch_port = free_port()
    addr = f"127.0.0.1:{orch_port}"
    orch_cfg = write_config(tmp_path, "orch", orch_port, model)
    key_file = tmp_path / "provider.pem"
    pool_cfg = write_config(tmp_path, "pool", orch_port, model, f'provider_key = "{key_file}"')
    cli("ca", "init", "--config", str(orch_cfg))
    cli("ca", "issue", "--client", "tester", "--config", str(orch_cfg))
    cli("ca", "provider-keygen", "--out", str(key_file), "--config", str(orch_cfg))
    cli("ca", "enroll-provider", f"{key_file}.pub", "--config", str(orch_cfg))
    cli("tenants", "create", "ops", "--config", str(orch_cfg))
    admin_key = cli("keys", "create", "--tenant", "ops", "--scope", "admin", "--name", "boot",
                    "--config", str(orch_cfg))

    pki_dir = tmp_path / "orch" / "pki"
    creds = grpc.ssl_channel_credentials(
        (pki_dir / "ca.crt").read_bytes(), (pki_dir / "client-tester.key").read_bytes(),
        (pki_dir / "client-tester.crt").read_bytes())
    procs: list[subprocess.Popen] = []
    try:
        procs.append(start_daemon(tmp_path, "orchestrator.log", "orchestrator", "--config",
                                  str(orch_cfg)))
        channel = grpc.secure_channel(addr, creds, options=[
            ("grpc.ssl_target_name_override", pki.ORCHESTRATOR_NAME)])
        wait(tmp_path, "the orchestrator serving over mTLS", lambda: health_pb2_grpc.HealthStub(
            channel).Check(health_pb2.HealthCheckRequest(), timeout=1))
        token = cli("ca", "join-token", "--pool-id", "pool-q", "--config", str(orch_cfg))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "pool_manager", "--config", str(pool_cfg), "--pool-id",
             "pool-q", "--listen", f"127.0.0.1:{free_port()}"],
            stdout=open(tmp_path / "pool.log", "ab"), stderr=subprocess.STDOUT,
            env={**os.environ, "LLAMA_ORCH_JOIN_TOKEN": token}))

        admin = admin_pb2_grpc.AdminServiceStub(channel)
        client = client_pb2_grpc.ClientServiceStub(channel)
        root = (("authorization", f"Bearer {admin_key}"),)
        wait(tmp_path, "the signed pool joining", lambda: [p for p in client.GetClusterSnapshot(
            CL.GetClusterSnapshotRequest(), metadata=root, timeout=T).pools
            if p.pool_id == "pool-q"])

        def tenant(name: str, quota: A.Quota) -> tuple[str, tuple]:
            tid = admin.CreateTenant(A.CreateTenantRequest(name=name, quota=quota),
                                     metadata=root, timeout=T).tenant.tenant_id
            key = admin.CreateApiKey(A.CreateApiKeyRequest(
                tenant_id=tid, scope=A.API_KEY_SCOPE_CLIENT, name=name), metadata=root,
                timeout=T).key.secret
            return tid, (("authorization", f"Bearer {key}"),)

        _, acme = tenant("acme", A.Quota(max_concurrent_jobs=QUOTA))
        _, other = tenant("other", A.Quota())

        def spec(i: int) -> C.JobSpec:
            return C.JobSpec(model="quick", prompt=f"Quota job {i}.",
                             sampling=C.SamplingParams(seed=i, max_tokens=24))

        # Every submission is admitted: quotas never reject, over-quota work waits.
        ids = [client.Submit(CL.SubmitRequest(spec=spec(i)), metadata=acme, timeout=T).job.job_id
               for i in range(JOBS)]

        def acme_jobs() -> list[C.Job]:
            """acme's jobs as of one instant (one call: the orchestrator answers it whole)."""
            listed = {j.job_id: j for j in client.ListJobs(CL.ListJobsRequest(page_size=100),
                                                           metadata=acme, timeout=T).jobs}
            return [listed[j] for j in ids]

        most, reasons, other_id = 0, set(), ""
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            jobs = acme_jobs()
            in_slots = [j for j in jobs if j.status in IN_SLOTS]
            most = max(most, len(in_slots))
            reasons |= {j.waiting_reason for j in jobs if j.status == C.JOB_STATUS_QUEUED}
            if in_slots and not other_id:  # acme holds the worker now: another tenant comes
                other_id = client.Submit(CL.SubmitRequest(spec=spec(99)), metadata=other,
                                         timeout=T).job.job_id
            if all(j.status in TERMINAL for j in jobs):
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"acme's jobs did not finish:\n{logs(tmp_path)}")

        jobs = acme_jobs()
        assert [j.status for j in jobs] == [C.JOB_STATUS_SUCCEEDED] * JOBS, [
            (j.status, j.error.code, j.error.message) for j in jobs]
        assert all(j.attempts == 1 for j in jobs)  # waited, never refused or retried
        assert most == QUOTA, most  # never more at once, though the worker has 4 slots
        assert REASON in reasons, reasons
        # The job timestamps agree: at no instant did more than QUOTA of acme's jobs run.
        spans = [(j.started_at.ToNanoseconds(), j.finished_at.ToNanoseconds()) for j in jobs]
        overlap = max(sum(s <= t < f for s, f in spans) for t, _ in spans)
        assert overlap <= QUOTA, spans

        # The fact stream acme watches says why its jobs waited.
        facts = client.WatchFacts(CL.WatchFactsRequest(kinds=[E.FACT_KIND_JOB_WAITING]),
                                  metadata=acme, timeout=5)
        waited = []
        try:
            for r in facts:
                waited.append((r.fact.job_id, r.fact.message))
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err
        assert any(job_id in ids and msg == REASON for job_id, msg in waited), waited

        theirs = wait(tmp_path, "the other tenant's job finishing", lambda: (
            j := client.GetJob(CL.GetJobRequest(job_id=other_id), metadata=other,
                               timeout=T).job).status in TERMINAL and j)
        assert theirs.status == C.JOB_STATUS_SUCCEEDED, theirs.error.message
        # Never on one worker at the same time, by the orchestrator's own start and finish
        # times (two status samples a call apart could see one tenant's job end and the
        # other's start between them, which is allowed).
        start, end = theirs.started_at.ToNanoseconds(), theirs.finished_at.ToNanoseconds()
        shared = [j.job_id for j in jobs if j.worker_id == theirs.worker_id
                  and j.started_at.ToNanoseconds() < end and start < j.finished_at.ToNanoseconds()]
        assert not shared, f"another tenant's job ran on acme's worker with {shared}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
