"""OpenAI conformance: the official `openai` client against a real stack.

`llama-orch up` as real processes (orchestrator, pool manager, gateway, workers), the
embedded `tiny` model on the hf engine on the CPU, one stack for the whole module.
Every endpoint and option of the drop-in, in the client's sync, async and streaming
forms, and every error as the exception class the client raises for it.

Besides `tiny`, the stack knows three simulated models (the `sim` engine, configured
explicitly): `sim` (no penalties: a request with one is refused), `faulty` (every
choice fails: errors mid-stream and whole) and `hang` (its worker stops answering
after two tokens: a client that goes away still has its job cancelled within the
orchestrator's cancellation deadline).
"""

from __future__ import annotations

import asyncio
import time

import grpc
import httpx
import openai
import pytest

from llama_orch.v1 import client_pb2, client_pb2_grpc, events_pb2
from tests.stack import Stack, sim_model

pytestmark = pytest.mark.e2e

CANCEL_GRACE_S = 2.0
CHAT = [{"role": "system", "content": "You tell short fables."},
        {"role": "user", "content": "tell me a story about a fox"}]
# `faulty` fails each choice before its natural end (at most 256 tokens): a limit above
# that lets it get there.
FAULTY_TOKENS = 300
SIM_MODELS = {
    "sim": {"ttft_ms": 1, "itl_ms": 1},
    "faulty": {"ttft_ms": 1, "itl_ms": 1, "error_rate": 1.0},
    "hang": {"ttft_ms": 1, "itl_ms": 1, "hang_after_tokens": 2},
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("conformance")
    tables = []
    for name, settings in SIM_MODELS.items():
        folder = root / name
        sim_model(folder, {**settings, "memory_bytes": 1 << 20})
        tables.append(f'[models.{name}]\nref = "file:{folder}"\nengine = "sim"\n')
    s = Stack(root, orchestrator_extra=f"cancel_grace_s = {CANCEL_GRACE_S}",
              extra_config="\n".join(tables)).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url + "/v1", api_key="unused", max_retries=0,
                         timeout=120)


@pytest.fixture
def aclient(stack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=stack.base_url + "/v1", api_key="unused", max_retries=0,
                              timeout=120)


def chat(client, **kwargs):
    return client.chat.completions.create(**{"model": "tiny", "messages": CHAT, "max_tokens": 24,
                                             "seed": 1, **kwargs})


def streamed_text(chunks, index: int = 0) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks
                   if c.choices and c.choices[0].index == index)


def usage_adds_up(usage) -> bool:
    return (usage.prompt_tokens > 0 and usage.completion_tokens > 0
            and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens)


# ---- models ----------------------------------------------------------------------------


def test_models_list_and_retrieve(client):
    ids = [m.id for m in client.models.list().data]
    assert {"tiny", "sim", "faulty", "hang"} <= set(ids)
    tiny = client.models.retrieve("tiny")
    assert (tiny.id, tiny.object, tiny.owned_by) == ("tiny", "model", "llama-orch")
    assert tiny.created > 0


