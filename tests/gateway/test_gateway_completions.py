"""POST /v1/completions: prompt translation, whole and streamed text completions."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from common.errors import OrchError
from tests.gateway.conftest import sse_events
from tests.gateway.scripted_orchestrator import HOLD, JOB_ID, end, logprob, queued, tokens

PROMPT = {"model": "tiny", "prompt": "Once upon"}


async def test_whole_text_completion(client, orchestrator):
    r = await client.post("/v1/completions", json={**PROMPT, "max_tokens": 2})
    assert r.status_code == 200
    body = r.json()
    assert (body["id"], body["object"]) == (f"cmpl-{JOB_ID}", "text_completion")
    assert body["model"] == "tiny"
    assert body["choices"] == [{"index": 0, "text": "Hello world", "logprobs": None,
                                "finish_reason": "stop"}]
    assert body["usage"]["total_tokens"] == 7
    spec = orchestrator.requests[-1].spec
    assert (spec.WhichOneof("input"), spec.prompt) == ("prompt", "Once upon")
    assert spec.sampling.max_tokens == 2


async def test_a_list_of_one_prompt_is_that_prompt(client, orchestrator):
    r = await client.post("/v1/completions", json={"model": "tiny", "prompt": ["Once upon"]})
    assert r.status_code == 200
    assert orchestrator.requests[-1].spec.prompt == "Once upon"


async def test_explicit_nulls_are_the_defaults_openai_python_sends(client, orchestrator):
    # The openai client sends null for echo=None, stream=None, ...: not an echo, not a
    # stream.
    r = await client.post("/v1/completions", json={**PROMPT, "echo": None, "stream": None,
                                                   "logprobs": None, "suffix": None})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == "Hello world"
    assert not orchestrator.requests[-1].spec.sampling.logprobs


async def test_top_p_zero_and_a_negative_seed_are_taken_as_openai_takes_them(client,
                                                                            orchestrator):
    r = await client.post("/v1/completions", json={**PROMPT, "top_p": 0, "seed": -2})
    assert r.status_code == 200, r.text
    s = orchestrator.requests[-1].spec.sampling
    assert (s.HasField("top_p"), s.top_k, s.seed) == (False, 1, 2**64 - 2)


async def test_stream_has_no_role_chunk_and_ends_with_finish(client):
    r = await client.post("/v1/completions", json={**PROMPT, "stream": True})
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    assert [(c["object"], c["choices"][0]["text"], c["choices"][0]["finish_reason"])
            for c in events[:-1]] == [("text_completion", "Hello", None),
                                      ("text_completion", " world", None),
                                      ("text_completion", "", "stop")]


async def test_logprobs_in_the_legacy_layout(client, orchestrator):
    orchestrator.script = [queued(), tokens("Hi", logprobs=[logprob("Hi", -0.5, {"Hi": -0.5})]),
                           tokens(" yo", logprobs=[logprob(" yo", -1.5, {" yo": -1.5})]), end()]
    r = await client.post("/v1/completions", json={**PROMPT, "logprobs": 1})
    assert r.json()["choices"][0]["logprobs"] == {
        "tokens": ["Hi", " yo"], "token_logprobs": [-0.5, -1.5],
        "top_logprobs": [{"Hi": -0.5}, {" yo": -1.5}], "text_offset": [0, 2]}
    s = orchestrator.requests[-1].spec.sampling
    assert (s.logprobs, s.top_logprobs) == (True, 1)


async def test_streamed_logprobs_continue_text_offsets(client, orchestrator):
    orchestrator.script = [queued(), tokens("Hi", logprobs=[logprob("Hi", -0.5)]),
                           tokens(" yo", logprobs=[logprob(" yo", -1.5)]), end()]
    r = await client.post("/v1/completions", json={**PROMPT, "logprobs": 0, "stream": True})
    offsets = [c["choices"][0]["logprobs"]["text_offset"] for c in sse_events(r.text)[:2]]
    assert offsets == [[0], [2]]


async def test_openai_client_completions(openai_client):
    done = await asyncio.to_thread(openai_client.completions.create, model="tiny", prompt="Once")
    assert done.choices[0].text == "Hello world"
    assert done.usage.prompt_tokens == 5

    def stream():
        return [c.choices[0].text for c in openai_client.completions.create(
            model="tiny", prompt="Once", stream=True)]

    assert "".join(await asyncio.to_thread(stream)) == "Hello world"


async def test_several_prompts_are_one_job_each_with_openai_choice_indexes(client, orchestrator):
    r = await client.post("/v1/completions", json={"model": "tiny", "prompt": ["a", "b", "c"],
                                                   "n": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert sorted(req.spec.prompt for req in orchestrator.requests) == ["a", "b", "c"]
    assert {req.spec.sampling.n for req in orchestrator.requests} == {2}
    assert [c["index"] for c in body["choices"]] == list(range(6))
    assert {c["text"] for c in body["choices"]} == {"Hello world"}
    # Each job counts its prompt once: 3 prompts x 5 tokens, 6 choices x 2 tokens.
    assert body["usage"] == {"prompt_tokens": 15, "completion_tokens": 12, "total_tokens": 27}
    first = next(req for req in orchestrator.requests if req.spec.prompt == "a")
    assert body["id"] == f"cmpl-job-{orchestrator.requests.index(first) + 1:04d}"


async def test_choice_i_times_n_plus_j_belongs_to_prompt_i(client, orchestrator):
    def echo(request):  # each job answers with its own prompt, so the indexes can be checked
        p, n = request.spec.prompt, request.spec.sampling.n
        return [queued(), *(tokens(f"{p}{j}", index=j) for j in range(n)),
                *(end(index=j) for j in range(n))]

    orchestrator.script_of = echo
    r = await client.post("/v1/completions", json={"model": "tiny", "prompt": ["x", "y"], "n": 2})
    assert [c["text"] for c in r.json()["choices"]] == ["x0", "x1", "y0", "y1"]
    r = await client.post("/v1/completions", json={"model": "tiny", "prompt": ["x", "y"], "n": 2,
                                                   "stream": True})
    texts = {c["choices"][0]["index"]: c["choices"][0]["text"]
             for c in sse_events(r.text)[:-1] if c["choices"][0]["text"]}
    assert texts == {0: "x0", 1: "x1", 2: "y0", 3: "y1"}


async def test_several_prompts_stream_with_one_usage_chunk(client):
    r = await client.post("/v1/completions", json={
        "model": "tiny", "prompt": ["a", "b"], "stream": True,
        "stream_options": {"include_usage": True}})
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    *chunks, usage = events[:-1]
    assert sorted(c["choices"][0]["index"] for c in chunks
                  if c["choices"][0]["finish_reason"]) == [0, 1]
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 14


async def test_one_refused_prompt_refuses_the_request_and_cancels_the_others(client, orchestrator):
    refused = OrchError("CONTEXT_LENGTH_EXCEEDED", "too long", param="prompt")
    orchestrator.script_of = lambda request: (
        [refused] if request.spec.prompt == "long" else [queued(), HOLD])
    r = await client.post("/v1/completions", json={"model": "tiny", "prompt": ["ok", "long"]})
    assert r.status_code == 400
    assert (r.json()["error"]["code"], r.json()["error"]["param"]) == (
        "context_length_exceeded", "prompt")
    await asyncio.wait_for(orchestrator.cancelled.wait(), 10)  # the admitted "ok" job


async def test_each_prompt_gets_its_own_idempotency_key(client, orchestrator):
    await client.post("/v1/completions", json={"model": "tiny", "prompt": ["a", "b"]},
                      headers={"Idempotency-Key": "k-7"})
    assert sorted((r.spec.prompt, r.idempotency_key) for r in orchestrator.requests) == [
        ("a", "k-7#0"), ("b", "k-7#1")]


async def test_openai_client_with_a_list_of_prompts(openai_client):
    done = await asyncio.to_thread(openai_client.completions.create, model="tiny",
                                   prompt=["Once", "Twice"], n=2)
    assert [c.index for c in done.choices] == [0, 1, 2, 3]
    assert done.usage.prompt_tokens == 10


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
async def test_a_disconnect_cancels_every_prompt_job(http_url, orchestrator, stream):
    orchestrator.script = [queued(), tokens("Hel"), HOLD]
    body = {"model": "tiny", "prompt": ["a", "b", "c"], "stream": stream}
    async with httpx.AsyncClient(base_url=http_url) as c:
        request = asyncio.create_task(c.post("/v1/completions", json=body))
        while len(orchestrator.requests) < 3 or not orchestrator.holding.is_set():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # every job is holding
        request.cancel()
        await asyncio.gather(request, return_exceptions=True)
    for _ in range(500):
        if orchestrator.cancellations == 3:
            break
        await asyncio.sleep(0.01)
    assert orchestrator.cancellations == 3


async def test_a_key_too_long_to_share_between_prompts_is_refused(client, orchestrator):
    r = await client.post("/v1/completions", json={"model": "tiny", "prompt": ["a", "b"]},
                          headers={"Idempotency-Key": "k" * 255})
    assert (r.status_code, r.json()["error"]["param"]) == (400, "Idempotency-Key")
    assert orchestrator.requests == []
