"""Usage, billing, provider earnings and submission rate limits against real processes.

Lab mode with auth on and TLS off (platform mode's mTLS and signed registrations are
not what this test is about): an orchestrator, a pool manager running `sim` workers and
a gateway, each its own process. The operator bootstraps an admin key with the CLI and
makes tenants A and B through AdminService. Both run jobs (over gRPC and through the
gateway; one of A's is cancelled). Then the ledger must agree with the jobs: the
billing export (AdminService, CSV and JSON, and the CLI reading the store) and the
provider earnings add up to the token counts GetJob/ListJobs report, tenant by
tenant, with plaintext tenant ids — which the orchestrator's metrics never show. Last,
B bursts past its submission rate: the gateway answers 429 with Retry-After, gRPC
answers RATE_LIMITED with trailing `retry-after`, and no refused submission exists.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import httpx
import pytest

from common.errors import OrchError
from llama_orch.v1 import admin_pb2 as A, admin_pb2_grpc, client_pb2 as CL, client_pb2_grpc
from llama_orch.v1 import common_pb2 as C
from tests.stack import free_port, sim_model, start_daemon, wait_serving

pytestmark = pytest.mark.e2e

TERMINAL = (C.JOB_STATUS_SUCCEEDED, C.JOB_STATUS_FAILED, C.JOB_STATUS_CANCELLED)
T = 30  # per-call deadline: generous, for loaded CI machines


def write_config(root: Path, ports: dict[str, int]) -> Path:
    model = root / "sim-model"
    sim_model(model, {
        "ttft_ms": 1, "ttft_spread_ms": 0, "itl_ms": 20, "itl_spread_ms": 0})
    path = root / "llama-orch.toml"
    path.write_text(f"""
