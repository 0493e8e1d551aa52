"""The trtllm engine against a STAND-IN for tensorrt_llm (tests/worker/trtllm_standin).

TensorRT-LLM needs NVIDIA GPUs, so these tests check what the engine asks of the
documented LLM API (tensor_parallel_size, SamplingParams fields, abort, shutdown) and
how it maps the stream onto Steps; they say nothing about TensorRT-LLM's numerics.
The CUDA check is bypassed by replacing `trtllm.cuda_device_count`, the engine's
test hook; the tokenizer is the embedded tiny model's.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses  # noqa: E402
import sys  # noqa: E402
from contextlib import aclosing  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from common.errors import OrchError  # noqa: E402
from llama_orch.v1 import common_pb2, worker_pb2  # noqa: E402
from worker.engines import create, trtllm  # noqa: E402
from worker.job import Control, execute  # noqa: E402
from worker.sampling import SamplingConfig  # noqa: E402

STANDIN = Path(__file__).resolve().parent / "trtllm_standin"
MODEL = Path(__file__).resolve().parents[2] / "models" / "tiny"
GPUS = ["GPU-aaaa", "GPU-bbbb"]
EOS = 3  # the tiny model's </s>; context 512


@pytest.fixture
def standin(monkeypatch):
    """The stand-in importable as tensorrt_llm, two visible CUDA devices, a fresh script."""
    for name in ("tensorrt_llm", "tensorrt_llm.llmapi"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(STANDIN))
    monkeypatch.setattr(trtllm, "cuda_device_count", lambda: 2)
    import tensorrt_llm
    assert tensorrt_llm.__version__ == "0.0.0-standin"  # never the real one
    monkeypatch.setattr(tensorrt_llm.LLM, "instances", [])
    monkeypatch.setattr(tensorrt_llm.LLM, "script", [5, 6, 7])
    monkeypatch.setattr(tensorrt_llm.LLM, "finish_reason", "length")
    monkeypatch.setattr(tensorrt_llm.LLM, "chunk", 1)
    return tensorrt_llm


def loaded(devices=GPUS, **options) -> trtllm.TrtllmEngine:
    engine = trtllm.TrtllmEngine(MODEL, devices, 1, options)
    engine.load()
    return engine


async def steps(engine, prompt=(1, 2), cfg=SamplingConfig(seed=7), limit=None):
    out = []
    async with aclosing(engine.generate(list(prompt), cfg)) as gen:
        async for step in gen:
            out.append(step)
            if step.eos or (limit is not None and len(out) >= limit):
                break
    return out


def test_without_cuda_it_refuses_before_importing_tensorrt_llm(monkeypatch):
    monkeypatch.delitem(sys.modules, "tensorrt_llm", raising=False)
    monkeypatch.setattr(trtllm, "cuda_device_count", lambda: 0)
    with pytest.raises(OrchError) as err:
        trtllm.TrtllmEngine(MODEL, GPUS, 1, {})
    assert err.value.code == "ENGINE_UNAVAILABLE" and "trtllm needs CUDA" in str(err.value)
    assert "tensorrt_llm" not in sys.modules


@pytest.mark.parametrize("devices, visible", [(["cpu"], 2), (["GPU-a", "GPU-b", "GPU-c"], 2)],
                         ids=["cpu-mask", "mask-larger-than-visible"])
def test_refuses_masks_cuda_cannot_serve(monkeypatch, devices, visible):
    monkeypatch.setattr(trtllm, "cuda_device_count", lambda: visible)
    with pytest.raises(OrchError) as err:
        trtllm.TrtllmEngine(MODEL, devices, 1, {})
    assert err.value.code == "ENGINE_UNAVAILABLE"


@pytest.mark.parametrize("options, param", [
    ({"tp_size": "2"}, "tp_size"),
    ({"free_gpu_memory_fraction": "1.5"}, "free_gpu_memory_fraction"),
    ({"free_gpu_memory_fraction": "lots"}, "free_gpu_memory_fraction"),
    ({"max_batch_size": "0"}, "max_batch_size"),
    ({"max_num_tokens": "8.5"}, "max_num_tokens"),
    ({"enable_block_reuse": "yes"}, "enable_block_reuse"),
], ids=["unknown", "fraction-too-big", "fraction-not-a-number", "batch-zero",
        "tokens-not-int", "reuse-not-bool"])
def test_bad_options_are_rejected_at_construction(monkeypatch, options, param):
    monkeypatch.setattr(trtllm, "cuda_device_count", lambda: 2)
    with pytest.raises(OrchError) as err:
        trtllm.TrtllmEngine(MODEL, GPUS, 1, options)
    assert err.value.code == "ENGINE_OPTION_REJECTED" and err.value.param == param


def test_missing_tensorrt_llm_is_engine_unavailable(monkeypatch):
    monkeypatch.setattr(trtllm, "cuda_device_count", lambda: 2)
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # import fails as if absent
    engine = trtllm.TrtllmEngine(MODEL, GPUS, 1, {})
    with pytest.raises(OrchError) as err:
        engine.load()
    assert err.value.code == "ENGINE_UNAVAILABLE"


def test_registry_creates_it(standin):
    assert isinstance(create("trtllm", MODEL, GPUS, 1, {}), trtllm.TrtllmEngine)


def test_load_passes_mask_size_and_options(standin):
    engine = loaded(free_gpu_memory_fraction="0.5", max_batch_size="8", max_num_tokens="4096",
                    enable_block_reuse="false")
    llm = standin.LLM.instances[-1]
    assert llm.model == str(MODEL)
    assert llm.tensor_parallel_size == len(GPUS)
    assert llm.kwargs["kv_cache_config"] == standin.KvCacheConfig(
        free_gpu_memory_fraction=0.5, enable_block_reuse=False)
    assert (llm.kwargs["max_batch_size"], llm.kwargs["max_num_tokens"]) == (8, 4096)
    assert engine.version == "tensorrt_llm 0.0.0-standin"
    assert (engine.context_length, engine.vocab_size, engine.eos_token_ids) == (512, 2229, {EOS})
    assert engine.digest and all(d in engine.device for d in GPUS)
    engine.close()
    assert llm.shut_down


async def test_sampling_params_are_explicit(standin):
    engine = loaded()
    await steps(engine, prompt=[1, 2, 3, 4], cfg=SamplingConfig(seed=1234, temperature=0.7,
                                                                top_p=0.9, top_k=40))
    prompt, sp = standin.LLM.instances[-1].calls[-1]
    assert prompt == [1, 2, 3, 4]
    assert sp.seed == 1234
    assert sp.max_tokens == 512 - 4  # up to the context's end, never the default 32
    assert sp.end_id == EOS
    assert sp.stop is None  # stop strings are the worker's
    assert (sp.temperature, sp.top_p, sp.top_k) == (0.7, 0.9, 40)


async def test_greedy_is_top_k_one(standin):
    engine = loaded()
    await steps(engine, cfg=SamplingConfig(seed=1, temperature=0.0))
    sp = standin.LLM.instances[-1].calls[-1][1]
    assert sp.top_k == 1 and sp.temperature is None


async def test_older_releases_get_the_seed_as_random_seed(standin, monkeypatch):
    fields = [(f.name if f.name != "seed" else "random_seed", f.type, f)
              for f in dataclasses.fields(standin.SamplingParams)]
    old = dataclasses.make_dataclass("SamplingParams", fields, kw_only=True)
    monkeypatch.setattr(standin, "SamplingParams", old)
    engine = loaded()
    await steps(engine, cfg=SamplingConfig(seed=99))
    sp = standin.LLM.instances[-1].calls[-1][1]
    assert isinstance(sp, old) and sp.random_seed == 99


@pytest.mark.parametrize("script, finish, expected, aborted", [
    ([5, 6, 7], "length", [(5, False), (6, False), (7, False)], False),
    ([5, 6], "stop", [(5, False), (6, False), (EOS, True)], False),  # end id not streamed
    ([5, EOS], "stop", [(5, False), (EOS, True)], False),  # end id streamed
], ids=["length", "stop-end-id-hidden", "stop-end-id-streamed"])
async def test_finish_reasons_map_onto_steps(standin, script, finish, expected, aborted):
    standin.LLM.script, standin.LLM.finish_reason = script, finish
    engine = loaded()
    got = await steps(engine)
    assert [(s.token_id, s.eos) for s in got] == expected
    assert standin.LLM.instances[-1].streams[-1].aborted is aborted


async def test_several_ids_in_one_output_become_several_steps(standin):
    standin.LLM.chunk = 2
    engine = loaded()
    assert [s.token_id for s in await steps(engine)] == [5, 6, 7]


async def test_a_cancel_nobody_asked_for_is_an_error(standin):
    standin.LLM.finish_reason = "cancelled"
    engine = loaded()
    stream_gen = engine.generate([1], SamplingConfig())
    with pytest.raises(trtllm.EngineAborted):
        async with aclosing(stream_gen) as gen:
            async for _ in gen:
                pass


async def test_consumer_stopping_early_aborts_the_request(standin):
    standin.LLM.finish_reason = None  # would stream forever otherwise
    engine = loaded()
    got = await steps(engine, limit=2)
    assert len(got) == 2
    assert standin.LLM.instances[-1].streams[-1].aborted


async def test_a_job_with_max_tokens_and_stop_strings_aborts_and_records_proof(standin):
    # Through the worker's job loop: it owns max_tokens, and the engine's stream ends
    # by abort (the worker closes generate), with a proof record naming the engine.
    standin.LLM.script, standin.LLM.finish_reason = [10, 11, 12, 13, 14], None
    engine = loaded()
    request = worker_pb2.ExecuteRequest(job_id="j", prompt_token_ids=[1, 2],
                                        sampling=common_pb2.SamplingParams(max_tokens=3, seed=5))
    events = [e async for e in execute(engine, request, Control("j"), "file:/m")]
    end = events[-1].end
    assert end.finish_reason == "length" and end.usage.completion_tokens == 3
    assert (end.proof.engine, end.proof.engine_version, end.proof.seed) == (
        "trtllm", "tensorrt_llm 0.0.0-standin", 5)
    assert standin.LLM.instances[-1].calls[-1][1].max_tokens == 510
    assert standin.LLM.instances[-1].streams[-1].aborted
