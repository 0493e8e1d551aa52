"""The request models: field order, wrong types and null for every field, unknown fields.

The wrong-type table covers every field of every request model (a test checks that
it does), so a new field cannot go without its wrong-type case. Each case is checked
twice: the gateway answers 400 naming the field, and the OpenAPI document's schema
also calls the body invalid (the document and the validators agree). Likewise an
explicit null for every optional field is accepted by both.
"""

from __future__ import annotations

import jsonschema_rs
import pytest

from gateway.app import create_app
from gateway.openai.protocol import ChatCompletionRequest, CompletionRequest
from gateway.v2.protocol import TaskRequest

SAMPLING = ["model", "temperature", "top_p", "top_k", "seed", "stop", "max_tokens",
            "presence_penalty", "frequency_penalty", "n", "user", "priority", "detach",
            "logit_bias"]


@pytest.mark.parametrize("model,fields", [
    (ChatCompletionRequest, [*SAMPLING, "stream", "stream_options", "messages",
                             "max_completion_tokens", "logprobs", "top_logprobs", "tools",
                             "functions", "tool_choice", "function_call", "response_format",
                             "modalities", "audio", "web_search_options", "moderation"]),
    (CompletionRequest, [*SAMPLING, "stream", "stream_options", "prompt", "logprobs", "echo",
                         "suffix", "best_of"]),
    (TaskRequest, [*SAMPLING, "prompt", "messages", "logprobs", "top_logprobs", "deadline_ms",
                   "keep_output"]),
], ids=["chat", "completion", "task"])
def test_field_order_is_the_declared_order(model, fields):
    # Validation runs (and the first error is reported) in this order, and validators
    # that read an earlier field (top_logprobs reads logprobs) depend on it.
    assert list(model.model_fields) == fields


# A value of the wrong JSON type for each field; `logprobs` differs per endpoint.
WRONG_TYPE = {
    "model": 7, "temperature": "hot", "top_p": "1", "top_k": 1.5, "seed": "42", "stop": 5,
    "max_tokens": "10", "presence_penalty": "0", "frequency_penalty": [0], "n": "2",
    "user": 5, "priority": 1, "detach": "yes", "logit_bias": "none", "stream": 1,
    "stream_options": "on", "messages": "Hi", "max_completion_tokens": 1.5,
    "top_logprobs": "2", "tools": {"type": "function"}, "functions": "f", "tool_choice": 5,
    "response_format": "json_object", "prompt": 5, "echo": "no", "suffix": 5, "best_of": "1",
    "deadline_ms": "100", "keep_output": "yes", "function_call": 5, "modalities": "text",
    "audio": "alloy", "web_search_options": "on", "moderation": True,
}
ENDPOINTS = {
    "chat": ("/v1/chat/completions", ChatCompletionRequest,
             {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}]},
             {"logprobs": "yes"}),
    "completion": ("/v1/completions", CompletionRequest, {"model": "tiny", "prompt": "Hi"},
                   {"logprobs": True}),
    "task": ("/v2/tasks", TaskRequest, {"model": "tiny", "prompt": "Hi"}, {"logprobs": 1}),
}
CASES = [pytest.param(name, field, id=f"{name}-{field}")
         for name, (_, model, _, _) in ENDPOINTS.items() for field in model.model_fields]


def test_the_wrong_type_table_covers_every_field():
    for _, model, _, own in ENDPOINTS.values():
        assert set(model.model_fields) <= set(WRONG_TYPE) | set(own)


@pytest.fixture(scope="module")
def document() -> dict:
    return create_app("127.0.0.1:1").openapi()


def schema_accepts(document: dict, model: type, body: dict) -> bool:
    root = {"$ref": f"#/components/schemas/{model.__name__}",
            "components": document["components"]}
    return jsonschema_rs.validator_for(root).is_valid(body)


@pytest.mark.parametrize("name,field", CASES)
async def test_a_wrong_type_is_400_naming_the_field(client, orchestrator, document, name, field):
    path, model, base, own = ENDPOINTS[name]
    assert schema_accepts(document, model, base)
    body = {**base, field: {**WRONG_TYPE, **own}[field]}
    assert not schema_accepts(document, model, body), "the document accepts it"
    r = await client.post(path, json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["type"], err["param"], err["code"]) == (
        "invalid_request_error", field, "invalid_argument"), err
    assert orchestrator.requests == [] and orchestrator.submits == []


NULLABLE = [pytest.param(name, field, id=f"{name}-{field}")
            for name, (_, model, base, _) in ENDPOINTS.items()
            for field, info in model.model_fields.items()
            if not info.is_required() and field not in base]


@pytest.mark.parametrize("name,field", NULLABLE)
async def test_an_explicit_null_is_the_default(client, orchestrator, document, name, field):
    # openai-python sends null for an argument given as None; OpenAI takes it as absent.
    path, model, base, _ = ENDPOINTS[name]
    body = {**base, field: None}
    assert schema_accepts(document, model, body), "the document refuses it"
    r = await client.post(path, json=body)
    assert r.status_code in (200, 202), r.text
    plain = await client.post(path, json=base)
    sent = orchestrator.requests or orchestrator.submits
    assert sent[0] == sent[1]
    assert r.headers["content-type"] == plain.headers["content-type"]  # not streamed


@pytest.mark.parametrize("name", ENDPOINTS)
async def test_unknown_fields_are_accepted_by_the_document_and_the_gateway(
        client, document, name):
    path, model, base, _ = ENDPOINTS[name]
    body = {**base, "a_field_from_the_future": {"x": [1]}, "metadata": {"k": "v"}}
    assert schema_accepts(document, model, body)
    r = await client.post(path, json=body)
    assert r.status_code in (200, 202), r.text


@pytest.mark.parametrize("path,base", [
    ("/v1/chat/completions", ENDPOINTS["chat"][2]), ("/v2/tasks", ENDPOINTS["task"][2])],
    ids=["chat", "task"])
async def test_chat_style_logprobs_are_one_definition(client, orchestrator, path, base):
    r = await client.post(path, json={**base, "top_logprobs": 3})
    assert (r.status_code, r.json()["error"]["param"]) == (400, "top_logprobs")
    assert "logprobs must be true" in r.json()["error"]["message"]
    r = await client.post(path, json={**base, "logprobs": True, "top_logprobs": 3})
    assert r.status_code in (200, 202)
    spec = (orchestrator.requests or orchestrator.submits)[-1].spec
    assert (spec.sampling.logprobs, spec.sampling.top_logprobs) == (True, 3)
