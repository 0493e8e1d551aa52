"""The native task API: POST /v2/tasks (Submit), GET and DELETE /v2/tasks/{id}."""

from __future__ import annotations

import pytest
from llama_orch.v1 import common_pb2

from common.errors import OrchError
from gateway.app import create_app
from tests.gateway.conftest import in_process
from tests.gateway.scripted_orchestrator import (
    CREATED,
    DEFAULT_SEED,
    JOB_ID,
    job_record,
)

TASKS = "/v2/tasks"
PROMPT = {"model": "tiny", "prompt": "Once upon"}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}]}
INVALID, UNSUPPORTED = "invalid_argument", "unsupported_parameter"


async def test_submit_is_202_with_the_job_and_where_to_follow_it(client, orchestrator):
    r = await client.post(TASKS, json=PROMPT)
    assert r.status_code == 202, r.text
    body = r.json()
    assert {k: body[k] for k in ("id", "status", "events_url", "created", "model", "seed",
                                 "existing")} == {
        "id": "task-0001", "status": "queued", "events_url": "/v2/tasks/task-0001/events",
        "created": CREATED, "model": "tiny", "seed": DEFAULT_SEED, "existing": False}
    assert body["waiting_reason"] == "no ready worker"
    assert r.headers["location"] == "/v2/tasks/task-0001"
    assert orchestrator.requests == []  # Submit, never Generate
    spec = orchestrator.submits[-1].spec
    assert (spec.WhichOneof("input"), spec.prompt, spec.model) == ("prompt", "Once upon", "tiny")


