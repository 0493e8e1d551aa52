"""POST /v1/chat/completions: translation to JobSpec, whole and streamed responses."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from llama_orch.v1 import common_pb2, events_pb2

from tests.gateway.conftest import sse_events
from tests.gateway.scripted_orchestrator import (
    CREATED,
    HOLD,
    JOB_ID,
    end,
    error,
    logprob,
    model,
    queued,
    started,
    tokens,
)

HELLO = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}]}


async def test_whole_completion_has_text_finish_and_usage(client):
    r = await client.post("/v1/chat/completions", json=HELLO)
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == f"chatcmpl-{JOB_ID}"
    assert body["object"] == "chat.completion"
    assert (body["created"], body["model"]) == (CREATED, "tiny")
    assert body["system_fingerprint"].startswith("fp_")
    assert body["choices"] == [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                "message": {"role": "assistant", "content": "Hello world",
                                            "refusal": None}}]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


async def test_request_becomes_the_job_spec(client, orchestrator):
    r = await client.post("/v1/chat/completions", json={
        "model": "tiny",
        "messages": [{"role": "developer", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": "Hi "},
                                                  {"type": "text", "text": "there"}],
                      "name": "ann"}],
        "temperature": 0.5, "top_p": 0.9, "seed": 7, "stop": "END", "max_tokens": 10,
        "max_completion_tokens": 20, "presence_penalty": 0.5, "frequency_penalty": -0.5,
        "logprobs": True, "top_logprobs": 3, "user": "u-1", "priority": "batch",
        "detach": True, "top_k": 40, "some_future_field": {"x": 1}})
    assert r.status_code == 200, r.text
    spec = orchestrator.requests[-1].spec
    assert spec.model == "tiny"
    assert [(m.role, m.content, m.name) for m in spec.chat.messages] == [
        ("system", "Be brief.", ""), ("user", "Hi there", "ann")]
    s = spec.sampling
    assert s.temperature == pytest.approx(0.5) and s.top_p == pytest.approx(0.9)
    assert (s.seed, s.top_k, list(s.stop), s.max_tokens, s.n) == (7, 40, ["END"], 20, 1)
    assert (s.presence_penalty, s.frequency_penalty) == (0.5, -0.5)
    assert (s.logprobs, s.top_logprobs) == (True, 3)
    assert (spec.user, spec.priority, spec.detach) == ("u-1", common_pb2.PRIORITY_BATCH, True)


async def test_unset_sampling_fields_stay_unset(client, orchestrator):
    await client.post("/v1/chat/completions", json=HELLO)
    spec = orchestrator.requests[-1].spec
    s = spec.sampling
    for name in ("temperature", "top_p", "top_k", "seed", "presence_penalty", "frequency_penalty"):
        assert not s.HasField(name), name
    assert (s.max_tokens, list(s.stop), s.logprobs) == (0, [], False)
    assert spec.priority == common_pb2.PRIORITY_INTERACTIVE and not spec.detach


@pytest.mark.parametrize("seed,sent", [(-1, 2**64 - 1), (-(2**63), 2**63), (2**64 - 1, 2**64 - 1)],
                         ids=["minus-one", "int64-min", "uint64-max"])
async def test_a_negative_seed_is_its_64_bit_twos_complement(client, orchestrator, seed, sent):
    # OpenAI takes int64 seeds; the contract's seed is a uint64.
    r = await client.post("/v1/chat/completions", json={**HELLO, "seed": seed})
    assert r.status_code == 200, r.text
    assert orchestrator.requests[-1].spec.sampling.seed == sent


@pytest.mark.parametrize("top_k", [None, 40], ids=["alone", "with-top-k"])
async def test_top_p_zero_is_greedy(client, orchestrator, top_k):
    # OpenAI's top_p 0 keeps only the most likely token; the orchestrator's top_p is
    # (0, 1], so the gateway says it with top_k 1.
    body = {**HELLO, "top_p": 0, **({"top_k": top_k} if top_k else {})}
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    s = orchestrator.requests[-1].spec.sampling
    assert not s.HasField("top_p") and (s.HasField("top_k"), s.top_k) == (True, 1)


@pytest.mark.parametrize("message,content", [
    ({"role": "assistant", "content": None}, ""),
    ({"role": "assistant"}, ""),
    ({"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]}, "I can't."),
    ({"role": "assistant", "content": [{"type": "text", "text": "Well, "},
                                       {"type": "refusal", "refusal": "no."}]}, "Well, no."),
    ({"role": "assistant", "tool_calls": [], "function_call": None, "audio": None}, ""),
], ids=["null", "absent", "refusal-part", "text-and-refusal", "no-tool-calls"])
async def test_an_assistant_turn_may_have_no_content_or_a_refusal(client, orchestrator,
                                                                  message, content):
    # As OpenAI: an earlier reply that was all tool calls or a refusal; the history
    # keeps its place.
    r = await client.post("/v1/chat/completions", json={**HELLO, "messages": [
        {"role": "user", "content": "a"}, message, {"role": "user", "content": "b"}]})
    assert r.status_code == 200, r.text
    assert [(m.role, m.content) for m in orchestrator.requests[-1].spec.chat.messages] == [
        ("user", "a"), ("assistant", content), ("user", "b")]


async def test_explicit_nulls_are_the_defaults_openai_python_sends(client, orchestrator):
    r = await client.post("/v1/chat/completions", json={
        **HELLO, "stream": None, "logprobs": None, "top_logprobs": None, "priority": None,
        "detach": None, "seed": None, "stream_options": None})
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "chat.completion"  # not streamed
    spec = orchestrator.requests[-1].spec
    assert (spec.priority, spec.detach, spec.sampling.logprobs) == (
        common_pb2.PRIORITY_INTERACTIVE, False, False)
    r = await client.post("/v1/chat/completions", json={
        **HELLO, "stream": True, "stream_options": {"include_usage": None}})
    assert all("usage" not in c for c in sse_events(r.text)[:-1])


async def test_several_choices_are_collected_by_index(client, orchestrator):
    orchestrator.script = [queued(), tokens("b", index=1), tokens("a", index=0),
                           end("length", 5, 1, index=1), end("stop", 5, 1, index=0)]
    r = await client.post("/v1/chat/completions", json={**HELLO, "n": 2})
    body = r.json()
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in body["choices"]] \
        == [(0, "a", "stop"), (1, "b", "length")]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


async def test_logprobs_in_openai_chat_shape(client, orchestrator):
    hi = logprob("Hi", -0.5, {"Hi": -0.5, "Yo": -1.0})
    orchestrator.script = [queued(), tokens("Hi", logprobs=[hi]), end()]
    r = await client.post("/v1/chat/completions",
                          json={**HELLO, "logprobs": True, "top_logprobs": 2})
    assert r.json()["choices"][0]["logprobs"] == {"refusal": None, "content": [
        {"token": "Hi", "logprob": -0.5, "bytes": [72, 105], "top_logprobs": [
            {"token": "Hi", "logprob": -0.5, "bytes": [72, 105]},
            {"token": "Yo", "logprob": -1.0, "bytes": [89, 111]}]}]}


async def test_stream_chunk_sequence(client):
    r = await client.post("/v1/chat/completions", json={**HELLO, "stream": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {(c["id"], c["object"], c["model"]) for c in chunks} == {
        (f"chatcmpl-{JOB_ID}", "chat.completion.chunk", "tiny")}
    assert all("usage" not in c for c in chunks)
    assert [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks] == [
        ({"role": "assistant", "content": ""}, None),
        ({"content": "Hello"}, None),
        ({"content": " world"}, None),
        ({}, "stop"),
    ]


async def test_stream_with_include_usage_ends_with_a_usage_chunk(client):
    r = await client.post("/v1/chat/completions", json={
        **HELLO, "stream": True, "stream_options": {"include_usage": True}})
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    *content, usage_chunk = events[:-1]
    assert all(c["usage"] is None for c in content)
    assert [c["choices"][0]["delta"] for c in content][-1] == {}
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


async def test_error_event_mid_stream_becomes_an_sse_error(client, orchestrator):
    orchestrator.script = [queued(), tokens("Hel"), error("WORKER_CRASHED", "worker died")]
    r = await client.post("/v1/chat/completions", json={**HELLO, "stream": True})
    events = sse_events(r.text)
    assert events[-2] == {"error": {"message": "worker died", "type": "server_error",
                                    "param": None, "code": "worker_crashed"}}
    assert events[-1] == "[DONE]"
    assert events[1]["choices"][0]["delta"] == {"content": "Hel"}


async def test_stream_cut_short_without_end_is_an_error(client, orchestrator):
    orchestrator.script = [queued(), tokens("Hel")]
    r = await client.post("/v1/chat/completions", json={**HELLO, "stream": True})
    assert sse_events(r.text)[-2]["error"]["code"] == "internal"


@pytest.mark.parametrize("code,status,kind", [
    ("WORKER_CRASHED", 503, "server_error"),
    ("DEADLINE_EXCEEDED", 504, "timeout"),
    ("CANCELLED", 499, "cancelled"),
    ("RETRIES_EXHAUSTED", 500, "server_error"),
], ids=["crashed", "deadline", "cancelled", "retries"])
async def test_error_event_of_a_whole_completion_sets_the_status(client, orchestrator, code,
                                                                 status, kind):
    orchestrator.script = [queued(), tokens("Hel"), error(code)]
    r = await client.post("/v1/chat/completions", json=HELLO)
    assert r.status_code == status
    assert r.json()["error"]["type"] == kind and r.json()["error"]["code"] == code.lower()


async def test_openai_client_whole_and_streamed(openai_client):
    done = await asyncio.to_thread(openai_client.chat.completions.create,
                                   model="tiny", messages=[{"role": "user", "content": "Hi"}])
    assert done.choices[0].message.content == "Hello world"
    assert done.usage.total_tokens == 7

    def stream():
        chunks = openai_client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hi"}], stream=True,
            stream_options={"include_usage": True})
        return list(chunks)

    chunks = await asyncio.to_thread(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello world"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage.completion_tokens == 2


async def test_openai_client_raises_api_error_on_error_mid_stream(openai_client, orchestrator):
    orchestrator.script = [queued(), started(), tokens("Hel"),
                           error("ENGINE_ERROR", "engine fell over")]

    def stream():
        seen = []
        with pytest.raises(openai.APIError) as info:
            for chunk in openai_client.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": "Hi"}], stream=True):
                seen.append(chunk)
        return seen, info.value

    seen, err = await asyncio.to_thread(stream)
    assert err.message == "engine fell over"
    assert err.body["code"] == "engine_error"
    assert seen[-1].choices[0].delta.content == "Hel"


async def test_stream_disconnect_cancels_the_grpc_call(http_url, orchestrator):
    orchestrator.script = [queued(), tokens("Hel"), HOLD]
    async with httpx.AsyncClient(base_url=http_url) as c, c.stream(
            "POST", "/v1/chat/completions", json={**HELLO, "stream": True}) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if "Hel" in line:
                break
        await asyncio.wait_for(orchestrator.holding.wait(), 10)
    # Leaving the block closed the connection mid-stream.
    await asyncio.wait_for(orchestrator.cancelled.wait(), 10)


async def test_whole_completion_disconnect_cancels_the_grpc_call(http_url, orchestrator):
    orchestrator.script = [queued(), tokens("Hel"), HOLD]
    async with httpx.AsyncClient(base_url=http_url) as c:
        request = asyncio.create_task(c.post("/v1/chat/completions", json=HELLO))
        await asyncio.wait_for(orchestrator.holding.wait(), 10)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
    await asyncio.wait_for(orchestrator.cancelled.wait(), 10)


async def test_n_choices_each_get_a_role_chunk_and_a_finish(client, orchestrator):
    r = await client.post("/v1/chat/completions", json={**HELLO, "n": 3})
    body = r.json()
    assert [(c["index"], c["message"]["content"]) for c in body["choices"]] == [
        (0, "Hello world"), (1, "Hello world"), (2, "Hello world")]
    assert orchestrator.requests[-1].spec.sampling.n == 3
    r = await client.post("/v1/chat/completions", json={**HELLO, "n": 2, "stream": True})
    chunks = sse_events(r.text)[:-1]
    assert [c["choices"][0]["delta"] for c in chunks[:2]] == [
        {"role": "assistant", "content": ""}] * 2
    finishes = [c["choices"][0]["index"] for c in chunks if c["choices"][0]["finish_reason"]]
    assert sorted(finishes) == [0, 1]


# Penalties: the orchestrator says per model whether its engine applies them
# (ModelInfo.supports_penalties); a penalty the engine would ignore is refused.
SIM = model("simulated", engine="sim")


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {**HELLO, "model": "simulated"}),
    ("/v1/completions", {"model": "simulated", "prompt": "Once"}),
    ("/v2/tasks", {"model": "simulated", "prompt": "Once"}),
], ids=["chat", "completions", "v2"])
@pytest.mark.parametrize("param", ["presence_penalty", "frequency_penalty"])
async def test_a_penalty_the_engine_cannot_apply_is_refused(client, orchestrator, path, body,
                                                            param):
    orchestrator.models.append(SIM)
    r = await client.post(path, json={**body, param: 0.5})
    assert r.status_code == 400
    err = r.json()["error"]
    assert (err["param"], err["code"]) == (param, "unsupported_parameter")
    assert "sim" in err["message"]
    assert orchestrator.requests == [] and orchestrator.submits == []


async def test_penalties_reach_an_engine_that_applies_them(client, orchestrator):
    r = await client.post("/v1/chat/completions", json={**HELLO, "presence_penalty": 1.0})
    assert r.status_code == 200
    assert orchestrator.requests[-1].spec.sampling.presence_penalty == 1.0


async def test_zero_penalties_need_no_lookup(client, orchestrator):
    orchestrator.models.append(SIM)
    r = await client.post("/v1/chat/completions", json={
        **HELLO, "model": "simulated", "presence_penalty": 0, "frequency_penalty": 0.0})
    assert r.status_code == 200
    assert orchestrator.requests[-1].spec.sampling.presence_penalty == 0
    assert len(orchestrator.metadata) == 1  # Generate only, no GetModel


async def test_a_penalty_for_an_unknown_model_is_model_not_found(client, orchestrator):
    r = await client.post("/v1/chat/completions", json={**HELLO, "model": "nope",
                                                         "frequency_penalty": 1})
    assert r.status_code == 404
    assert (r.json()["error"]["code"], r.json()["error"]["param"]) == ("model_not_found", "model")


def _recording(app, bodies: list[bytes]):
    """`app`, noting the body of every http.response.body message it sends."""
    async def recorded(scope, receive, send):
        async def note(message):
            if message["type"] == "http.response.body":
                bodies.append(message.get("body", b""))
            await send(message)
        await app(scope, receive, note)
    return recorded


async def _written(app, body: dict) -> list[bytes]:
    bodies: list[bytes] = []
    transport = httpx.ASGITransport(app=_recording(app, bodies))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        r = await c.post("/v1/chat/completions", json=body)
        assert r.status_code == 200
    return [b for b in bodies if b]  # the last, empty one ends the body


async def test_a_stream_ends_in_one_write_each_token_in_its_own(app, orchestrator):
    orchestrator.script = [queued(), started(), tokens("Hel"), tokens("lo"), end()]
    writes = await _written(app, {**HELLO, "stream": True,
                                  "stream_options": {"include_usage": True}})
    # role chunk, one write per token (none waits for the next), then finish + usage + [DONE]
    assert len(writes) == 4
    assert b'"content":"Hel"' in writes[1] and b'"content":"lo"' in writes[2]
    last = sse_events(writes[3].decode())
    assert last[0]["choices"][0]["finish_reason"] == "stop"
    assert last[1]["usage"]["completion_tokens"] == 2 and last[2] == "[DONE]"


async def test_an_error_and_done_leave_together_after_the_finish_of_another_choice(
        app, orchestrator):
    orchestrator.script = [queued(), started(), tokens("A", index=0), end(index=0),
                           tokens("B", index=1), error("WORKER_CRASHED", "worker died")]
    writes = await _written(app, {**HELLO, "n": 2, "stream": True})
    events = [e for w in writes for e in sse_events(w.decode())]
    # Choice 0's finish leaves with choice 1's next token, in order.
    with_b = next(sse_events(w.decode()) for w in writes if b'"content":"B"' in w)
    assert [e["choices"][0]["finish_reason"] for e in with_b] == ["stop", None]
    assert with_b[0]["choices"][0]["index"] == 0
    assert sse_events(writes[-1].decode()) == [events[-2], "[DONE]"]
    assert events[-2]["error"]["code"] == "worker_crashed"


async def test_a_whole_response_applies_a_divergence(client, orchestrator):
    # A retry produced other tokens from token 1 (character 3) on: what follows
    # replaces the text after that point. Before, the whole response kept both texts.
    orchestrator.script = [
        queued(), tokens("Hi ", logprobs=[logprob("Hi ", -0.5)]),
        tokens("there", logprobs=[logprob("there", -0.5)]),
        events_pb2.JobEvent(divergence=events_pb2.JobDivergence(
            token_index=1, char_offset=3, message="the retry differs from token 1")),
        tokens("folks", logprobs=[logprob("folks", -1.0)]), end("stop", 5, 2)]
    r = await client.post("/v1/chat/completions", json={**HELLO, "logprobs": True})
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] == "Hi folks"
    assert [e["token"] for e in choice["logprobs"]["content"]] == ["Hi ", "folks"]
    # A stream cannot take back what it gave (OpenAI chunks only append).
    r = await client.post("/v1/chat/completions", json={**HELLO, "stream": True})
    text = "".join(e["choices"][0]["delta"].get("content") or ""
                   for e in sse_events(r.text) if e != "[DONE]" and e["choices"])
    assert text == "Hi therefolks"
