"""The usage ledger: what a finished job's record says, that every finished job gets
exactly one, the billing export and earnings over AdminService, and metrics that never
name a tenant."""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest
from prometheus_client import generate_latest

from common.config import Config, ModelConfig
from llama_orch.v1 import admin_pb2 as A, client_pb2 as CL, common_pb2 as C
from llama_orch.v1 import events_pb2 as E
from orchestrator import admission, metrics, usage
from orchestrator.catalog import TINY_PATH
from orchestrator.core import Orchestrator
from orchestrator.jobs import JobRecord
from orchestrator.registry import PoolRecord, WorkerRecord
from orchestrator.store import Store
from orchestrator.store.store import UsageRow
from orchestrator.types import JobState, WorkerPhase
from tests.orchestrator.test_auth import bearer, code_of, secure  # noqa: F401 - a fixture

GIB = 1 << 30
T0 = 1_700_000_000.0


@pytest.fixture
def orch(tmp_path) -> Orchestrator:
    cfg = Config()
    path = tmp_path / "m"
    path.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY_PATH / name, path / name)  # admission counts the prompt's tokens
    cfg.models["m"] = ModelConfig(ref=f"file:{path}", engine="sim", memory_bytes=3 * GIB,
                                  devices=2)
    return Orchestrator(cfg)  # no loops, no store: record_of is all these tests need


def finished_job(orch: Orchestrator, *, worker_id: str = "w1", pool_id: str = "p1",
                 started: float = T0 + 5, finished: float = T0 + 15,
                 state: JobState = JobState.SUCCEEDED) -> JobRecord:
    spec = C.JobSpec(model="m", prompt="the fox")
    job = JobRecord("job-1", spec, admission.admit(spec, orch.catalog, orch.cfg.orchestrator),
                    tenant_id="t-acme", created_at=T0)
    job.worker_id, job.pool_id, job.attempts = worker_id, pool_id, 1
    job.started_at, job.finished_at, job.state = started, finished, state
    job.usage = C.Usage(prompt_tokens=7, completion_tokens=40, total_tokens=47)
    return job


def add_worker(orch: Orchestrator, device_bytes: dict[str, int], slots: int = 1,
               estimate: int = GIB) -> WorkerRecord:
    w = WorkerRecord("w1", "p1", orch.catalog.resolve("m").ref, ("d0", "d1"), estimate,
                     phase=WorkerPhase.READY, device_bytes=device_bytes, slots=slots)
    orch.registry.workers[w.worker_id] = w
    return w


# ---- the figures of one record (usage.py's docstring) ------------------------------------------

VRAM_CASES = {
    # worker state -> expected vram_byte_seconds for 10 s of running
    "reported-bytes-one-slot": (dict(device_bytes={"d0": 4 * GIB, "d1": 2 * GIB}), 6 * GIB * 10),
    "batched-worker-shares": (dict(device_bytes={"d0": 4 * GIB, "d1": 2 * GIB}, slots=3),
                              6 * GIB * 10 / 3),
    "no-report-uses-estimate": (dict(device_bytes={}, estimate=GIB), 2 * GIB * 10),
    "worker-gone-uses-model": (None, 3 * GIB * 2 * 10),
}


@pytest.mark.parametrize("worker,vram", VRAM_CASES.values(), ids=VRAM_CASES.keys())
def test_vram_is_held_bytes_times_running_seconds_over_slots(orch, worker, vram):
    if worker is not None:
        add_worker(orch, **worker)
    row = usage.record_of(orch, finished_job(orch))
    assert row.vram_byte_seconds == pytest.approx(vram)
    assert (row.duration_ms, row.queue_ms, row.started_at) == (10_000, 5_000, T0 + 5)