async def test_body_becomes_the_job_spec(client, orchestrator):
    r = await client.post(TASKS, json={
        "model": "tiny",
        "messages": [{"role": "developer", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": "Hi"}], "name": "ann"}],
        "temperature": 0.5, "top_p": 0.9, "top_k": 40, "seed": 7, "stop": ["END"],
        "max_tokens": 20, "n": 2, "presence_penalty": 0.5, "frequency_penalty": -0.5,
        "logprobs": True, "top_logprobs": 3, "priority": "batch", "deadline_ms": 60_000,
        "keep_output": True, "detach": True, "user": "u-1", "some_future_field": 1})
    assert r.status_code == 202, r.text
    assert r.json()["seed"] == 7
    spec = orchestrator.submits[-1].spec
    assert [(m.role, m.content, m.name) for m in spec.chat.messages] == [
        ("system", "Be brief.", ""), ("user", "Hi", "ann")]
    s = spec.sampling
    assert s.temperature == pytest.approx(0.5) and s.top_p == pytest.approx(0.9)
    assert (s.top_k, s.seed, list(s.stop), s.max_tokens, s.n) == (40, 7, ["END"], 20, 2)
    assert (s.presence_penalty, s.frequency_penalty, s.logprobs, s.top_logprobs) == (
        0.5, -0.5, True, 3)
    assert (spec.priority, spec.deadline_ms, spec.keep_output, spec.detach, spec.user) == (
        common_pb2.PRIORITY_BATCH, 60_000, True, True, "u-1")


async def test_unset_fields_stay_unset(client, orchestrator):
    await client.post(TASKS, json=PROMPT)
    spec = orchestrator.submits[-1].spec
    for name in ("temperature", "top_p", "top_k", "seed", "presence_penalty", "frequency_penalty"):
        assert not spec.sampling.HasField(name), name
    assert (spec.sampling.max_tokens, spec.sampling.n, spec.deadline_ms, spec.keep_output,
            spec.detach, spec.priority) == (0, 1, 0, False, False, common_pb2.PRIORITY_INTERACTIVE)
    assert orchestrator.submits[-1].idempotency_key == ""


async def test_seed_and_top_p_ranges_are_openai_s(client, orchestrator):
    # Shared with /v1 (SamplingFields): a negative seed is its 64-bit two's complement,
    # top_p 0 is greedy (top_k 1, since the contract's top_p is (0, 1]).
    r = await client.post(TASKS, json={**PROMPT, "seed": -1, "top_p": 0})
    assert r.status_code == 202, r.text
    s = orchestrator.submits[-1].spec.sampling
    assert (s.seed, s.HasField("top_p"), s.top_k) == (2**64 - 1, False, 1)


async def test_same_idempotency_key_and_body_is_the_same_job(client, orchestrator):
    key = {"Idempotency-Key": "order-17"}
    first = await client.post(TASKS, json=PROMPT, headers=key)
    again = await client.post(TASKS, json=PROMPT, headers=key)
    assert (first.status_code, first.json()["existing"]) == (202, False)
    assert (again.status_code, again.json()["existing"]) == (200, True)
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert [s.idempotency_key for s in orchestrator.submits] == ["order-17", "order-17"]


async def test_same_idempotency_key_with_another_body_is_409(client):
    key = {"Idempotency-Key": "order-18"}
    assert (await client.post(TASKS, json=PROMPT, headers=key)).status_code == 202
    r = await client.post(TASKS, json={**PROMPT, "temperature": 1.0}, headers=key)
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "idempotency_conflict"
    assert r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("key", [b"k" * 257, "ключ".encode(), b"a\x7fb"],
                         ids=["too-long", "non-ascii", "control-char"])
async def test_unusable_idempotency_key_is_400_not_ignored(client, orchestrator, key):
    r = await client.post(TASKS, json=PROMPT, headers={"Idempotency-Key": key})
    assert r.status_code == 400
    assert (r.json()["error"]["param"], r.json()["error"]["code"]) == ("Idempotency-Key", INVALID)
    assert orchestrator.submits == []


def task(**fields):
    return {**PROMPT, **fields}


# (body, param, code): the OpenAI endpoints' validation, plus /v2's own fields.
BAD_BODIES = {
    "malformed-json": (b'{"model": "tiny",', None, INVALID),
    "not-an-object": (b"[1]", None, INVALID),
    "missing-model": ({"prompt": "x"}, "model", INVALID),
    "neither-prompt-nor-messages": ({"model": "tiny"}, "messages", INVALID),
    "prompt-and-messages": (task(messages=CHAT["messages"]), "messages", INVALID),
    "prompt-not-string": (task(prompt=5), "prompt", INVALID),
    "prompt-list": (task(prompt=["a"]), "prompt", INVALID),
    "empty-messages": ({"model": "tiny", "messages": []}, "messages", INVALID),
    "bad-role": ({"model": "tiny", "messages": [{"role": "robot", "content": "x"}]},
                 "messages[0].role", INVALID),
    "image-part": ({"model": "tiny", "messages": [{"role": "user",
                                                   "content": [{"type": "image_url"}]}]},
                   "messages[0].content", UNSUPPORTED),
    "temperature-high": (task(temperature=2.5), "temperature", INVALID),
    "top-p-negative": (task(top_p=-0.5), "top_p", INVALID),
    "seed-below-int64": (task(seed=-(2**63) - 1), "seed", INVALID),
    "n-above-limit": (task(n=9), "n", INVALID),
    "five-stops": (task(stop=["a", "b", "c", "d", "e"]), "stop", INVALID),
    "max-tokens-zero": (task(max_tokens=0), "max_tokens", INVALID),
    "logit-bias": (task(logit_bias={"1": 2}), "logit_bias", UNSUPPORTED),
    "unknown-priority": (task(priority="urgent"), "priority", INVALID),
    "detach-not-bool": (task(detach="yes"), "detach", INVALID),
    "keep-output-not-bool": (task(keep_output=1), "keep_output", INVALID),
    "deadline-negative": (task(deadline_ms=-1), "deadline_ms", INVALID),
    "deadline-over-uint32": (task(deadline_ms=2**32), "deadline_ms", INVALID),
    "deadline-string": (task(deadline_ms="60s"), "deadline_ms", INVALID),
    "top-logprobs-without-logprobs": (task(top_logprobs=2), "top_logprobs", INVALID),
    "top-logprobs-high": (task(logprobs=True, top_logprobs=21), "top_logprobs", INVALID),
}


@pytest.mark.parametrize("body,param,code", BAD_BODIES.values(), ids=BAD_BODIES.keys())
async def test_bad_body_is_400_with_param(client, orchestrator, body, param, code):
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = await client.post(TASKS, headers={"content-type": "application/json"}, **kwargs)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["type"], err["param"], err["code"]) == ("invalid_request_error", param, code)
    assert orchestrator.submits == []


async def test_oversized_body_is_413(client):
    r = await client.post(TASKS, json=task(prompt="x" * (4 * 1024 * 1024)))
    assert (r.status_code, r.json()["error"]["code"]) == (413, "payload_too_large")


@pytest.mark.parametrize("code,param,status", [
    ("MODEL_NOT_FOUND", "model", 404),
    ("CONTEXT_LENGTH_EXCEEDED", "prompt", 400),
    ("INVALID_ARGUMENT", "deadline_ms", 400),
    ("RATE_LIMITED", "", 429),
    ("UNAVAILABLE", "", 503),
], ids=["model", "context", "deadline-policy", "rate", "unavailable"])
async def test_admission_refusal_keeps_its_code_and_param(client, orchestrator, code, param,
                                                          status):
    orchestrator.admission_error = OrchError(code, "refused", param=param)
    r = await client.post(TASKS, json=PROMPT)
    assert r.status_code == status
    assert (r.json()["error"]["code"], r.json()["error"]["param"]) == (code.lower(), param or None)


def finished_job() -> common_pb2.Job:
    job = job_record(
        JOB_ID, common_pb2.JOB_STATUS_SUCCEEDED, worker_id="w-1", pool_id="local",
        finish_reason="stop", output="Hello world", correlation_id="c-1",
        usage=common_pb2.Usage(prompt_tokens=5, completion_tokens=2, total_tokens=7),
        proof=common_pb2.ProofRecord(seed=DEFAULT_SEED, model_ref="file:/m/tiny",
                                     model_digest="abc", engine="sim", engine_version="1.0",
                                     device="sim-0", token_hash="ff00", token_count=2))
    job.spec.keep_output = True
    job.finished_at.FromMilliseconds(CREATED * 1000 + 2250)
    return job


async def test_get_shows_the_whole_job(client, orchestrator):
    orchestrator.jobs[JOB_ID] = finished_job()
    r = await client.get(f"{TASKS}/{JOB_ID}")
    assert r.status_code == 200
    assert r.json() == {
        "id": JOB_ID, "status": "succeeded", "model": "tiny", "model_ref": "file:/m/tiny",
        "priority": "interactive", "seed": DEFAULT_SEED, "attempts": 1, "created": CREATED,
        "created_at": "2023-11-14T22:13:20Z", "updated_at": "2023-11-14T22:13:22Z",
        "started_at": "2023-11-14T22:13:21Z", "finished_at": "2023-11-14T22:13:22.250Z",
        "waiting_reason": None, "worker_id": "w-1", "pool_id": "local", "finish_reason": "stop",
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        "error": None, "output": "Hello world",
        "proof": {"seed": DEFAULT_SEED, "model_ref": "file:/m/tiny", "model_digest": "abc",
                  "engine": "sim", "engine_version": "1.0", "device": "sim-0",
                  "token_hash": "ff00", "token_count": 2},
        "last_seq": 5, "correlation_id": "c-1", "events_url": f"/v2/tasks/{JOB_ID}/events"}


async def test_a_failed_job_shows_its_error_and_no_output(client, orchestrator):
    job = job_record(JOB_ID, common_pb2.JOB_STATUS_FAILED, attempts=3,
                     error=OrchError("RETRIES_EXHAUSTED", "gave up after 3 attempts").to_detail())
    job.spec.keep_output = True
    orchestrator.jobs[JOB_ID] = job
    body = (await client.get(f"{TASKS}/{JOB_ID}")).json()
    assert (body["status"], body["attempts"], body["output"], body["usage"]) == (
        "failed", 3, "", None)
    assert body["error"] == {"message": "gave up after 3 attempts", "type": "server_error",
                             "param": None, "code": "retries_exhausted"}


async def test_output_is_shown_only_when_kept(client, orchestrator):
    job = finished_job()
    job.spec.keep_output = False
    orchestrator.jobs[JOB_ID] = job
    assert (await client.get(f"{TASKS}/{JOB_ID}")).json()["output"] is None


async def test_a_queued_job_says_why_it_waits(client, orchestrator):
    job_id = (await client.post(TASKS, json=task(priority="batch"))).json()["id"]
    body = (await client.get(f"{TASKS}/{job_id}")).json()
    assert (body["status"], body["priority"], body["waiting_reason"]) == (
        "queued", "batch", "no ready worker")
    assert (body["started_at"], body["finished_at"], body["proof"], body["error"]) == (
        None, None, None, None)


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_unknown_job_is_404_not_found(client, method):
    r = await client.request(method, f"{TASKS}/nope")
    assert r.status_code == 404
    assert r.json() == {"error": {"message": "no job 'nope'", "type": "invalid_request_error",
                                  "param": "job_id", "code": "not_found"}}


async def test_delete_cancels_and_returns_the_job(client, orchestrator):
    job_id = (await client.post(TASKS, json=PROMPT)).json()["id"]
    r = await client.delete(f"{TASKS}/{job_id}")
    assert r.status_code == 200
    body = r.json()
    assert (body["id"], body["status"], body["error"]["code"]) == (job_id, "cancelled",
                                                                   "cancelled")
    assert orchestrator.cancel_requests == [job_id]


async def test_delete_of_a_finished_job_returns_its_recorded_outcome(client, orchestrator):
    orchestrator.jobs[JOB_ID] = finished_job()
    r = await client.delete(f"{TASKS}/{JOB_ID}")
    assert r.status_code == 200
    assert (r.json()["status"], r.json()["error"], r.json()["output"]) == (
        "succeeded", None, "Hello world")


async def test_correlation_id_travels_to_every_rpc_and_back(client, orchestrator):
    headers = {"X-Correlation-Id": "v2-req-1"}
    r = await client.post(TASKS, json=PROMPT, headers=headers)
    assert r.headers["x-correlation-id"] == "v2-req-1"
    assert orchestrator.metadata[-1]["x-correlation-id"] == "v2-req-1"
    assert r.json()["correlation_id"] == "v2-req-1"
    for method in ("GET", "DELETE"):
        r = await client.request(method, f"{TASKS}/{JOB_ID}", headers=headers)
        assert r.headers["x-correlation-id"] == "v2-req-1"
        assert orchestrator.metadata[-1]["x-correlation-id"] == "v2-req-1"
    r = await client.get(f"{TASKS}/nope", headers=headers)
    assert (r.status_code, r.headers["x-correlation-id"]) == (404, "v2-req-1")


async def test_orchestrator_down_is_503():
    app = create_app("127.0.0.1:1")  # nothing listens on port 1
    async with in_process(app) as c:
        r = await c.get(f"{TASKS}/{JOB_ID}")
    assert (r.status_code, r.json()["error"]["code"]) == (503, "unavailable")


async def test_routes_are_counted_by_template_not_by_id(client):
    await client.get(f"{TASKS}/{JOB_ID}")
    text = (await client.get("/metrics")).text
    assert 'route="/v2/tasks/{job_id}",status="200"' in text
    assert JOB_ID not in text


@pytest.mark.parametrize("status,name", [
    (common_pb2.JOB_STATUS_QUEUED, "queued"), (common_pb2.JOB_STATUS_DISPATCHED, "dispatched"),
    (common_pb2.JOB_STATUS_RUNNING, "running"), (common_pb2.JOB_STATUS_SUCCEEDED, "succeeded"),
    (common_pb2.JOB_STATUS_FAILED, "failed"), (common_pb2.JOB_STATUS_CANCELLED, "cancelled"),
])
async def test_status_is_the_lower_case_name(client, orchestrator, status, name):
    orchestrator.jobs[JOB_ID] = job_record(JOB_ID, status)
    assert (await client.get(f"{TASKS}/{JOB_ID}")).json()["status"] == name
