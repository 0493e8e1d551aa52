"""The OpenAI-shaped face of the SDK against a live stack: the call shapes and result
shapes of the `openai` package, over the orchestrator's gRPC API."""

from __future__ import annotations

import pytest
from llama_orch_sdk import (
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    InvalidRequestError,
    NotFoundError,
)

pytestmark = pytest.mark.e2e

CHAT = [{"role": "user", "content": "tell me a story about a fox"}]
PROMPTS = ["Once upon a time a hungry wolf", "The Lion and the Mouse."]
# Greedy, the tiny model writes all 400 tokens of CHAT (no early end of text) whatever
# the sampler's random generator, so a cancel always lands mid-job.
LONG = {"max_tokens": 400, "temperature": 0}


def test_models_list_and_retrieve(client):
    models = client.models.list()
    assert models.object == "list"
    assert "tiny" in [m.id for m in models]
    tiny = client.models.retrieve("tiny")
    assert (tiny.id, tiny.object, tiny.owned_by) == ("tiny", "model", "llama-orch")
    assert tiny.created > 0 and tiny.context_length > 0 and tiny.engine == "hf"


def test_chat_answer_has_openai_shape(client):
    answer = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=12, seed=7)
    assert isinstance(answer, ChatCompletion)
    assert answer.object == "chat.completion" and answer.model == "tiny"
    assert answer.id.startswith("chatcmpl-job-") and answer.created > 0
    [choice] = answer.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert choice.message.content and choice.finish_reason in ("stop", "length")
    usage = answer.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert answer.system_fingerprint.startswith("fp_")
    assert answer.to_dict()["choices"][0]["message"]["content"] == choice.message.content


def test_streamed_chat_with_usage_matches_the_whole_answer(client):
    whole = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=20, seed=8)
    with client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=20, seed=8,
                                        stream=True,
                                        stream_options={"include_usage": True}) as stream:
        chunks = list(stream)
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-job-")
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices
                and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    last = chunks[-1]
    assert last.choices == [] and last.usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_the_same_seed_gives_the_same_text(client):
    texts = [client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=25, seed=1234,
                                            temperature=1.0).choices[0].message.content
             for _ in range(2)]
    assert texts[0] == texts[1] and texts[0]


def test_n_choices_are_numbered(client):
    answer = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=6, seed=3, n=2)
    assert [c.index for c in answer.choices] == [0, 1]
    assert all(c.message.content for c in answer.choices)


def test_a_list_of_prompts_gives_each_prompt_its_choices(client):
    alone = [client.completions.create(model="tiny", prompt=p, max_tokens=8, seed=5)
             for p in PROMPTS]
    both = client.completions.create(model="tiny", prompt=PROMPTS, max_tokens=8, seed=5)
    assert isinstance(both, Completion) and both.object == "text_completion"
    assert [c.index for c in both.choices] == [0, 1]
    assert [c.text for c in both.choices] == [a.choices[0].text for a in alone]
    assert both.usage.prompt_tokens == sum(a.usage.prompt_tokens for a in alone)
    assert both.usage.completion_tokens == sum(a.usage.completion_tokens for a in alone)


def test_a_streamed_list_of_prompts_matches_the_whole_completion(client):
    both = client.completions.create(model="tiny", prompt=PROMPTS, max_tokens=8, seed=6, n=2)
    texts: dict[int, str] = {}
    for chunk in client.completions.create(model="tiny", prompt=PROMPTS, max_tokens=8, seed=6, n=2,
                                           stream=True):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
    assert texts == {c.index: c.text for c in both.choices}
    assert sorted(texts) == [0, 1, 2, 3]


def test_a_returned_message_can_go_back_into_the_conversation(client):
    first = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=5, seed=2)
    follow = client.chat.completions.create(
        model="tiny", max_tokens=5, seed=2,
        messages=[*CHAT, first.choices[0].message, {"role": "user", "content": "and then?"}])
    assert follow.usage.prompt_tokens > first.usage.prompt_tokens


def test_closing_a_stream_cancels_its_job_unless_detached(client, settled):
    jobs = {}
    for detach in (False, True):
        stream = client.chat.completions.create(model="tiny", messages=CHAT, stream=True,
                                                detach=detach, **LONG)
        first = next(stream)
        stream.close()
        jobs[detach] = settled(first.id.removeprefix("chatcmpl-"))
    assert jobs[False].status == "cancelled"
    assert jobs[True].status == "succeeded" and jobs[True].detach


@pytest.mark.parametrize("kwargs,cls,code,param", [
    pytest.param(dict(model="nope"), NotFoundError, "MODEL_NOT_FOUND", "model", id="unknown-model"),
    pytest.param(dict(model="tiny", temperature=7), InvalidRequestError, "INVALID_ARGUMENT",
                 "temperature", id="temperature-out-of-range"),
    pytest.param(dict(model="tiny", messages=[{"role": "user", "content": "fox " * 600}]),
                 InvalidRequestError, "CONTEXT_LENGTH_EXCEEDED", "messages", id="context-too-long"),
    pytest.param(dict(model="tiny", messages=[{"role": "robot", "content": "hi"}]),
                 InvalidRequestError, "INVALID_ARGUMENT", "messages[0].role", id="bad-role"),
    pytest.param(dict(model="tiny", n=9), InvalidRequestError, "INVALID_ARGUMENT", "n",
                 id="too-many-choices"),
])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_refusals_raise_typed_errors_from_the_call(client, kwargs, cls, code, param, stream):
    with pytest.raises(cls) as err:
        client.chat.completions.create(**{"messages": CHAT, "max_tokens": 5, **kwargs},
                                       stream=stream)
    assert (err.value.code, err.value.param) == (code, param)
    assert err.value.message and not err.value.retryable


def test_logprobs_reach_the_client(client):
    answer = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=5, seed=4,
                                            logprobs=True, top_logprobs=2)
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 for t in content)