def test_a_record_carries_the_job_its_tenant_tokens_and_outcome(orch):
    add_worker(orch, {"d0": GIB})
    job = finished_job(orch)
    assert usage.record_of(orch, job) == UsageRow(
        job_id="job-1", tenant_id="t-acme", model_ref=job.model_ref, status="succeeded",
        finished_at=T0 + 15, created_at=T0, pool_id="p1", provider_id="p1", error_code="",
        prompt_tokens=7, completion_tokens=40, attempts=1, started_at=T0 + 5,
        duration_ms=10_000, queue_ms=5_000, vram_byte_seconds=GIB * 10.0)


def test_a_job_that_never_ran_costs_no_vram_and_queued_until_it_ended(orch):
    job = finished_job(orch, worker_id="", pool_id="", started=0.0, state=JobState.CANCELLED)
    row = usage.record_of(orch, job)
    assert (row.pool_id, row.provider_id, row.started_at, row.duration_ms, row.queue_ms,
            row.vram_byte_seconds, row.status) == ("", "", 0.0, 0, 15_000, 0.0, "cancelled")


def test_the_provider_is_the_pools_provider_key_else_the_pool(orch):
    plain = PoolRecord("p1", C.Inventory())
    orch.registry.pools["p1"] = plain
    assert usage.provider_of(orch, "p1") == "p1"
    plain.provider_key_id = "ed25519:" + "ab" * 16  # as a signed registration sets it
    assert usage.provider_of(orch, "p1") == "ed25519:" + "ab" * 16
    assert usage.provider_of(orch, "gone") == "gone" and usage.provider_of(orch, "") == ""


# ---- every finished job, exactly once ------------------------------------------------------

@pytest.fixture
async def live(tmp_path):
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}")
    orch = Orchestrator(Config(), store=store)
    await orch.start()
    yield orch, store
    await orch.stop()
    await store.close()


async def test_every_finished_job_writes_one_record_and_a_second_finish_replaces_it(live):
    orch, store = live
    spec = C.JobSpec(model="tiny", prompt="the fox")
    a, _ = await orch.submit(spec, tenant_id="t-a")
    b, _ = await orch.submit(spec, tenant_id="t-b")
    queued, _ = await orch.submit(spec, tenant_id="t-a")  # not finished: no record
    for job in (a, b):
        await orch.cancel(job.job_id)
    await store.settle()
    rows = {r.job_id: r for r in await store.usage_records()}
    assert set(rows) == {a.job_id, b.job_id} and queued.job_id not in rows
    assert {(r.tenant_id, r.status, r.error_code) for r in rows.values()} == {
        ("t-a", "cancelled", "CANCELLED"), ("t-b", "cancelled", "CANCELLED")}
    usage.job_finished(orch, a)  # finished again (e.g. recovered): still one record
    await store.settle()
    assert sorted(r.job_id for r in await store.usage_records()) == sorted(rows)


async def test_a_record_the_store_refuses_is_logged_never_raised(live, capsys):
    orch, store = live
    job, _ = await orch.submit(C.JobSpec(model="tiny", prompt="x"), tenant_id="t-a")
    await store.close()
    job.state, job.finished_at = JobState.CANCELLED, T0
    usage.job_finished(orch, job)  # must not raise: a bill never wedges a job's end
    assert '"code":"usage.lost"' in capsys.readouterr().err


# ---- the billing export ------------------------------------------------------------------

def rec(i: int, tenant: str, **kw) -> UsageRow:
    values = dict(job_id=f"job-{i}", tenant_id=tenant, model_ref="file:/m", status="succeeded",
                  finished_at=T0 + i, created_at=T0, pool_id="p1", provider_id="p1",
                  prompt_tokens=i, completion_tokens=10 * i, started_at=T0 + 0.5,
                  duration_ms=100 * i, vram_byte_seconds=1.5 * i)
    return UsageRow(**{**values, **kw})


