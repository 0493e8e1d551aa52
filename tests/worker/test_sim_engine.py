"""The sim engine in-process: settings, tokens, error injection, concurrency, labels.

Latencies are 0–1 ms so nothing here waits; nothing asserts on timing. Crash and hang
injection end or stall a process, so they are tested in test_sim_process.py.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import aclosing
from pathlib import Path

import pytest

from common.errors import OrchError, code_name
from llama_orch.v1 import common_pb2, worker_pb2
from worker.engines import ENGINES, create
from worker.engines.sim import SETTINGS, SimEngine
from worker.job import Control, execute
from worker.sampling import SamplingConfig

TINY = Path(__file__).resolve().parents[2] / "models" / "tiny"
FAST = {"ttft_ms": "1", "ttft_spread_ms": "0.5", "itl_ms": "0", "itl_spread_ms": "0",
        "prefill_us_per_token": "1"}


def engine(folder: Path = TINY, **options: str) -> SimEngine:
    sim = create("sim", folder, ["cpu"], 1, {**FAST, **options})
    sim.load()
    return sim


async def run(sim: SimEngine, seed: int, prompt: list[int] | None = None) -> list[int]:
    steps = [s async for s in sim.generate(prompt or sim.encode("Once upon a time"),
                                           SamplingConfig(seed=seed))]
    assert steps[-1].eos and not any(s.eos for s in steps[:-1])
    return [s.token_id for s in steps[:-1]]


async def events(sim: SimEngine, seed: int = 1, max_tokens: int = 0):
    req = worker_pb2.ExecuteRequest(job_id="j", prompt="Once upon a time", sampling=common_pb2
                                    .SamplingParams(seed=seed, max_tokens=max_tokens))
    async with aclosing(execute(sim, req, Control("j"), "file:/m")) as stream:
        return [e async for e in stream]


def test_sim_is_registered_but_never_the_default():
    from worker.main import parse_args

    assert "sim" in ENGINES
    assert parse_args(["--worker-id", "w", "--model-ref", "file:/m"]).engine != "sim"


def test_labels_itself_simulated():
    sim = engine(memory_bytes="1234")
    assert sim.name == "sim" and "simulated" in sim.version and sim.device == "simulated"
    assert sim.digest.startswith("sim:")
    assert sim.device_bytes() == {"cpu": 1234}
    assert sim.context_length == 4096 and sim.slots == 8


@pytest.mark.parametrize("options,param", [
    ({"bogus": "1"}, "bogus"),
    ({"itl_ms": "-1"}, "itl_ms"),
    ({"ttft_ms": "fast"}, "ttft_ms"),
    ({"ttft_ms": "nan"}, "ttft_ms"),
    ({"slots": "0"}, "slots"),
    ({"slots": "2.5"}, "slots"),
    ({"crash_after_tokens": "-3"}, "crash_after_tokens"),
    ({"error_rate": "1.5"}, "error_rate"),
    ({"error_rate": "-0.1"}, "error_rate"),
    ({"context_length": "0"}, "context_length"),
], ids=["unknown", "negative", "non-numeric", "nan", "zero-slots", "fractional-slots",
        "negative-count", "error-rate-above-1", "error-rate-below-0", "zero-context"])
def test_bad_options_are_rejected_at_construction(options, param):
    with pytest.raises(OrchError) as caught:
        create("sim", TINY, ["cpu"], 1, options)
    assert (caught.value.code, caught.value.param) == ("ENGINE_OPTION_REJECTED", param)


def test_every_setting_accepts_its_default():
    sim = create("sim", TINY, ["cpu"], 1, {k: str(spec[1]) for k, spec in SETTINGS.items()})
    assert sim.settings["slots"] == 8 and sim.settings["error_rate"] == 0


def test_sim_json_gives_defaults_that_options_override(tmp_path):
    (tmp_path / "sim.json").write_text(json.dumps({"slots": 3, "context_length": 64}))
    sim = engine(tmp_path, slots="5")
    assert (sim.slots, sim.context_length) == (5, 64)


@pytest.mark.parametrize("content", ['{"slots": -1}', '{"nope": 1}', "[1]", "{"],
                         ids=["bad-value", "unknown-key", "not-an-object", "not-json"])
def test_bad_sim_json_is_rejected(tmp_path, content):
    (tmp_path / "sim.json").write_text(content)
    with pytest.raises(OrchError) as caught:
        create("sim", tmp_path, ["cpu"], 1, {})
    assert caught.value.code == "ENGINE_OPTION_REJECTED"


async def test_same_seed_same_tokens_and_other_seeds_differ():
    a, b = engine(), engine(itl_ms="1", load_slowdown="0.5")  # timing does not change tokens
    first = await run(a, seed=7)
    assert first == await run(b, seed=7)
    assert first != await run(a, seed=8)


async def test_tokens_are_real_words_and_never_special():
    sim = engine()
    ids = [i for seed in range(5) for i in await run(sim, seed)]
    special = {0, 1, 2, 3, 4, 5, 6, 7}  # the tiny model's added tokens
    assert ids and not special & set(ids)
    assert sim.decode(ids[:5]).count(" ") == 4  # five words


async def test_builtin_word_list_without_a_tokenizer(tmp_path):
    sim = engine(tmp_path)
    ids = await run(sim, seed=3, prompt=sim.encode("a river"))
    assert ids and all(w.isalpha() for w in sim.decode(ids).split())
    assert sim.eos_token_ids == {0} and 0 not in ids


async def test_context_length_ends_generation_without_eos(tmp_path):
    sim = engine(tmp_path, context_length="6")
    steps = [s async for s in sim.generate([1, 2, 3, 4], SamplingConfig(seed=1))]
    assert len(steps) == 2 and not any(s.eos for s in steps)


async def test_logprobs_have_top_alternatives_led_by_the_chosen_token():
    sim = engine()
    cfg = SamplingConfig(seed=2, logprobs=True, top_logprobs=3)
    steps = [s async for s in sim.generate([2, 5], cfg) if not s.eos]
    assert all(s.logprob < 0 and len(s.top) == 3 for s in steps)
    assert all(s.top[0][0] == s.token_id and len({i for i, _ in s.top}) == 3 for s in steps)


async def test_asking_for_logprobs_does_not_change_the_tokens():
    # The alternatives were drawn from the generator that picks the tokens.
    sim = engine()
    plain = [s.token_id async for s in sim.generate([2, 5], SamplingConfig(seed=4))]
    with_logprobs = [s.token_id async for s in sim.generate(
        [2, 5], SamplingConfig(seed=4, logprobs=True, top_logprobs=5))]
    assert plain == with_logprobs


async def test_error_rate_one_ends_the_job_with_engine_error():
    out = await events(engine(error_rate="1"))
    assert out[-1].HasField("error") and code_name(out[-1].error.code) == "ENGINE_ERROR"
    assert "simulated" in out[-1].error.message


async def test_error_rate_zero_ends_the_job_normally():
    out = await events(engine(error_rate="0"), max_tokens=20)
    assert out[-1].HasField("end") and out[-1].end.proof.engine == "sim"
    assert "simulated" in out[-1].end.proof.engine_version


async def test_concurrent_generations_up_to_slots_interleave_and_all_finish():
    sim = engine(slots="4", itl_ms="1")
    order: list[int] = []

    async def one(seed: int) -> int:
        n = 0
        async for step in sim.generate([2, 5], SamplingConfig(seed=seed)):
            order.append(seed)
            n += 1
        return n

    counts = await asyncio.gather(*(one(seed) for seed in range(4)))
    assert all(counts)
    assert order != sorted(order)  # not one after another
    assert sim._active == 0


async def test_calls_beyond_slots_wait_for_a_free_slot():
    sim = engine(slots="1", itl_ms="1")
    first = aiter(sim.generate([2, 5], SamplingConfig(seed=1)))
    await anext(first)  # holds the one slot
    later = aiter(sim.generate([2, 5], SamplingConfig(seed=2)))
    second = asyncio.ensure_future(anext(later))
    await asyncio.sleep(0.05)
    assert not second.done() and sim._active == 1
    await first.aclose()  # closing frees the slot
    await asyncio.wait_for(second, 5)
    assert sim._active == 1
    await later.aclose()
    assert sim._active == 0
