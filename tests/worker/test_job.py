"""worker.job over a scripted engine: limits, validation and event order, no model."""

from __future__ import annotations

import asyncio
import time

import pytest

from common.errors import OrchError, code_name
from llama_orch.v1 import common_pb2, worker_pb2
from worker.engines.base import Engine, Step
from worker.job import Control, execute, sampling_configs, token_budget

HANG_GUARD_S = 30  # only against a hang; nothing asserts on timing
VOCAB = ["<eos>", "\u2581a", "\u2581b", "\u2581c", "\u2581d", "\u2581e"]
EOS = 0


class ScriptedEngine(Engine):
    """Yields a fixed token script; `fail_at` raises there, like a broken device."""

    name = "scripted"

    def __init__(self, script: list[int], fail_at: int = -1):
        super().__init__(None, ["cpu"], 1, {})
        self.script, self.fail_at = script, fail_at
        self.context_length, self.vocab_size, self.eos_token_ids = 16, len(VOCAB), frozenset({EOS})
        self.closed = 0

    def load(self): pass
    def device_bytes(self): return {"cpu": 0}
    def encode(self, text): return [VOCAB.index("\u2581" + w) for w in text.split()]
    def encode_chat(self, messages): return self.encode(messages[-1]["content"])
    def token_text(self, token_id, previous=None): return VOCAB[token_id].replace("\u2581", " ")

    def decode(self, ids):
        return "".join(VOCAB[i] for i in ids if i != EOS).replace("\u2581", " ").lstrip(" ")

    async def generate(self, prompt_ids, sampling):
        try:
            for index, token in enumerate(self.script):
                if index == self.fail_at:
                    raise RuntimeError("device fell off the bus")
                yield Step(token, eos=token == EOS)
        finally:
            self.closed += 1


def req(prompt="a b", **sampling) -> worker_pb2.ExecuteRequest:
    return worker_pb2.ExecuteRequest(job_id="j", prompt=prompt,
                                     sampling=common_pb2.SamplingParams(**sampling))


async def run(engine, request, control=None) -> list[worker_pb2.ExecuteResponse]:
    return [e async for e in execute(engine, request, control or Control("j"), "file:/m")]


def shape(events) -> list[str]:
    out = []
    for e in events:
        kind = e.WhichOneof("event")
        if kind in ("tokens", "end"):
            kind += f"{getattr(e, kind).choice_index}"
        elif kind == "error":
            kind += f" {code_name(e.error.code)}"
        out.append(kind)
    return out


@pytest.mark.parametrize("context,prompt,max_tokens,expected", [
    (16, 4, 0, 12), (16, 4, 12, 12), (16, 4, 5, 5),
    (16, 4, 13, "CONTEXT_LENGTH_EXCEEDED"), (16, 16, 0, "CONTEXT_LENGTH_EXCEEDED"),
    (16, 20, 1, "CONTEXT_LENGTH_EXCEEDED"),
], ids=["zero-means-rest", "exactly-full", "within", "one-over", "prompt-fills", "prompt-over"])
def test_token_budget(context, prompt, max_tokens, expected):
    if isinstance(expected, int):
        assert token_budget(context, prompt, max_tokens) == expected
    else:
        with pytest.raises(OrchError) as err:
            token_budget(context, prompt, max_tokens)
        assert err.value.code == expected


@pytest.mark.parametrize("params,param", [
    ({"temperature": -0.1}, "temperature"), ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"), ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -3.0}, "frequency_penalty"), ({"top_logprobs": 21}, "top_logprobs"),
    ({"temperature": float("nan")}, "temperature"),
], ids=["negative-temperature", "zero-top-p", "top-p-over-one", "presence", "frequency",
        "top-logprobs", "nan"])
def test_sampling_configs_refuse_nonsense(params, param):
    with pytest.raises(OrchError) as err:
        sampling_configs(common_pb2.SamplingParams(**params))
    assert (err.value.code, err.value.param) == ("INVALID_ARGUMENT", param)


@pytest.mark.parametrize("params,seeds,temperature", [
    ({}, [0], 1.0), ({"seed": 7, "n": 3}, [7, 8, 9], 1.0),
    ({"seed": 2**64 - 1, "n": 2}, [2**64 - 1, 0], 1.0), ({"temperature": 0.0}, [0], 0.0),
], ids=["defaults", "seed-plus-index", "seed-wraps", "greedy"])
def test_sampling_configs(params, seeds, temperature):
    configs = sampling_configs(common_pb2.SamplingParams(**params))
    assert [c.seed for c in configs] == seeds
    assert configs[0].temperature == temperature