def test_retrieve_unknown_model_raises_not_found(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert (info.value.status_code, info.value.code) == (404, "model_not_found")


async def test_models_async(aclient):
    page = await aclient.models.list()
    assert "tiny" in [m.id for m in page.data]
    assert (await aclient.models.retrieve("tiny")).id == "tiny"


# ---- chat completions ------------------------------------------------------------------


def test_chat_whole_response_is_complete(client):
    done = chat(client, messages=[*CHAT, {"role": "assistant", "content": "Once upon a time"},
                                  {"role": "user", "content": "go on"}], user="conformance")
    assert done.object == "chat.completion" and done.id.startswith("chatcmpl-")
    assert done.model == "tiny" and done.system_fingerprint.startswith("fp_")
    [choice] = done.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert choice.message.content and choice.finish_reason in ("stop", "length")
    assert choice.logprobs is None
    assert usage_adds_up(done.usage)


def test_developer_role_is_a_system_message(client):
    done = chat(client, messages=[{"role": "developer", "content": "Be brief."},
                                  {"role": "user", "content": "a fox"}])
    assert done.choices[0].message.content


def test_chat_stream_chunks_in_order(client):
    chunks = list(chat(client, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].choices[0].delta.content is None
    assert all(c.usage is None for c in chunks)
    # The stream says what the whole response says.
    assert streamed_text(chunks) == chat(client).choices[0].message.content


def test_include_usage_adds_one_usage_chunk(client):
    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and usage_adds_up(chunks[-1].usage)
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].usage.completion_tokens == chat(client).usage.completion_tokens


async def test_chat_async_whole_and_streamed(aclient):
    done = await aclient.chat.completions.create(model="tiny", messages=CHAT, max_tokens=16,
                                                 seed=5)
    stream = await aclient.chat.completions.create(model="tiny", messages=CHAT, max_tokens=16,
                                                   seed=5, stream=True)
    chunks = [c async for c in stream]
    assert streamed_text(chunks) == done.choices[0].message.content
    assert usage_adds_up(done.usage)


def test_same_seed_same_answer(client):
    a, b = (chat(client, seed=1234, temperature=1.0, max_tokens=30) for _ in range(2))
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.system_fingerprint == b.system_fingerprint


def test_temperature_zero_is_greedy(client):
    texts = {chat(client, seed=None, temperature=0, max_tokens=20).choices[0].message.content
             for _ in range(2)}
    assert len(texts) == 1


def test_top_p_and_penalties_on_an_engine_that_has_them(client):
    done = chat(client, top_p=0.5, presence_penalty=1.5, frequency_penalty=1.0)
    assert done.choices[0].message.content


@pytest.mark.parametrize("limit", ["max_tokens", "max_completion_tokens"])
def test_length_limits(client, limit):
    done = chat(client, **{"max_tokens": None, limit: 3, "seed": 9})
    assert 1 <= done.usage.completion_tokens <= 3


def test_n_choices(client):
    done = chat(client, n=3, temperature=1.0)
    assert [c.index for c in done.choices] == [0, 1, 2]
    assert all(c.message.content for c in done.choices)
    chunks = list(chat(client, n=2, stream=True))
    assert {c.choices[0].index for c in chunks} == {0, 1}
    assert sum(1 for c in chunks if c.choices[0].finish_reason) == 2
    assert [streamed_text(chunks, i) for i in (0, 1)] == [
        c.message.content for c in chat(client, n=2).choices]


def test_stop_ends_the_text_before_the_stop_sequence(client):
    text = chat(client, seed=21, max_tokens=40).choices[0].message.content
    words = text.split()
    assert len(words) >= 4, text
    stop = words[2]
    cut = text[:text.index(stop)]
    stopped = chat(client, seed=21, max_tokens=40, stop=[stop, "\u2603never"])
    assert stopped.choices[0].message.content == cut
    assert stopped.choices[0].finish_reason == "stop"


def test_text_held_back_for_a_stop_string_arrives_when_the_length_limit_ends_it(client):
    # A stop string that begins with the text's last characters and never completes:
    # the worker holds those characters back in case it does, and releases them at
    # the length limit with no token of their own. They reached neither the streamed
    # nor the whole response (the orchestrator took them for text already sent).
    text = chat(client, seed=21, max_tokens=12).choices[0].message.content
    stop = [text[-1] + "\u2603never"]
    whole = chat(client, seed=21, max_tokens=12, stop=stop).choices[0]
    assert (whole.message.content, whole.finish_reason) == (text, "length")
    assert streamed_text(list(chat(client, seed=21, max_tokens=12, stop=stop,
                                   stream=True))) == text


def test_chat_logprobs(client):
    done = chat(client, logprobs=True, top_logprobs=2, max_tokens=8)
    content = done.choices[0].logprobs.content
    assert content and len(content) <= done.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 2
        assert entry.bytes == list(entry.token.encode())
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
    chunks = list(chat(client, logprobs=True, top_logprobs=1, max_tokens=8, stream=True))
    streamed = [e for c in chunks if c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in content]


def test_extensions_and_unknown_fields(client, stack):
    raw = client.chat.completions.with_raw_response.create(
        model="tiny", messages=CHAT, max_tokens=4, seed=3,
        extra_headers={"X-Correlation-Id": "conformance-1"},
        extra_body={"priority": "batch", "top_k": 5, "a_future_field": {"x": 1}})
    assert raw.headers["x-correlation-id"] == "conformance-1"
    assert raw.parse().choices[0].message.content
    # detach: the job outlives its client (here: it simply finishes and is recorded).
    done = chat(client, max_tokens=4, extra_body={"detach": True})
    job = httpx.get(f"{stack.base_url}/v2/tasks/{done.id.removeprefix('chatcmpl-')}").json()
    assert job["status"] == "succeeded"


# ---- completions -----------------------------------------------------------------------


def test_completion_whole_and_streamed(client):
    done = client.completions.create(model="tiny", prompt="The fox", max_tokens=12, seed=4)
    assert done.object == "text_completion" and done.id.startswith("cmpl-")
    assert done.choices[0].text and done.choices[0].finish_reason in ("stop", "length")
    assert usage_adds_up(done.usage)
    chunks = list(client.completions.create(model="tiny", prompt="The fox", max_tokens=12, seed=4,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == done.choices[0].text
    assert chunks[-1].usage.total_tokens == done.usage.total_tokens


async def test_completion_async(aclient):
    done = await aclient.completions.create(model="tiny", prompt="The crow", max_tokens=8, seed=6)
    stream = await aclient.completions.create(model="tiny", prompt="The crow", max_tokens=8,
                                              seed=6, stream=True)
    assert "".join([c.choices[0].text async for c in stream]) == done.choices[0].text


def test_a_list_of_prompts_gives_n_choices_per_prompt(client):
    prompts = ["The fox", "The crow"]
    done = client.completions.create(model="tiny", prompt=prompts, n=2, max_tokens=6, seed=8)
    assert [c.index for c in done.choices] == [0, 1, 2, 3]
    for i, prompt in enumerate(prompts):
        alone = client.completions.create(model="tiny", prompt=prompt, n=2, max_tokens=6, seed=8)
        assert [c.text for c in done.choices[2 * i:2 * i + 2]] == [c.text for c in alone.choices]
    single = client.completions.create(model="tiny", prompt=["The fox"], max_tokens=6, seed=8)
    assert single.choices[0].text == done.choices[0].text


def test_completion_logprobs(client):
    done = client.completions.create(model="tiny", prompt="The fox", max_tokens=6, seed=4,
                                     logprobs=2)
    lp = done.choices[0].logprobs
    assert lp.tokens and len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs)
    assert all(len(top) <= 2 for top in lp.top_logprobs)
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0


# ---- errors ----------------------------------------------------------------------------


BAD = {
    "temperature": (dict(temperature=5), openai.BadRequestError, "invalid_argument", "temperature"),
    "n-above-limit": (dict(n=9), openai.BadRequestError, "invalid_argument", "n"),
    "max-tokens-zero": (dict(max_tokens=0), openai.BadRequestError, "invalid_argument",
                        "max_tokens"),
    "empty-messages": (dict(messages=[]), openai.BadRequestError, "invalid_argument", "messages"),
    "bad-role": (dict(messages=[{"role": "robot", "content": "x"}]), openai.BadRequestError,
                 "invalid_argument", "messages[0].role"),
    "tools": (dict(tools=[{"type": "function", "function": {"name": "f"}}]),
              openai.BadRequestError, "unsupported_parameter", "tools"),
    "context": (dict(messages=[{"role": "user", "content": "fox " * 600}]),
                openai.BadRequestError, "context_length_exceeded", "messages"),
    "unknown-model": (dict(model="no-such-model"), openai.NotFoundError, "model_not_found",
                      "model"),
    "penalty-on-sim": (dict(model="sim", presence_penalty=0.5), openai.BadRequestError,
                       "unsupported_parameter", "presence_penalty"),
}


@pytest.mark.parametrize("kwargs,exc,code,param", BAD.values(), ids=BAD.keys())
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_refusals_raise_the_openai_exception(client, kwargs, exc, code, param, stream):
    with pytest.raises(exc) as info:
        chat(client, stream=stream, **kwargs)
    assert (info.value.code, info.value.param) == (code, param)
    assert info.value.body["type"] == "invalid_request_error"


async def test_refusals_async(aclient):
    with pytest.raises(openai.BadRequestError) as info:
        await aclient.completions.create(model="tiny", prompt=[1, 2, 3])
    assert (info.value.code, info.value.param) == ("unsupported_parameter", "prompt")


def test_a_body_over_the_limit_is_413(client):
    with pytest.raises(openai.APIStatusError) as info:
        chat(client, messages=[{"role": "user", "content": "x" * (5 * 1024 * 1024)}])
    assert (info.value.status_code, info.value.code) == (413, "payload_too_large")


def test_a_failing_job_mid_stream_raises_api_error(client):
    with pytest.raises(openai.APIError) as info:
        for _ in chat(client, model="faulty", stream=True, max_tokens=FAULTY_TOKENS):
            pass
    assert info.value.body["code"] == "engine_error"


async def test_a_failing_job_mid_stream_raises_api_error_async(aclient):
    stream = await aclient.chat.completions.create(model="faulty", messages=CHAT, stream=True,
                                                   seed=2, max_tokens=FAULTY_TOKENS)
    with pytest.raises(openai.APIError) as info:
        async for _ in stream:
            pass
    assert info.value.body["code"] == "engine_error"


def test_a_failing_whole_job_is_a_server_error(client):
    with pytest.raises(openai.InternalServerError) as info:
        chat(client, model="faulty", max_tokens=FAULTY_TOKENS)
    assert (info.value.status_code, info.value.code) == (500, "engine_error")


# ---- a client that goes away -----------------------------------------------------------


def watch(stack, kinds, after_id: int, until, timeout: float) -> list[events_pb2.Fact]:
    got = []
    with grpc.insecure_channel(stack.orchestrator) as ch:
        stream = client_pb2_grpc.ClientServiceStub(ch).WatchFacts(
            client_pb2.WatchFactsRequest(kinds=kinds, after_id=after_id), timeout=timeout)
        try:
            for resp in stream:
                got.append(resp.fact)
                if until(resp.fact):
                    stream.cancel()
                    break
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
    return got


def last_fact(stack) -> int:
    every = watch(stack, [], 0, lambda f: False, timeout=1.0)
    return every[-1].id if every else 0


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_a_disconnect_cancels_the_job_within_the_deadline(stack, stream):
    """The `hang` worker stops answering after two tokens; the client goes away once the
    job runs, and the orchestrator closes the job as cancelled within its grace."""
    start = last_fact(stack)
    body = {"model": "hang", "messages": CHAT, "max_tokens": 100, "seed": 1, "stream": stream}

    async def go_away() -> float:
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=60) as http:
            request = asyncio.ensure_future(http.post("/v1/chat/completions", json=body))
            await asyncio.to_thread(watch, stack, [events_pb2.FACT_KIND_JOB_STARTED], start,
                                    lambda f: True, 60)
            request.cancel()  # closes the connection mid-request
            await asyncio.gather(request, return_exceptions=True)
            return time.monotonic()

    gone = asyncio.run(go_away())
    [started] = watch(stack, [events_pb2.FACT_KIND_JOB_STARTED], start, lambda f: True, 5)
    cancelled = watch(stack, [events_pb2.FACT_KIND_JOB_CANCELLED], start,
                      lambda f: f.job_id == started.job_id, 30)
    assert cancelled and cancelled[-1].job_id == started.job_id
    assert time.monotonic() - gone < CANCEL_GRACE_S + 3
    job = httpx.get(f"{stack.base_url}/v2/tasks/{started.job_id}").json()
    assert job["status"] == "cancelled" and job["error"]["code"] == "cancelled"
