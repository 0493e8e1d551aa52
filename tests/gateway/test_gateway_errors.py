"""Every refusal is an OpenAI error body with the right status, type, param and code."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest

from common.errors import OrchError
from gateway.errors import GATEWAY_STATUS, HTTP_STATUS, Unimplemented, error_body, status_of

CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
MSGS = [{"role": "user", "content": "Hi"}]
OK_CHAT = {"model": "tiny", "messages": MSGS}
OK_TEXT = {"model": "tiny", "prompt": "Hi"}
INVALID, UNSUPPORTED = "invalid_argument", "unsupported_parameter"
# The body's code is the stable code in lower case, except where OpenAI names it.
OPENAI_CODE = {"UNAUTHENTICATED": "invalid_api_key"}


def chat(**fields):
    return {**OK_CHAT, **fields}


def text(**fields):
    return {**OK_TEXT, **fields}


# (path, body: dict or raw bytes, param, code); all are 400 invalid_request_error.
BAD_REQUESTS = {
    "malformed-json": (CHAT, b'{"model": "tiny",', None, INVALID),
    "invalid-utf8": (CHAT, b'{"model": "tiny\xff"}', None, INVALID),
    "nan": (CHAT, b'{"model": "tiny", "messages": [], "temperature": NaN}', None, INVALID),
    "not-an-object": (CHAT, b'[1, 2]', None, INVALID),
    "lone-surrogate": (CHAT, (b'{"model": "tiny", "messages": '
                              b'[{"role": "user", "content": "\\ud800"}]}'),
                       "messages[0].content", INVALID),
    "missing-model": (CHAT, {"messages": MSGS}, "model", INVALID),
    "empty-model": (CHAT, chat(model=""), "model", INVALID),
    "model-not-string": (CHAT, chat(model=7), "model", INVALID),
    "missing-messages": (CHAT, {"model": "tiny"}, "messages", INVALID),
    "empty-messages": (CHAT, chat(messages=[]), "messages", INVALID),
    "messages-not-list": (CHAT, chat(messages="Hi"), "messages", INVALID),
    "invalid-role": (CHAT, chat(messages=[{"role": "robot", "content": "x"}]),
                     "messages[0].role", INVALID),
    "second-role-invalid": (CHAT, chat(messages=[*MSGS, {"role": 1, "content": "x"}]),
                            "messages[1].role", INVALID),
    "role-case": (CHAT, chat(messages=[{"role": "User", "content": "x"}]),
                  "messages[0].role", INVALID),
    "tool-role": (CHAT, chat(messages=[*MSGS, {"role": "tool", "content": "x"}]),
                  "messages[1].role", UNSUPPORTED),
    "function-role": (CHAT, chat(messages=[{"role": "function", "content": "x"}]),
                      "messages[0].role", UNSUPPORTED),
    "message-not-object": (CHAT, chat(messages=["Hi"]), "messages[0]", INVALID),
    "missing-content": (CHAT, chat(messages=[{"role": "user"}]), "messages[0].content", INVALID),
    "null-content": (CHAT, chat(messages=[{"role": "system", "content": None}, *MSGS]),
                     "messages[0].content", INVALID),
    "refusal-part-of-a-user": (CHAT, chat(messages=[{"role": "user", "content": [
        {"type": "refusal", "refusal": "no"}]}]), "messages[0].content", INVALID),
    "refusal-part-without-text": (CHAT, chat(messages=[*MSGS, {"role": "assistant", "content": [
        {"type": "refusal"}]}]), "messages[1].content", INVALID),
    "history-tool-calls-wrong-type": (CHAT, chat(messages=[*MSGS, {"role": "assistant",
                                                                   "tool_calls": "f"}]),
                                      "messages[1].tool_calls", INVALID),
    "content-wrong-type": (CHAT, chat(messages=[{"role": "user", "content": 5}]),
                           "messages[0].content", INVALID),
    "image-part": (CHAT, chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]),
                   "messages[0].content", UNSUPPORTED),
    "temperature-string": (CHAT, chat(temperature="hot"), "temperature", INVALID),
    "temperature-high": (CHAT, chat(temperature=2.5), "temperature", INVALID),
    "temperature-negative": (CHAT, chat(temperature=-0.1), "temperature", INVALID),
    "top-p-negative": (CHAT, chat(top_p=-0.1), "top_p", INVALID),
    "top-p-high": (CHAT, chat(top_p=1.5), "top_p", INVALID),
    "presence-penalty-high": (CHAT, chat(presence_penalty=2.5), "presence_penalty", INVALID),
    "frequency-penalty-low": (CHAT, chat(frequency_penalty=-3), "frequency_penalty", INVALID),
    "n-zero": (CHAT, chat(n=0), "n", INVALID),
    "n-above-limit": (CHAT, chat(n=9), "n", INVALID),
    "n-float": (CHAT, chat(n=1.5), "n", INVALID),
    "n-negative": (CHAT, chat(n=-1), "n", INVALID),
    "top-k-zero": (CHAT, chat(top_k=0), "top_k", INVALID),
    "top-k-over-int32": (CHAT, chat(top_k=2**31), "top_k", INVALID),
    "five-stops": (CHAT, chat(stop=["a", "b", "c", "d", "e"]), "stop", INVALID),
    "huge-stop-list": (CHAT, chat(stop=["x"] * 10_000), "stop", INVALID),
    "huge-stop-string": (CHAT, chat(stop="x" * 257), "stop", INVALID),
    "empty-stop-string": (CHAT, chat(stop=["a", ""]), "stop", INVALID),
    "stop-not-string": (CHAT, chat(stop=5), "stop", INVALID),
    "stop-list-of-ints": (CHAT, chat(stop=[1]), "stop", INVALID),
    "max-tokens-zero": (CHAT, chat(max_tokens=0), "max_tokens", INVALID),
    "max-tokens-negative": (CHAT, chat(max_tokens=-5), "max_tokens", INVALID),
    "max-tokens-over-uint32": (CHAT, chat(max_tokens=2**32), "max_tokens", INVALID),
    "text-max-tokens-zero": (TEXT, text(max_tokens=0), "max_tokens", INVALID),
    "text-max-tokens-negative": (TEXT, text(max_tokens=-1), "max_tokens", INVALID),
    "max-completion-tokens-zero": (CHAT, chat(max_completion_tokens=0),
                                   "max_completion_tokens", INVALID),
    "seed-below-int64": (CHAT, chat(seed=-(2**63) - 1), "seed", INVALID),
    "seed-too-big": (CHAT, chat(seed=2**64), "seed", INVALID),
    "top-logprobs-high": (CHAT, chat(logprobs=True, top_logprobs=21), "top_logprobs", INVALID),
    "top-logprobs-without-logprobs": (CHAT, chat(top_logprobs=2), "top_logprobs", INVALID),
    "logprobs-not-bool": (CHAT, chat(logprobs="yes"), "logprobs", INVALID),
    "stream-not-bool": (CHAT, chat(stream="true"), "stream", INVALID),
    "stream-options-without-stream": (CHAT, chat(stream_options={"include_usage": True}),
                                      "stream_options", INVALID),
    "stream-options-with-null-stream": (CHAT, chat(stream=None, stream_options={}),
                                        "stream_options", INVALID),
    "include-usage-not-bool": (CHAT, chat(stream=True, stream_options={"include_usage": 1}),
                               "stream_options.include_usage", INVALID),
    "unknown-priority": (CHAT, chat(priority="urgent"), "priority", INVALID),
    "detach-not-bool": (CHAT, chat(detach="yes"), "detach", INVALID),
    "user-not-string": (CHAT, chat(user=5), "user", INVALID),
    "tools": (CHAT, chat(tools=[{"type": "function"}]), "tools", UNSUPPORTED),
    "tool-choice": (CHAT, chat(tool_choice="auto"), "tool_choice", UNSUPPORTED),
    "tool-choice-wrong-type": (CHAT, chat(tool_choice=5), "tool_choice", INVALID),
    "tools-wrong-type": (CHAT, chat(tools={"type": "function"}), "tools", INVALID),
    "json-mode": (CHAT, chat(response_format={"type": "json_object"}),
                  "response_format", UNSUPPORTED),
    "logit-bias": (CHAT, chat(logit_bias={"1": 5}), "logit_bias", UNSUPPORTED),
    "function-call-name": (CHAT, chat(function_call="f"), "function_call", UNSUPPORTED),
    "function-call-wrong-type": (CHAT, chat(function_call=5), "function_call", INVALID),
    # The first refusal is the answer: modalities comes before audio.
    "audio-output": (CHAT, chat(modalities=["text", "audio"],
                                audio={"voice": "alloy", "format": "wav"}),
                     "modalities", UNSUPPORTED),
    "audio-only-output": (CHAT, chat(modalities=["audio"]), "modalities", UNSUPPORTED),
    "no-output": (CHAT, chat(modalities=[]), "modalities", UNSUPPORTED),
    "modalities-not-strings": (CHAT, chat(modalities=[1]), "modalities", INVALID),
    "web-search-empty": (CHAT, chat(web_search_options={}), "web_search_options", UNSUPPORTED),
    "web-search-wrong-type": (CHAT, chat(web_search_options=True), "web_search_options",
                              INVALID),
    "missing-prompt": (TEXT, {"model": "tiny"}, "prompt", INVALID),
    "prompt-not-string": (TEXT, text(prompt=5), "prompt", INVALID),
    "too-many-prompts": (TEXT, text(prompt=["a"] * 17), "prompt", INVALID),
    "empty-prompt-list": (TEXT, text(prompt=[]), "prompt", INVALID),
    "mixed-prompt-list": (TEXT, text(prompt=["a", 1]), "prompt", INVALID),
    "token-prompt": (TEXT, text(prompt=[1, 2, 3]), "prompt", UNSUPPORTED),
    "token-prompts": (TEXT, text(prompt=[[1, 2], [3]]), "prompt", UNSUPPORTED),
    "completion-logprobs-high": (TEXT, text(logprobs=6), "logprobs", INVALID),
    "echo": (TEXT, text(echo=True), "echo", UNSUPPORTED),
    "suffix": (TEXT, text(suffix="end"), "suffix", UNSUPPORTED),
    "best-of": (TEXT, text(best_of=3), "best_of", UNSUPPORTED),
    "text-temperature-high": (TEXT, text(temperature=3), "temperature", INVALID),
}


@pytest.mark.parametrize("path,body,param,code", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
async def test_bad_request_is_400_with_param(client, orchestrator, path, body, param, code):
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = await client.post(path, headers={"content-type": "application/json"}, **kwargs)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["type"], err["param"], err["code"]) == ("invalid_request_error", param, code)
    assert err["message"]
    assert orchestrator.requests == []  # refused at the edge, never submitted


@pytest.mark.parametrize("path,body", [
    (CHAT, chat(some_future_field=1, metadata={"a": "b"}, store=False)),
    (TEXT, text(stream_options=None, tools=None, echo=False)),
    (CHAT, chat(tools=[], tool_choice="none", response_format={"type": "text"}, logit_bias={})),
    (TEXT, text(suffix="", best_of=1, logit_bias=None)),
], ids=["unknown-fields", "explicit-defaults", "neutral-chat-values", "neutral-text-values"])
async def test_unknown_fields_and_explicit_defaults_are_accepted(client, path, body):
    r = await client.post(path, json=body)
    assert r.status_code == 200, r.text


def _history(**assistant):
    return [*MSGS, {"role": "assistant", "content": "x", **assistant}, *MSGS]


# field -> (its neutral values, accepted; a value with an effect, refused): known
# OpenAI fields llama-orch cannot honour. A field of a message is given as
# (message field, messages builder).
REFUSED_UNLESS_NEUTRAL = {
    "function_call": (["none", "auto", None], {"name": "f"}),
    "modalities": ([["text"], None], ["text", "audio"]),
    "audio": ([None], {"voice": "alloy", "format": "wav"}),
    "web_search_options": ([None], {"search_context_size": "low"}),
    "moderation": ([None], {"model": "omni-moderation-latest"}),
    "messages[1].tool_calls": ([[], None], [{"id": "c", "type": "function", "function": {
        "name": "f", "arguments": "{}"}}]),
    "messages[1].function_call": ([None], {"name": "f", "arguments": "{}"}),
    "messages[1].audio": ([None], {"id": "audio-1"}),
}


@pytest.mark.parametrize("param,values", REFUSED_UNLESS_NEUTRAL.items(),
                         ids=REFUSED_UNLESS_NEUTRAL.keys())
async def test_a_field_we_cannot_honour_is_refused_unless_neutral(client, orchestrator, param,
                                                                  values):
    def body(value):
        if param.startswith("messages[1]."):
            return chat(messages=_history(**{param.removeprefix("messages[1]."): value}))
        return chat(**{param: value})

    neutral, effective = values
    for value in neutral:
        r = await client.post(CHAT, json=body(value))
        assert r.status_code == 200, (value, r.text)
    r = await client.post(CHAT, json=body(effective))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["param"], err["code"]) == (param, UNSUPPORTED)
    assert "not supported by llama-orch" in err["message"]


async def test_unknown_fields_are_ignored_not_forwarded(client, orchestrator):
    await client.post(CHAT, json=OK_CHAT)
    await client.post(CHAT, json=chat(some_future_field={"x": 1}, temperature_v2=3))
    first, second = orchestrator.requests
    assert first.spec == second.spec


@pytest.mark.parametrize("n,status", [(2, 200), (3, 400)], ids=["at-limit", "above-limit"])
async def test_n_is_bounded_by_the_gateway_setting(orchestrator, n, status):
    from gateway.app import create_app
    from tests.gateway.conftest import in_process

    async with in_process(create_app(orchestrator.address, max_n=2)) as c:
        for path, body in ((CHAT, chat(n=n)), (TEXT, text(n=n)), ("/v2/tasks", text(n=n))):
            r = await c.post(path, json=body)
            assert r.status_code == (202 if path == "/v2/tasks" and status == 200 else status)
            if status == 400:
                err = r.json()["error"]
                assert (err["param"], err["code"]) == ("n", "invalid_argument")
                assert "at most 2" in err["message"]


@pytest.mark.parametrize("key", ["\u00e9t\u00e9".encode(), b"x" * 257],
                         ids=["non-ascii", "too-long"])
async def test_a_bad_idempotency_key_is_refused_on_v1_too(client, orchestrator, key):
    r = await client.post(CHAT, json=OK_CHAT, headers={"Idempotency-Key": key})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "Idempotency-Key"
    assert orchestrator.requests == []


async def test_body_over_the_limit_is_413(client):
    huge = chat(messages=[{"role": "user", "content": "x" * (4 * 1024 * 1024)}])
    r = await client.post(CHAT, json=huge)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


async def test_a_client_gone_while_sending_the_body_ends_the_request_quietly(app):
    """The server reports a disconnect in the middle of the body (gateway.server closes
    a slow client); the route ends it as CANCELLED, with no crash logged."""
    from gateway import errors

    messages = iter([{"type": "http.request", "body": b'{"model": ', "more_body": True},
                     {"type": "http.disconnect"}])
    sent = []

    async def receive():
        return next(messages)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": CHAT, "raw_path": CHAT.encode(), "query_string": b"",
             "root_path": "", "headers": [(b"content-type", b"application/json")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    crashed = []
    original = errors.crash_response
    try:
        errors.crash_response = lambda *a: crashed.append(a) or original(*a)
        await app(scope, receive, send)
    finally:
        errors.crash_response = original
    assert sent[0]["status"] == 499 and not crashed


async def test_body_over_the_limit_without_content_length_is_413(client):
    async def chunks():
        for _ in range(5):
            yield b"x" * (1024 * 1024)

    r = await client.post(CHAT, content=chunks())
    assert r.status_code == 413


# Admission failures: gRPC errors before the first event, by stable code.
ADMISSION = {
    "model-not-found": ("MODEL_NOT_FOUND", "model", 404, "invalid_request_error"),
    "context-length": ("CONTEXT_LENGTH_EXCEEDED", "messages", 400, "invalid_request_error"),
    "invalid-argument": ("INVALID_ARGUMENT", "top_k", 400, "invalid_request_error"),
    "unauthenticated": ("UNAUTHENTICATED", "", 401, "authentication_error"),
    "permission-denied": ("PERMISSION_DENIED", "", 403, "permission_error"),
    "idempotency-conflict": ("IDEMPOTENCY_CONFLICT", "", 409, "invalid_request_error"),
    "rate-limited": ("RATE_LIMITED", "", 429, "rate_limit_error"),
    "quota": ("QUOTA_EXHAUSTED", "", 429, "insufficient_quota"),
    "unavailable": ("UNAVAILABLE", "", 503, "server_error"),
    "deadline": ("DEADLINE_EXCEEDED", "", 504, "timeout"),
    "internal": ("INTERNAL", "", 500, "server_error"),
    "model-pinned": ("MODEL_PINNED", "model", 409, "invalid_request_error"),
    "device-not-found": ("DEVICE_NOT_FOUND", "device_ids", 404, "invalid_request_error"),
    "pool-unavailable": ("POOL_UNAVAILABLE", "pool_id", 503, "server_error"),
    "unmapped-code": ("CHECKSUM_MISMATCH", "", 500, "server_error"),
}


@pytest.mark.parametrize("code,param,status,kind", ADMISSION.values(), ids=ADMISSION.keys())
async def test_admission_error_maps_to_status(client, orchestrator, code, param, status, kind):
    orchestrator.admission_error = OrchError(code, f"refused: {code}", param=param)
    r = await client.post(CHAT, json=OK_CHAT)
    assert r.status_code == status
    assert r.json() == {"error": {"message": f"refused: {code}", "type": kind,
                                  "param": param or None,
                                  "code": OPENAI_CODE.get(code, code.lower())}}


async def test_a_missing_or_bad_api_key_is_401_invalid_api_key(client, orchestrator,
                                                               openai_client):
    # OpenAI's code for it, which its clients and tools know; the type stays.
    orchestrator.admission_error = OrchError("UNAUTHENTICATED", "the API key is not valid")
    r = await client.post(CHAT, json=OK_CHAT)
    assert r.status_code == 401
    assert r.json() == {"error": {"message": "the API key is not valid",
                                  "type": "authentication_error", "param": None,
                                  "code": "invalid_api_key"}}
    with pytest.raises(openai.AuthenticationError) as denied:
        await asyncio.to_thread(openai_client.chat.completions.create, model="tiny",
                                messages=MSGS)
    assert denied.value.code == "invalid_api_key"


async def test_admission_error_of_a_stream_is_an_http_status_not_a_stream(client, orchestrator):
    orchestrator.admission_error = OrchError("RATE_LIMITED", "slow down")
    r = await client.post(CHAT, json=chat(stream=True))
    assert r.status_code == 429
    assert r.headers["content-type"] == "application/json"


async def test_orchestrator_down_is_503(orchestrator):
    import httpx

    from gateway.app import create_app

    app = create_app("127.0.0.1:1")  # nothing listens on port 1
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=transport, base_url="http://g") as c:
        r = await c.post(CHAT, json=OK_CHAT)
    assert (r.status_code, r.json()["error"]["code"]) == (503, "unavailable")


async def test_unknown_route_and_method_are_openai_errors(client):
    r = await client.get("/v1/nothing")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
    r = await client.get(CHAT)
    assert (r.status_code, r.json()["error"]["code"]) == (405, "method_not_allowed")
    # Every method of the path, though FastAPI keeps each router as one route.
    assert r.headers["allow"] == "POST"
    r = await client.put("/v2/tasks/job-1")
    assert (r.status_code, r.headers["allow"]) == (405, "DELETE, GET, HEAD")


async def test_openai_client_sees_the_status_classes(openai_client, orchestrator):
    with pytest.raises(openai.BadRequestError) as bad:
        await asyncio.to_thread(openai_client.chat.completions.create, model="tiny",
                                messages=MSGS, temperature=5)
    assert bad.value.param == "temperature"
    orchestrator.admission_error = OrchError("RATE_LIMITED", "slow down")
    with pytest.raises(openai.RateLimitError):
        await asyncio.to_thread(openai_client.chat.completions.create, model="tiny", messages=MSGS)


def test_every_mapped_code_is_a_stable_code():
    for code in HTTP_STATUS:
        OrchError(code, "x")  # raises for a code errors.proto does not define
    assert status_of("NO_SUCH_CODE") == (500, "server_error")
    json.dumps(HTTP_STATUS)


def test_the_gateway_codes_are_not_stable_codes():
    # A stable code of the same name would make two meanings for one code.
    for code in GATEWAY_STATUS:
        with pytest.raises(ValueError):
            OrchError(code, "x")
    assert not set(GATEWAY_STATUS) & set(HTTP_STATUS)


def test_unimplemented_is_501_with_its_own_code():
    err = Unimplemented("AdminService/DrainPool is not implemented")
    assert status_of(err.code) == (501, "server_error")
    assert error_body(err) == {"error": {"message": "AdminService/DrainPool is not implemented",
                                         "type": "server_error", "param": None,
                                         "code": "unimplemented"}}
    assert not err.retryable