@pytest.mark.parametrize("script,sampling,expected_shape,finish,text,ids", [
    ([1, 2, 3], {"max_tokens": 3}, ["started", "tokens0", "tokens0", "tokens0", "metrics", "end0"],
     "length", " a b c", [1, 2, 3]),
    ([1, 2, EOS, 3], {"max_tokens": 5}, ["started", "tokens0", "tokens0", "metrics", "end0"],
     "stop", " a b", [1, 2]),
    ([1, 2, 3, 4], {"max_tokens": 5, "stop": [" c"]},
     ["started", "tokens0", "tokens0", "tokens0", "metrics", "end0"], "stop", " a b", [1, 2, 3]),
    ([1, 2, 3], {"max_tokens": 3, "stop": [" b d"]},
     ["started", "tokens0", "tokens0", "metrics", "end0"], "length", " a b c", [1, 2, 3]),
], ids=["length", "eos-not-emitted", "stop-string-cut-ids-kept", "stop-prefix-released"])
async def test_single_choice(script, sampling, expected_shape, finish, text, ids):
    engine = ScriptedEngine(script)
    events = await run(engine, req(**sampling))
    assert shape(events) == expected_shape
    assert "".join(e.tokens.text for e in events if e.HasField("tokens")) == text
    assert [t for e in events if e.HasField("tokens") for t in e.tokens.token_ids] == ids
    end = events[-1].end
    assert (end.finish_reason, end.usage.completion_tokens, end.proof.token_count) == (
        finish, len(ids), len(ids))
    assert engine.closed == 1  # the engine's generator is always closed


async def test_choices_run_in_turn_with_one_metrics_before_the_last_end():
    events = await run(ScriptedEngine([1, 2]), req(max_tokens=2, n=2, seed=4))
    assert shape(events) == ["started", "tokens0", "tokens0", "end0",
                             "tokens1", "tokens1", "metrics", "end1"]
    assert [e.end.proof.seed for e in events if e.HasField("end")] == [4, 5]
    assert events[-2].metrics.generated_tokens == 4


async def test_engine_failure_ends_the_job_with_engine_error():
    engine = ScriptedEngine([1, 2, 3], fail_at=1)
    events = await run(engine, req(max_tokens=3))
    assert shape(events) == ["started", "tokens0", "error ENGINE_ERROR"]
    assert "device fell off the bus" in events[-1].error.message and engine.closed == 1


async def test_cancel_is_seen_at_the_next_token():
    control = Control("j")
    events = []
    async for event in execute(ScriptedEngine([1, 2, 3]), req(max_tokens=3), control, "file:/m"):
        events.append(event)
        if event.HasField("tokens"):
            control.cancel()
    assert shape(events) == ["started", "tokens0", "error CANCELLED"]


class StalledEngine(ScriptedEngine):
    """Its first step never comes (a long prefill, a queue inside the engine, a stalled
    device) until `release` is set."""

    def __init__(self):
        super().__init__([1, 2])
        self.release = asyncio.Event()

    async def generate(self, prompt_ids, sampling):
        try:
            await self.release.wait()
            yield Step(1)
        finally:
            self.closed += 1


@pytest.mark.parametrize("how", ["cancel", "deadline"])
async def test_a_cancel_or_the_deadline_ends_a_job_whose_engine_is_stuck_in_a_step(how):
    # Both were looked at only when a step came: a stalled engine held the job's slot
    # and its caller for as long as the step took (for good, if it never came).
    engine = StalledEngine()
    control = Control("j", deadline=time.monotonic() + 0.05 if how == "deadline" else None)
    if how == "cancel":
        asyncio.get_running_loop().call_later(0.05, control.cancel)
    events = await asyncio.wait_for(run(engine, req(max_tokens=3), control), HANG_GUARD_S)
    code = "CANCELLED" if how == "cancel" else "DEADLINE_EXCEEDED"
    assert shape(events) == ["started", f"error {code}"]
    assert engine.closed == 1  # the engine's generator was closed, its cleanup ran


@pytest.mark.parametrize("request_,code", [
    (worker_pb2.ExecuteRequest(job_id="j"), "INVALID_ARGUMENT"),
    (req("a b c d e a b c d e a b c d e a b"), "CONTEXT_LENGTH_EXCEEDED"),
    (req(max_tokens=15), "CONTEXT_LENGTH_EXCEEDED"),
    (worker_pb2.ExecuteRequest(job_id="j", prompt_token_ids=[99]), "INVALID_ARGUMENT"),
], ids=["empty", "prompt-too-long", "prompt-plus-max-tokens", "token-outside-vocab"])
async def test_refused_before_started(request_, code):
    assert shape(await run(ScriptedEngine([1]), request_)) == [f"error {code}"]


async def test_messages_are_used_when_there_is_no_prompt():
    request = worker_pb2.ExecuteRequest(
        job_id="j", messages=[common_pb2.ChatMessage(role="user", content="a b c")],
        sampling=common_pb2.SamplingParams(max_tokens=1))
    events = await run(ScriptedEngine([4]), request)
    assert events[0].started.prompt_tokens == 3
