"""POST /v1/completions: prompt translation, whole and streamed text completions."""

from __future__ import annotations

import asyncio

from tests.gateway.conftest import sse_events
from tests.gateway.scripted_orchestrator import JOB_ID, end, logprob, queued, tokens

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
