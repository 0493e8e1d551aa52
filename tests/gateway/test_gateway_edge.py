"""What every request gets at the edge: correlation ids, credentials passed through,
metrics and health; HEAD as GET; CORS when configured."""

from __future__ import annotations

import re

import httpx
import pytest

from gateway.app import create_app
from tests.gateway.conftest import in_process

HELLO = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}]}


async def test_correlation_id_is_propagated_to_grpc_and_echoed(client, orchestrator):
    r = await client.post("/v1/chat/completions", json=HELLO,
                          headers={"X-Correlation-Id": "req-42"})
    assert r.headers["x-correlation-id"] == "req-42"
    assert orchestrator.metadata[-1]["x-correlation-id"] == "req-42"


async def test_correlation_id_is_echoed_on_errors_and_streams(client, orchestrator):
    r = await client.post("/v1/chat/completions", json={"model": "tiny"},
                          headers={"X-Correlation-Id": "bad-req"})
    assert (r.status_code, r.headers["x-correlation-id"]) == (400, "bad-req")
    r = await client.post("/v1/chat/completions", json={**HELLO, "stream": True},
                          headers={"X-Correlation-Id": "stream-1"})
    assert r.headers["x-correlation-id"] == "stream-1"
    assert orchestrator.metadata[-1]["x-correlation-id"] == "stream-1"


@pytest.mark.parametrize("header", [None, "has space", "x" * 500],
                         ids=["absent", "invalid", "too-long"])
async def test_correlation_id_is_generated_when_absent_or_unusable(client, orchestrator, header):
    headers = {"X-Correlation-Id": header} if header else {}
    r = await client.get("/v1/models", headers=headers)
    cid = r.headers["x-correlation-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", cid)
    assert orchestrator.metadata[-1]["x-correlation-id"] == cid


async def test_authorization_is_passed_to_the_orchestrator(client, orchestrator):
    await client.get("/v1/models", headers={"Authorization": "Bearer sk-abc"})
    assert orchestrator.metadata[-1]["authorization"] == "Bearer sk-abc"


async def test_idempotency_key_is_passed_to_generate(client, orchestrator):
    await client.post("/v1/chat/completions", json=HELLO, headers={"Idempotency-Key": "k-1"})
    assert orchestrator.requests[-1].idempotency_key == "k-1"


async def test_metrics_count_requests_by_route_template_and_status(client):
    await client.post("/v1/chat/completions", json=HELLO)
    await client.get("/v1/models/tiny")
    await client.get("/v1/models/nope")
    text = (await client.get("/metrics")).text
    assert re.search(r'gateway_http_requests_total\{component="gateway",method="POST",'
                     r'route="/v1/chat/completions",status="200"\} 1\.0', text)
    assert 'route="/v1/models/{model:path}",status="404"' in text
    assert "nope" not in text and "job-0001" not in text


async def test_stream_errors_are_counted_by_code(client, orchestrator):
    from tests.gateway.scripted_orchestrator import error, queued

    orchestrator.script = [queued(), error("WORKER_CRASHED")]
    await client.post("/v1/chat/completions", json={**HELLO, "stream": True})
    text = (await client.get("/metrics")).text
    assert ('gateway_stream_errors_total{code="WORKER_CRASHED",component="gateway",'
            'route="/v1/chat/completions"} 1.0') in text


async def test_healthz(client):
    r = await client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"


async def test_a_gateway_bug_is_a_500_openai_error_with_the_correlation_id(client, monkeypatch):
    from gateway.openai import models

    def broken(info):
        raise RuntimeError("bug")

    monkeypatch.setattr(models, "model_object", broken)
    r = await client.get("/v1/models", headers={"X-Correlation-Id": "bug-1"})
    assert r.status_code == 500
    assert r.headers["x-correlation-id"] == "bug-1"
    assert r.json()["error"] == {"message": "internal gateway error", "type": "server_error",
                                 "param": None, "code": "internal"}


# ---- HEAD ---------------------------------------------------------------------------


async def test_head_is_get_without_the_body(client, orchestrator):
    get = await client.get("/v1/models")
    r = await client.head("/v1/models", headers={"X-Correlation-Id": "head-1"})
    assert (r.status_code, r.content) == (200, b"")
    for name in ("content-type", "content-length"):
        assert r.headers[name] == get.headers[name], name
    assert r.headers["x-correlation-id"] == "head-1"
    text = (await client.get("/metrics")).text
    assert 'method="HEAD",route="/v1/models",status="200"' in text


async def test_head_of_a_post_only_route_is_405_and_allow_names_head_beside_get(client):
    r = await client.head("/v1/chat/completions")
    assert (r.status_code, r.headers["allow"]) == (405, "POST")
    r = await client.post("/v1/models")
    assert (r.status_code, r.headers["allow"]) == (405, "GET, HEAD")


async def test_head_of_a_stream_ends_after_its_headers(http_url):
    # A server-sent event stream never ends by itself; HEAD must not wait for it.
    async with httpx.AsyncClient(base_url=http_url, timeout=10) as c:
        r = await c.head("/v2/events")
    assert (r.status_code, r.content) == (200, b"")
    assert r.headers["content-type"].startswith("text/event-stream")


# ---- CORS (opt in: gateway.cors_origins) ---------------------------------------------

ORIGIN = "http://localhost:3000"
PREFLIGHT = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers":
                 "authorization,content-type,idempotency-key,x-correlation-id"}


@pytest.fixture
async def cors_client(orchestrator):
    async with in_process(create_app(orchestrator.address, cors_origins=[ORIGIN])) as c:
        yield c


async def test_cors_is_off_without_cors_origins(orchestrator):
    # The default (no origins) is as before CORS existed: a browser on another origin
    # gets no Access-Control-* headers, so it may not read the answers.
    async with in_process(create_app(orchestrator.address, cors_origins=[])) as c:
        r = await c.options("/v1/chat/completions", headers=PREFLIGHT)
        assert r.status_code == 405
        r = await c.get("/v1/models", headers={"Origin": ORIGIN})
    assert r.status_code == 200
    assert not [h for h in r.headers if h.startswith("access-control-")]


async def test_a_preflight_is_answered_without_an_api_key(cors_client, orchestrator):
    r = await cors_client.options("/v1/chat/completions", headers=PREFLIGHT)
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == ORIGIN
    allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "idempotency-key", "x-correlation-id"} <= allowed
    assert "POST" in r.headers["access-control-allow-methods"]
    # Answered at the edge: no route ran, so nothing asked the orchestrator (which
    # checks API keys).
    assert orchestrator.requests == [] and orchestrator.metadata == []


@pytest.mark.parametrize("method,path,body,status", [
    ("POST", "/v1/chat/completions", HELLO, 200),
    ("POST", "/v1/chat/completions", {"model": "tiny"}, 400),
    ("GET", "/v1/models", None, 200),
], ids=["answer", "error", "get"])
async def test_answers_to_an_allowed_origin_say_so_and_expose_the_correlation_id(
        cors_client, method, path, body, status):
    r = await cors_client.request(method, path, json=body, headers={"Origin": ORIGIN})
    assert r.status_code == status
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert r.headers["access-control-expose-headers"].lower() == "x-correlation-id"
    assert r.headers["x-correlation-id"]


async def test_another_origin_is_not_allowed(cors_client):
    r = await cors_client.options("/v1/chat/completions",
                                  headers={**PREFLIGHT, "Origin": "http://evil.example"})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    r = await cors_client.get("/v1/models", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers
