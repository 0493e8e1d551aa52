"""Job events -> OpenAI results, on scripted events (no stack): what the live stack does
not exercise today (logprobs, failures mid-stream, truncated streams)."""

from __future__ import annotations

import pytest
from llama_orch_sdk import CancelledError, ServerError
from llama_orch_sdk._gen.llama_orch.v1 import client_pb2, common_pb2, errors_pb2, events_pb2
from llama_orch_sdk.resources._outcome import CHAT, TEXT, Chunks, whole

E = events_pb2


def response(job_id: str, seq: int, **kind) -> client_pb2.GenerateResponse:
    event = E.JobEvent(job_id=job_id, seq=seq, **kind)
    event.time.seconds = 1_700_000_000
    return client_pb2.GenerateResponse(event=event)


def job(job_id: str, *texts: str, prompt_tokens: int = 3, logprobs: bool = False,
        reason: str = "stop") -> list[client_pb2.GenerateResponse]:
    """A finished one-choice job: queued, started, one tokens event per text, end."""
    out = [response(job_id, 1, queued=E.JobQueued()),
           response(job_id, 2, started=E.JobStarted(prompt_tokens=prompt_tokens))]
    for text in texts:
        lp = [E.TokenLogprobs(token=text, logprob=-0.5,
                              top=[E.TokenLogprob(token=text, logprob=-0.5),
                                   E.TokenLogprob(token="x", logprob=-2.0)])] if logprobs else []
        out.append(response(job_id, len(out) + 1, tokens=E.JobTokens(
            text=text, token_ids=[len(out)], logprobs=lp)))
    out.append(response(job_id, len(out) + 1, end=E.JobEnd(
        finish_reason=reason, usage=common_pb2.Usage(prompt_tokens=prompt_tokens,
                                                     completion_tokens=len(texts)),
        proof=common_pb2.ProofRecord(engine="hf", engine_version="1", model_digest="d"))))
    return out


def test_chat_logprobs_have_openai_shape():
    answer = whole(CHAT, [job("job-a", "Hi", " there", logprobs=True)], model="m", n=1,
                   logprobs=True)
    content = answer.choices[0].logprobs.content
    assert [(t.token, t.logprob, t.bytes) for t in content] == [("Hi", -0.5, [72, 105]),
                                                                 (" there", -0.5, list(b" there"))]
    assert [(t.token, t.logprob) for t in content[1].top_logprobs] == [(" there", -0.5),
                                                                       ("x", -2.0)]


def test_text_logprobs_use_the_legacy_layout_with_character_offsets():
    completion = whole(TEXT, [job("job-a", "Hi", " there", logprobs=True)], model="m", n=1,
                       logprobs=True)
    lp = completion.choices[0].logprobs
    assert lp.tokens == ["Hi", " there"] and lp.token_logprobs == [-0.5, -0.5]
    assert lp.text_offset == [0, 2]
    assert lp.top_logprobs[0] == {"Hi": -0.5, "x": -2.0}


def test_streamed_text_logprobs_continue_the_offsets():
    chunks = Chunks(TEXT, model="m", n=1, logprobs=True, include_usage=False)
    offsets = [c.choices[0].logprobs.text_offset for m in job("job-a", "Hi", " there",
                                                               logprobs=True)
               for c in chunks.feed(0, m) if c.choices[0].logprobs]
    assert offsets == [[0], [2]]


def test_several_jobs_make_one_result():
    completion = whole(TEXT, [job("job-a", "A", prompt_tokens=2), job("job-b", "B", "b")],
                       model="m", n=1, logprobs=False)
    assert completion.id == "cmpl-job-a"
    assert [(c.index, c.text) for c in completion.choices] == [(0, "A"), (1, "Bb")]
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 3)
    assert completion.system_fingerprint.startswith("fp_")


def test_an_error_event_raises_the_jobs_typed_error():
    events = job("job-a", "Hi")[:-1] + [response("job-a", 4, error=errors_pb2.ErrorDetail(
        code=errors_pb2.ERROR_CODE_CANCELLED, message="cancelled by the client"))]
    with pytest.raises(CancelledError) as err:
        whole(CHAT, [events], model="m", n=1, logprobs=False)
    assert err.value.code == "CANCELLED"
    chunks = Chunks(CHAT, model="m", n=1, logprobs=False, include_usage=False)
    with pytest.raises(CancelledError):
        for m in events:
            chunks.feed(0, m)


def test_a_stream_that_ends_before_every_choice_finished_is_an_error():
    cut = job("job-a", "Hi")[:-1]
    with pytest.raises(ServerError):
        whole(CHAT, [cut], model="m", n=1, logprobs=False)
    chunks = Chunks(CHAT, model="m", n=1, logprobs=False, include_usage=True)
    for m in cut:
        chunks.feed(0, m)
    with pytest.raises(ServerError):
        chunks.finish()


def test_a_whole_result_applies_a_divergence_and_a_stream_keeps_what_it_gave():
    # A retry produced other tokens from token 1 (character 3) on: what follows
    # replaces the text after that point. Before, the whole result kept both texts.
    events = job("job-a", "Hi ", "there", " you", logprobs=True)
    diverged = response("job-a", 6, divergence=E.JobDivergence(
        token_index=1, char_offset=3, message="the retry differs from token 1"))
    again = response("job-a", 7, tokens=E.JobTokens(text="folks", token_ids=[9], logprobs=[
        E.TokenLogprobs(token="folks", logprob=-1.0)]))
    events = events[:-1] + [diverged, again, events[-1]]
    answer = whole(CHAT, [events], model="m", n=1, logprobs=True)
    assert answer.choices[0].message.content == "Hi folks"
    assert [t.token for t in answer.choices[0].logprobs.content] == ["Hi ", "folks"]
    chunks = Chunks(CHAT, model="m", n=1, logprobs=False, include_usage=False)
    streamed = "".join(c.choices[0].delta.content or "" for m in events
                       for c in chunks.feed(0, m) if c.choices)
    assert streamed == "Hi there youfolks"  # chunks only append (OpenAI's stream)


def test_results_have_openais_optional_fields_as_none():
    # Code written for `openai` reads these (`if message.tool_calls:`); llama-orch never
    # fills them, so they are there and None.
    answer = whole(CHAT, [job("job-a", "Hi")], model="m", n=1, logprobs=False)
    message = answer.choices[0].message
    assert (message.tool_calls, message.function_call, message.audio,
            message.annotations) == (None, None, None, None)
    assert answer.service_tier is None
    assert (answer.usage.completion_tokens_details, answer.usage.prompt_tokens_details) == \
        (None, None)
    chunks = Chunks(CHAT, model="m", n=1, logprobs=False, include_usage=False)
    first = next(c for m in job("job-a", "Hi") for c in chunks.feed(0, m))
    delta = first.choices[0].delta
    assert (delta.tool_calls, delta.function_call, delta.audio) == (None, None, None)
    assert first.service_tier is None
