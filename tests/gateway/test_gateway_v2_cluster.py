"""GET /v2/info, GET /v2/cluster and GET /v2/tasks: the cluster and its jobs as the web
UI reads them (docs/UI.md, gateway.v2.cluster)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import httpx
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from llama_orch.v1 import common_pb2

from common.errors import OrchError
from gateway.app import create_app
from gateway.v2.cluster import version
from tests.gateway.conftest import in_process
from tests.gateway.scripted_orchestrator import job_record

GiB = 1024**3


# ---- /v2/info -----------------------------------------------------------------------------

@pytest.mark.parametrize("mode,editable", [("home", True), ("lab", True), ("platform", False)])
async def test_info_has_the_orchestrators_mode(client, orchestrator, mode, editable):
    orchestrator.snapshot.mode = mode
    r = await client.get("/v2/info")
    assert r.json() == {"mode": mode, "version": version(), "policy_editable": editable}
    assert version() == "0.1.0"


@pytest.mark.parametrize("refusal", ["UNAUTHENTICATED", "PERMISSION_DENIED", "UNAVAILABLE"])
async def test_info_falls_back_to_the_configs_mode(orchestrator, refusal):
    # Any caller may read /v2/info, even one the orchestrator refuses its snapshot.
    orchestrator.snapshot_error = OrchError(refusal, "no")
    async with in_process(create_app(orchestrator.address, mode="platform")) as c:
        r = await c.get("/v2/info")
    assert (r.status_code, r.json()["mode"], r.json()["policy_editable"]) == (
        200, "platform", False)


async def test_info_passes_the_callers_credentials(client, orchestrator):
    await client.get("/v2/info", headers={"Authorization": "Bearer sk-1"})
    assert orchestrator.metadata[-1]["authorization"] == "Bearer sk-1"


# ---- /v2/cluster --------------------------------------------------------------------------

async def test_cluster_is_the_snapshot_in_v2_json(client):
    r = await client.get("/v2/cluster")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"fact_id", "time", "mode", "pools", "queue", "models", "pins",
                         "active_jobs"}
    assert body["mode"] == "home"
    assert body["queue"] == [{"priority": "interactive", "depth": 1},
                             {"priority": "batch", "depth": 0}]
    (pool,) = body["pools"]
    assert {k: pool[k] for k in ("pool_id", "state", "last_heartbeat", "address", "version",
                                 "provider_id")} == {
        "pool_id": "local", "state": "available", "last_heartbeat": "2023-11-14T22:13:25Z",
        "address": "127.0.0.1:9200", "version": "0.1.0", "provider_id": None}
    assert pool["inventory"]["devices"] == [{
        "id": "GPU-0", "index": 0, "kind": "gpu", "name": "NVIDIA H200",
        "memory_total_bytes": 140 * GiB, "memory_used_bytes": 60 * GiB,
        "memory_free_bytes": 80 * GiB, "utilization_percent": 37.5, "temperature_c": 41.0}]
    assert {k: pool["inventory"][k] for k in ("hostname", "engines", "ram_total_bytes")} == {
        "hostname": "box-1", "engines": ["hf", "sim"], "ram_total_bytes": 128 * GiB}
    assert pool["workers"] == [{
        "worker_id": "w-1", "pool_id": "local", "model_ref": "file:/models/tiny",
        "engine": "hf", "device_ids": ["GPU-0"], "state": "busy", "endpoint": "unix:/run/w-1",
        "device_bytes": {"GPU-0": 52 * GiB}, "pid": 4242, "started_at": "2023-11-14T22:13:20Z",
        "active_jobs": 1, "slots": 4, "engine_version": "4.56.0", "model_digest": "abc",
        "last_used_at": None}]
    assert pool["models"] == [{"model_ref": "file:/models/tiny", "cached": True,
                               "preloaded": True, "size_bytes": 2 * GiB, "last_used_at": None}]
    tiny = body["models"][0]
    assert {k: tiny[k] for k in ("id", "ref", "aliases", "created", "pinned_device_ids",
                                 "supports_penalties")} == {
        "id": "tiny", "ref": "file:/models/tiny", "aliases": [], "created": 1_700_000_000,
        "pinned_device_ids": [], "supports_penalties": True}
    (job,) = body["active_jobs"]
    assert (job["id"], job["status"], job["waiting_reason"], job["events_url"]) == (
        "job-q", "queued", "no ready worker", "/v2/tasks/job-q/events")


async def test_an_orchestrator_that_stamps_nothing_gets_the_gateways_time(client):
    # fact_id 0 (no fact yet) and no pins are values, not unknowns: the UI then applies
    # every fact from the start and shows no pin.
    body = (await client.get("/v2/cluster")).json()
    assert (body["fact_id"], body["pins"]) == (0, [])
    stamped = datetime.fromisoformat(body["time"].replace("Z", "+00:00"))
    assert abs(datetime.now(timezone.utc) - stamped) < timedelta(seconds=30)


async def test_fact_id_pins_and_time_pass_through(client, orchestrator):
    when = Timestamp(seconds=1_700_000_100)
    orchestrator.snapshot.fact_id = 1234
    orchestrator.snapshot.time.CopyFrom(when)
    orchestrator.snapshot.pins.add(model_ref="file:/models/tiny", pool_id="local",
                                   device_ids=["GPU-0"], created_at=when)
    orchestrator.snapshot.pins.add(model_ref="file:/models/big", pool_id="local",
                                   device_ids=["GPU-0", "GPU-1"])
    body = (await client.get("/v2/cluster")).json()
    assert body["fact_id"] == 1234
    assert body["pins"] == [
        {"model_ref": "file:/models/tiny", "pool_id": "local", "device_ids": ["GPU-0"],
         "created_at": "2023-11-14T22:15:00Z"},
        {"model_ref": "file:/models/big", "pool_id": "local", "device_ids": ["GPU-0", "GPU-1"],
         "created_at": None}]
    assert body["time"] == "2023-11-14T22:15:00Z"


async def test_unknown_enum_values_show_as_numbers(client, orchestrator):
    # A newer orchestrator may add states; the UI shows what it gets.
    orchestrator.snapshot.pools[0].workers[0].state = 99
    orchestrator.snapshot.pools[0].state = common_pb2.POOL_STATE_DRAINING
    pool = (await client.get("/v2/cluster")).json()["pools"][0]
    assert (pool["state"], pool["workers"][0]["state"]) == ("draining", "99")


async def test_float32_readings_are_not_noisy(client, orchestrator):
    orchestrator.snapshot.pools[0].inventory.devices[0].utilization_percent = 0.1
    device = (await client.get("/v2/cluster")).json()["pools"][0]["inventory"]["devices"][0]
    assert device["utilization_percent"] == 0.1


@pytest.mark.parametrize("code,status,body_code", [
    ("UNAUTHENTICATED", 401, "invalid_api_key"), ("PERMISSION_DENIED", 403, "permission_denied"),
    ("UNAVAILABLE", 503, "unavailable")])
async def test_cluster_refusals_are_their_status(client, orchestrator, code, status, body_code):
    orchestrator.snapshot_error = OrchError(code, "no")
    r = await client.get("/v2/cluster")
    assert (r.status_code, r.json()["error"]["code"]) == (status, body_code)


async def test_cluster_behind_a_path_prefix_links_jobs_under_it(orchestrator):
    app = create_app(orchestrator.address)
    # As uvicorn --root-path /llama behind a proxy that strips /llama says.
    transport = httpx.ASGITransport(app=app, root_path="/llama")
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=transport, base_url="http://gateway") as c:
        r = await c.get("/v2/cluster")
    assert r.json()["active_jobs"][0]["events_url"] == "/llama/v2/tasks/job-q/events"


# ---- GET /v2/tasks ---------------------------------------------------------------------------

async def test_task_list_pages_through_the_jobs(client, orchestrator):
    for i in range(3):
        orchestrator.jobs[f"job-{i}"] = job_record(f"job-{i}", common_pb2.JOB_STATUS_RUNNING)
    r = await client.get("/v2/tasks?status=running&page_size=2")
    assert [j["id"] for j in r.json()["data"]] == ["job-0", "job-1"]
    assert r.json()["data"][0]["status"] == "running"
    token = r.json()["next_page_token"]
    r = await client.get(f"/v2/tasks?status=running&page_size=2&page_token={token}")
    assert r.json() == {"data": [r.json()["data"][0]], "next_page_token": None}
    assert r.json()["data"][0]["id"] == "job-2"
    sent = orchestrator.list_requests[-1]
    assert (list(sent.statuses), sent.page_size, sent.page_token) == (
        [common_pb2.JOB_STATUS_RUNNING], 2, token)


async def test_task_list_statuses_repeat_or_use_commas(client, orchestrator):
    await client.get("/v2/tasks?status=queued,running&status=Failed")
    sent = orchestrator.list_requests[-1]
    assert list(sent.statuses) == [common_pb2.JOB_STATUS_QUEUED, common_pb2.JOB_STATUS_RUNNING,
                                   common_pb2.JOB_STATUS_FAILED]
    assert sent.page_size == 100


@pytest.mark.parametrize("query,param", [
    ("status=done", "status"), ("page_size=0", "page_size"), ("page_size=501", "page_size"),
    ("page_size=ten", "page_size"), ("page_size=-1", "page_size")])
async def test_task_list_bad_query_is_400(client, orchestrator, query, param):
    r = await client.get(f"/v2/tasks?{query}")
    assert (r.status_code, r.json()["error"]["param"]) == (400, param)
    assert orchestrator.list_requests == []