def test_the_export_renders_records_and_per_tenant_totals_as_csv_and_json():
    records = [rec(1, "t-b"), rec(2, "t-a"), rec(3, "t-b")]
    found = usage.Export("", T0, T0 + 100, records, usage.totals(records))
    assert found.totals == [usage.Totals("t-a", 1, 2, 20, 200, 3.0),
                            usage.Totals("t-b", 2, 4, 40, 400, 6.0)]
    rows = list(csv.DictReader(io.StringIO(found.render("csv"))))
    assert [(r["row"], r["job_id"], r["tenant_id"]) for r in rows] == [
        ("job", "job-1", "t-b"), ("job", "job-2", "t-a"), ("job", "job-3", "t-b"),
        ("total", "", "t-a"), ("total", "", "t-b")]
    assert rows[0]["finished_at"] == "2023-11-14T22:13:21.000Z" and rows[0]["jobs"] == "1"
    assert (rows[4]["jobs"], rows[4]["prompt_tokens"], rows[4]["completion_tokens"]) == \
        ("2", "4", "40")
    doc = json.loads(found.render("json"))
    assert doc["from"] == "2023-11-14T22:13:20.000Z" and doc["tenant_id"] is None
    assert [r["job_id"] for r in doc["records"]] == ["job-1", "job-2", "job-3"]
    assert doc["records"][1]["tenant_id"] == "t-a" and doc["records"][1]["started_at"]
    assert doc["totals"][1] == {"tenant_id": "t-b", "jobs": 2, "prompt_tokens": 4,
                                "completion_tokens": 40, "duration_ms": 400,
                                "vram_byte_seconds": 6.0}
    with pytest.raises(ValueError):
        found.render("xml")


def ts(seconds: float):
    from google.protobuf import timestamp_pb2
    t = timestamp_pb2.Timestamp()
    t.FromNanoseconds(int(seconds * 1e9))
    return t


async def test_export_usage_and_earnings_over_the_admin_api(secure):
    s = await secure()
    admin, client = bearer(await s.key("ops", "admin")), bearer(await s.key("a"))
    await s.key("b")
    s.store.append_usage([rec(1, "t-a"), rec(2, "t-b"), rec(3, "t-a"),
                          rec(4, "t-a", pool_id="p2", provider_id="ed25519:cd"),
                          rec(50, "t-a")])

    got = await s.admin.ExportUsage(A.ExportUsageRequest(
        tenant_id="t-a", start=ts(T0 + 1), end=ts(T0 + 50), format="csv"), metadata=admin)
    assert [(r.job_id, r.tenant_id, r.completion_tokens, r.provider_id) for r in got.records] == [
        ("job-1", "t-a", 10, "p1"), ("job-3", "t-a", 30, "p1"), ("job-4", "t-a", 40, "ed25519:cd")]
    assert got.records[0].finished_at.seconds == int(T0 + 1) and got.records[0].vram_seconds == 1.5
    totals = [r for r in csv.DictReader(io.StringIO(got.rendered)) if r["row"] == "total"]
    assert [(t["tenant_id"], t["jobs"], t["completion_tokens"]) for t in totals] == [
        ("t-a", "3", "80")]
    everyone = json.loads((await s.admin.ExportUsage(A.ExportUsageRequest(),
                                                     metadata=admin)).rendered)
    assert [t["tenant_id"] for t in everyone["totals"]] == ["t-a", "t-b"]
    assert len(everyone["records"]) == 5

    earned = (await s.admin.GetEarnings(A.GetEarningsRequest(end=ts(T0 + 50)),
                                        metadata=admin)).earnings
    assert [(e.pool_id, e.provider_id, e.jobs, e.tokens, e.vram_seconds) for e in earned] == [
        ("p2", "ed25519:cd", 1, 44, 6.0), ("p1", "p1", 3, 66, 9.0)]

    for bad, code in ((A.ExportUsageRequest(format="xml"), "INVALID_ARGUMENT"),
                      (A.ExportUsageRequest(tenant_id="t-nobody"), "NOT_FOUND"),
                      (A.ExportUsageRequest(start=ts(T0 + 5), end=ts(T0 + 5)), "INVALID_ARGUMENT")):
        assert await code_of(s.admin.ExportUsage(bad, metadata=admin)) == code
    assert await code_of(s.admin.ExportUsage(A.ExportUsageRequest(), metadata=client)) == \
        "PERMISSION_DENIED"
    assert await code_of(s.admin.GetEarnings(A.GetEarningsRequest(), metadata=client)) == \
        "PERMISSION_DENIED"