mode = "lab"
data_dir = "{root / 'data'}"
[security]
tls = false
[gateway]
listen = "127.0.0.1:{ports['gateway']}"
orchestrator = "127.0.0.1:{ports['orch']}"
[orchestrator]
listen = "127.0.0.1:{ports['orch']}"
metrics_listen = "127.0.0.1:{ports['metrics']}"
[pool]
listen = "127.0.0.1:{ports['pool']}"
heartbeat_ms = 500
[models.sim]
ref = "file:{model}"
engine = "sim"
""")
    return path


def cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def md(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def logs(root: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                     for p in sorted(root.glob("*.log")))


def sums(jobs) -> dict[str, int]:
    return {"jobs": len(jobs), "prompt_tokens": sum(j.usage.prompt_tokens for j in jobs),
            "completion_tokens": sum(j.usage.completion_tokens for j in jobs)}


def test_the_ledger_adds_up_and_a_burst_is_rate_limited(tmp_path):
    ports = {name: free_port() for name in ("gateway", "orch", "metrics", "pool")}
    config = write_config(tmp_path, ports)
    orchestrator, base = f"127.0.0.1:{ports['orch']}", f"http://127.0.0.1:{ports['gateway']}"
    cli("tenants", "create", "ops", "--config", str(config))
    admin_key = cli("keys", "create", "--tenant", "ops", "--scope", "admin",
                    "--config", str(config)).strip()

    procs: dict[str, subprocess.Popen] = {}
    try:
        procs["orch"] = start_daemon(tmp_path, "orchestrator.log", "orchestrator",
                                     "--config", str(config))
        wait_serving(orchestrator)
        procs["pool"] = start_daemon(tmp_path, "pool.log", "pool_manager", "--config",
                                     str(config))
        procs["gateway"] = start_daemon(tmp_path, "gateway.log", "gateway", "--config",
                                        str(config))
        with grpc.insecure_channel(orchestrator) as ch, httpx.Client(base_url=base,
                                                                     timeout=120) as http:
            client = client_pb2_grpc.ClientServiceStub(ch)
            admin = admin_pb2_grpc.AdminServiceStub(ch)
            root = md(admin_key)
            tenants, keys = {}, {}
            for name in ("A", "B"):
                tenants[name] = admin.CreateTenant(A.CreateTenantRequest(
                    name=name, quota=A.Quota(submit_rate_per_second=50)), metadata=root,
                    timeout=T).tenant.tenant_id
                keys[name] = admin.CreateApiKey(A.CreateApiKeyRequest(
                    tenant_id=tenants[name], scope=A.API_KEY_SCOPE_CLIENT), metadata=root,
                    timeout=T).key.secret
            deadline = time.monotonic() + 120
            while True:  # the gateway answers (401 without a key is an answer)
                try:
                    http.get("/v1/models")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, f"no gateway:\n{logs(tmp_path)}"
                    time.sleep(0.2)
            while not client.GetClusterSnapshot(CL.GetClusterSnapshotRequest(), metadata=root,
                                                timeout=T).pools:
                assert time.monotonic() < deadline, f"the pool never joined:\n{logs(tmp_path)}"
                time.sleep(0.2)

            # ---- jobs for two tenants: gRPC for A (one cancelled), the gateway for B ----
            for i, n in enumerate((5, 12, 30)):
                client.Submit(CL.SubmitRequest(spec=C.JobSpec(
                    model="sim", prompt=f"A's prompt number {i}" * (i + 1),
                    sampling=C.SamplingParams(seed=i, max_tokens=n))), metadata=md(keys["A"]),
                    timeout=T)
            doomed = client.Submit(CL.SubmitRequest(spec=C.JobSpec(
                model="sim", prompt="cancel me", sampling=C.SamplingParams(max_tokens=500))),
                metadata=md(keys["A"]), timeout=T).job
            time.sleep(0.5)
            client.CancelJob(CL.CancelJobRequest(job_id=doomed.job_id), metadata=md(keys["A"]),
                             timeout=T)
            for i, n in enumerate((8, 16)):
                r = http.post("/v1/chat/completions", headers={
                    "authorization": f"Bearer {keys['B']}"}, json={
                    "model": "sim", "max_tokens": n, "seed": i,
                    "messages": [{"role": "user", "content": f"B asks question {i}"}]})
                assert r.status_code == 200, (r.text, logs(tmp_path))
            with pytest.raises(grpc.RpcError):  # a refused job is no job: nothing to bill
                client.Submit(CL.SubmitRequest(spec=C.JobSpec(model="no-such-model",
                                                              prompt="x")),
                              metadata=md(keys["B"]), timeout=T)

            jobs = {}
            deadline = time.monotonic() + 120
            for name in ("A", "B"):
                while True:
                    jobs[name] = list(client.ListJobs(CL.ListJobsRequest(), metadata=md(keys[name]),
                                                      timeout=T).jobs)
                    if all(j.status in TERMINAL for j in jobs[name]):
                        break
                    assert time.monotonic() < deadline, f"jobs never ended:\n{logs(tmp_path)}"
                    time.sleep(0.2)
            assert [len(jobs["A"]), len(jobs["B"])] == [4, 2]
            statuses = sorted(C.JobStatus.Name(j.status) for j in jobs["A"])
            assert statuses == ["JOB_STATUS_CANCELLED"] + ["JOB_STATUS_SUCCEEDED"] * 3, \
                logs(tmp_path)
            expect = {tenants[n]: sums(jobs[n]) for n in ("A", "B")}
            assert all(e["completion_tokens"] > 0 for e in expect.values())

            # ---- the billing export: JSON and CSV, over AdminService and from the CLI ----
            doc = json.loads(admin.ExportUsage(A.ExportUsageRequest(format="json"),
                                               metadata=root, timeout=T).rendered)
            assert {t["tenant_id"]: {k: t[k] for k in ("jobs", "prompt_tokens",
                                                       "completion_tokens")}
                    for t in doc["totals"]} == expect, doc
            assert {r["job_id"] for r in doc["records"]} == {
                j.job_id for n in ("A", "B") for j in jobs[n]}
            [cancelled] = [r for r in doc["records"] if r["job_id"] == doomed.job_id]
            assert (cancelled["status"], cancelled["tenant_id"]) == ("cancelled", tenants["A"])
            for r in doc["records"]:
                if r["status"] == "succeeded":
                    assert r["pool_id"] and r["provider_id"] == r["pool_id"]  # lab: no key
                    assert r["vram_byte_seconds"] > 0 and r["duration_ms"] > 0
            one = admin.ExportUsage(A.ExportUsageRequest(tenant_id=tenants["B"], format="csv"),
                                    metadata=root, timeout=T)
            rows = list(csv.DictReader(io.StringIO(one.rendered)))
            assert {r["tenant_id"] for r in rows} == {tenants["B"]}
            [total] = [r for r in rows if r["row"] == "total"]
            assert {k: int(total[k]) for k in expect[tenants["B"]]} == expect[tenants["B"]]
            assert sum(r.completion_tokens for r in one.records) == \
                expect[tenants["B"]]["completion_tokens"]
            rows = list(csv.DictReader(io.StringIO(cli(
                "usage", "export", "--tenant", "A", "--from", "2020-01-01", "--format", "csv",
                "--config", str(config)))))
            [total] = [r for r in rows if r["row"] == "total"]
            assert {k: int(total[k]) for k in expect[tenants["A"]]} == expect[tenants["A"]]
            on_cli = json.loads(cli("usage", "export", "--format", "json", "--config",
                                    str(config)))
            assert on_cli["totals"] == doc["totals"]

            # ---- provider earnings: the same tokens, per pool and provider ----
            ran = [j for n in ("A", "B") for j in jobs[n] if j.pool_id]
            [earned] = admin.GetEarnings(A.GetEarningsRequest(), metadata=root,
                                         timeout=T).earnings
            assert earned.jobs == len(ran) and earned.provider_id == earned.pool_id
            assert earned.tokens == sum(j.usage.prompt_tokens + j.usage.completion_tokens
                                        for j in ran)
            assert earned.vram_seconds == pytest.approx(
                sum(r["vram_byte_seconds"] for r in doc["records"]))
            [ledger] = json.loads(cli("usage", "earnings", "--format", "json", "--config",
                                      str(config)))["earnings"]
            assert (ledger["prompt_tokens"], ledger["completion_tokens"]) == (
                sum(j.usage.prompt_tokens for j in ran),
                sum(j.usage.completion_tokens for j in ran))

            # ---- metrics count the usage and never name a tenant ----
            text = urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics",
                                          timeout=T).read().decode()
            assert "orchd_usage_records_total" in text and "orchd_usage_tokens_total" in text
            for name in ("A", "B"):
                assert tenants[name] not in text
            assert "tenant" not in text.lower()

            # ---- B bursts past its rate: 429 + Retry-After, and nothing is stored ----
            admin.SetQuota(A.SetQuotaRequest(tenant_id=tenants["B"], quota=A.Quota(
                submit_rate_per_second=0.2)), metadata=root, timeout=T)  # burst 1
            answers = [http.post("/v2/tasks", headers={"authorization": f"Bearer {keys['B']}"},
                                 json={"model": "sim", "prompt": f"burst {i}", "max_tokens": 2})
                       for i in range(6)]
            codes = [r.status_code for r in answers]
            assert set(codes) <= {202, 429} and codes.count(202) <= 1 and codes[-1] == 429, codes
            for r in answers:
                if r.status_code == 429:
                    assert int(r.headers["retry-after"]) >= 1
                    assert r.json()["error"]["code"] == "rate_limited"
            with pytest.raises(grpc.RpcError) as err:
                client.Submit(CL.SubmitRequest(spec=C.JobSpec(model="sim", prompt="again")),
                              metadata=md(keys["B"]), timeout=T)
            assert OrchError.from_rpc_error(err.value).code == "RATE_LIMITED"
            assert int(dict(err.value.trailing_metadata())["retry-after"]) >= 1
            after = client.ListJobs(CL.ListJobsRequest(), metadata=md(keys["B"]), timeout=T).jobs
            assert len(after) == 2 + codes.count(202)
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
