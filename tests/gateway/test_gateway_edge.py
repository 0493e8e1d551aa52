"""What every request gets at the edge: correlation ids, credentials passed through,
metrics and health."""

from __future__ import annotations

import re

import pytest

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