# ---- metrics never name a tenant -----------------------------------------------------------

@pytest.mark.parametrize("mode", ["lab", "platform"])
async def test_metrics_count_usage_but_never_carry_a_tenant_id(secure, mode):
    s = await secure(mode)
    names = ("tenant-alpha-7f3e", "tenant-bravo-91c2")
    keys = [bearer(await s.key(n)) for n in names]
    before = generate_latest(metrics.REGISTRY).decode()
    await s.admin.SetQuota(A.SetQuotaRequest(tenant_id=s.tenants[names[1]], quota=A.Quota(
        submit_rate_per_second=0.5)), metadata=bearer(await s.key("ops", "admin")))
    for md in keys:
        job = (await s.client.Submit(CL.SubmitRequest(spec=C.JobSpec(
            model="tiny", prompt="the fox")), metadata=md)).job
        await s.client.CancelJob(CL.CancelJobRequest(job_id=job.job_id), metadata=md)
    assert await code_of(s.client.Submit(CL.SubmitRequest(spec=C.JobSpec(
        model="tiny", prompt="the fox")), metadata=keys[1])) == "RATE_LIMITED"
    await s.store.settle()
    assert {r.tenant_id for r in await s.store.usage_records()} == {
        s.tenants[n] for n in names}  # the ledger has them in plaintext ...

    text = generate_latest(metrics.REGISTRY).decode()  # ... the metrics never do
    for name in names:
        assert name not in text and s.tenants[name] not in text
    assert "tenant" not in text.lower()

    def sample(metric: str, page: str) -> float:
        for line in page.splitlines():
            if line.startswith(metric + "{") or line.startswith(metric + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0
    cancelled = 'orchd_usage_records_total{component="orchestrator",status="cancelled"}'
    limited = 'orchd_admissions_total{component="orchestrator",outcome="RATE_LIMITED"}'
    assert sample(cancelled, text) - sample(cancelled, before) == 2
    assert sample(limited, text) - sample(limited, before) == 1
    assert [f for f in s.orch.facts.recent([E.FACT_KIND_AUDIT])]  # the SetQuota was a fact


# ---- the CLI's pieces (the e2e test runs the commands) -----------------------------------------

@pytest.mark.parametrize("text,seconds", [
    ("1700000000", T0), ("2023-11-14", T0 - 80_000), ("2023-11-14T22:13:20", T0),
    ("2023-11-14T22:13:20Z", T0), ("2023-11-15T00:13:20+02:00", T0)],
    ids=["epoch", "date", "naive-is-utc", "zulu", "offset"])
def test_cli_periods_are_iso_8601_or_epoch_seconds(text, seconds):
    from cli.usage import parse_when
    assert parse_when(text) == seconds


def test_cli_earnings_price_tokens_and_gib_hours_only_when_asked():
    from cli.usage import render_earnings
    from orchestrator.store.store import EarningRow
    rows = [EarningRow("p1", "ed25519:aa", 3, 1500, 500, float(GIB) * 7200)]
    [plain] = json.loads(render_earnings(rows, "json"))["earnings"]
    assert "amount" not in plain and plain["tokens"] == 2000
    [priced] = list(csv.DictReader(io.StringIO(render_earnings(rows, "csv", 0.5, 2.0))))
    assert float(priced["amount"]) == 2000 / 1000 * 0.5 + 2 * 2.0
