"""The `trtllm` engine: TensorRT-LLM's `LLM` API on one or more NVIDIA GPUs.

The whole device mask is one model: `tensor_parallel_size` = number of GPUs in the
mask (the supervisor exports the mask as CUDA_VISIBLE_DEVICES). Each choice is one
`llm.generate_async(prompt_ids, params, streaming=True)` request; TensorRT-LLM batches
concurrent requests in flight. What the worker owns (stop strings, max tokens, text)
stays in the worker: a request asks for tokens up to the context's end, and the worker
stops it early by closing `generate`, which aborts the request (`out.abort()`).

Mapping of the documented stream (REFERENCE.md) onto `Step`s:

    o.outputs[0].token_ids_diff ──▶ one Step per id (eos=True for an end-of-sequence id)
    finish_reason 'stop' without an eos id in the stream ──▶ a final Step(end_id, eos=True)
    finish_reason 'length' ──▶ return (the context is full)
    finish_reason 'cancelled' ──▶ EngineAborted (nobody here asked for it)

Determinism: TensorRT-LLM is not batch-invariant, so a seed repeats tokens only for the
same configuration and batch makeup (docs/determinism.md). Logprobs and the OpenAI
presence/frequency penalties are passed through to TensorRT-LLM's own sampler.
"""

from __future__ import annotations

import ctypes
import dataclasses
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from common.errors import OrchError
from worker.engines.base import Engine, Step
from worker.engines.hf import HfEngine
from worker.proof import model_digest

_BOOL = frozenset({"true", "false"})


class EngineAborted(RuntimeError):
    """TensorRT-LLM cancelled a request the worker did not cancel."""


def cuda_device_count() -> int:
    """CUDA devices this process can see (0 without a driver), read via the driver API.

    Cheap and import-free, so the constructor can refuse a machine without CUDA before
    tensorrt_llm (which needs CUDA to import) is touched. Tests replace this function.
    """
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        count = ctypes.c_int(0)
        if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    except OSError:
        return 0


def _positive(kind: type, low: float, high: float | None = None):
    def check(value: str) -> bool:
        try:
            number = kind(value)
        except ValueError:
            return False
        return number > low and (high is None or number <= high)
    return check


# Values of open-ended options are checked here, at construction, not by TensorRT-LLM.
_CHECKS = {
    "free_gpu_memory_fraction": (_positive(float, 0.0, 1.0), "a number in (0, 1]"),
    "max_batch_size": (_positive(int, 0), "a positive integer"),
    "max_num_tokens": (_positive(int, 0), "a positive integer"),
    "max_seq_len": (_positive(int, 0), "a positive integer"),
}


class TrtllmEngine(Engine):
    name = "trtllm"
    OPTIONS = {
        "free_gpu_memory_fraction": None,  # of free GPU memory given to the KV cache
        "max_batch_size": None,
        "max_num_tokens": None,
        "max_seq_len": None,
        # KV block reuse across requests; "false" removes one source of variation.
        "enable_block_reuse": _BOOL,
        "dtype": frozenset({"auto", "float16", "bfloat16", "float32"}),
    }

    # The tokenizer side is the checkpoint's HF tokenizer, exactly as in the hf engine.
    encode = HfEngine.encode
    encode_chat = HfEngine.encode_chat
    decode = HfEngine.decode
    token_text = HfEngine.token_text

    def __init__(self, model_path: Path, devices: Sequence[str], threads: int,
                 options: Mapping[str, str]):
        super().__init__(model_path, devices, threads, options)
        for key, (ok, what) in _CHECKS.items():
            if key in self.options and not ok(self.options[key]):
                raise OrchError("ENGINE_OPTION_REJECTED",
                                f"option {key}={self.options[key]!r} must be {what}", param=key)
        if not self.devices or "cpu" in self.devices:
            raise OrchError("ENGINE_UNAVAILABLE", "trtllm needs CUDA: its device mask must be "
                            f"GPUs, not {','.join(self.devices) or 'nothing'}", param="devices")
        visible = cuda_device_count()
        if visible == 0:
            raise OrchError("ENGINE_UNAVAILABLE", "trtllm needs CUDA: no CUDA device is visible",
                            param="devices")
        if visible < len(self.devices):
            raise OrchError("ENGINE_UNAVAILABLE", f"trtllm was given {len(self.devices)} GPUs "
                            f"but CUDA sees {visible}", param="devices")
        self.tokenizer: Any = None
        self.llm: Any = None
        self._end_id: int | None = None

    def load(self) -> None:
        try:  # tensorrt_llm is imported here only: refusing an option stays instant
            import tensorrt_llm
            import transformers
            from tensorrt_llm import LLM, SamplingParams
            from tensorrt_llm.llmapi import KvCacheConfig
        except ImportError as exc:
            raise OrchError("ENGINE_UNAVAILABLE", f"engine trtllm needs tensorrt_llm: "
                                                  f"{_one_line(exc)}") from None
        self._sampling_params = SamplingParams
        self._seed_field = _seed_field(SamplingParams)
        kv: dict[str, Any] = {"free_gpu_memory_fraction":
                              float(self.options.get("free_gpu_memory_fraction", "0.9"))}
        if "enable_block_reuse" in self.options:
            kv["enable_block_reuse"] = self.options["enable_block_reuse"] == "true"
        kwargs: dict[str, Any] = {"tensor_parallel_size": len(self.devices),
                                  "kv_cache_config": KvCacheConfig(**kv),
                                  "dtype": self.options.get("dtype", "auto")}
        for key in ("max_batch_size", "max_num_tokens", "max_seq_len"):
            if key in self.options:
                kwargs[key] = int(self.options[key])
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(
                self.model_path, local_files_only=True)
            config = transformers.AutoConfig.from_pretrained(self.model_path,
                                                             local_files_only=True)
            self.llm = LLM(model=str(self.model_path), **kwargs)
        except Exception as exc:  # noqa: BLE001 - every load failure is one stable code
            raise OrchError("ENGINE_ERROR", f"cannot load {self.model_path}: "
                                            f"{_one_line(exc)}") from None
        self.context_length = int(getattr(config, "max_position_embeddings", 0)
                                  or self.tokenizer.model_max_length)
        if "max_seq_len" in self.options:
            self.context_length = min(self.context_length, int(self.options["max_seq_len"]))
        self.vocab_size = int(getattr(config, "vocab_size", 0) or len(self.tokenizer))
        self.eos_token_ids = _eos_ids(config, self.tokenizer)
        self._end_id = (self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None
                        else min(self.eos_token_ids, default=None))
        self.version = f"tensorrt_llm {tensorrt_llm.__version__}"
        self.device = self._device_names()
        self.digest = model_digest(self.model_path)

    def _device_names(self) -> str:
        try:
            import torch  # tensorrt_llm depends on it
            names = [torch.cuda.get_device_name(i) for i in range(len(self.devices))]
        except Exception:  # noqa: BLE001 - the name is for the record only
            names = ["GPU"] * len(self.devices)
        return ", ".join(f"{n} ({d})" for n, d in zip(names, self.devices))

    def device_bytes(self) -> dict[str, int]:
        # TensorRT-LLM allocates outside torch's caching allocator (KV cache, engine,
        # tensor-parallel ranks in other processes), so count used memory per device;
        # the mask is this worker's alone.
        try:
            import torch
            used = {}
            for i, device in enumerate(self.devices):
                free, total = torch.cuda.mem_get_info(i)
                used[device] = int(total - free)
            return used
        except Exception:  # noqa: BLE001 - no numbers is better than a failed heartbeat
            return {}

    def sampling_params(self, prompt_len: int, sampling) -> Any:
        """The SamplingParams for one choice; every limit explicit (max_tokens defaults to 32)."""
        extra = sorted(self.eos_token_ids - {self._end_id})
        kwargs: dict[str, Any] = {
            "max_tokens": max(1, self.context_length - prompt_len),
            "end_id": self._end_id,
            "stop_token_ids": extra or None,
            # Stop strings are the worker's (worker/detok.py holds back partial matches).
            "stop": None,
            self._seed_field: sampling.seed,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k if sampling.top_k > 0 else None,
            "presence_penalty": sampling.presence_penalty or None,
            "frequency_penalty": sampling.frequency_penalty or None,
            "logprobs": max(1, sampling.top_logprobs) if sampling.logprobs else None,
        }
        if sampling.greedy:  # argmax, as worker.sampling does below GREEDY_BELOW
            kwargs.update(temperature=None, top_p=None, top_k=1)
        known = {f.name for f in dataclasses.fields(self._sampling_params)}
        return self._sampling_params(**{k: v for k, v in kwargs.items() if k in known})

    async def generate(self, prompt_ids: list[int], sampling) -> AsyncIterator[Step]:
        params = self.sampling_params(len(prompt_ids), sampling)
        out = self.llm.generate_async(list(prompt_ids), params, streaming=True)
        finished = False
        try:
            async for o in out:
                c = o.outputs[0]
                logprobs = list(getattr(c, "logprobs_diff", None) or [])
                for i, token in enumerate(c.token_ids_diff):
                    step = _step(int(token), logprobs[i] if i < len(logprobs) else None,
                                 self.eos_token_ids, sampling.top_logprobs)
                    finished = step.eos  # before the yield: the worker closes us at eos
                    yield step
                    if step.eos:
                        return
                if c.finish_reason == "cancelled":
                    finished = True
                    raise EngineAborted("tensorrt_llm cancelled the request")
                if c.finish_reason == "stop":  # end id reached but not streamed
                    finished = True
                    yield Step(self._end_id if self._end_id is not None else -1, eos=True)
                    return
                if c.finish_reason is not None:  # 'length': the context is full
                    finished = True
                    return
        finally:
            if not finished:  # the worker stopped early, or an error: free the sequence
                out.abort()

    def close(self) -> None:
        if self.llm is not None:
            self.llm.shutdown()
            self.llm = None


def _seed_field(sampling_params_cls: type) -> str:
    names = {f.name for f in dataclasses.fields(sampling_params_cls)}
    for name in ("seed", "random_seed"):  # newer releases, older releases
        if name in names:
            return name
    raise OrchError("ENGINE_UNAVAILABLE", "this tensorrt_llm's SamplingParams has no seed field")


def _step(token: int, logprob: Any, eos_ids: frozenset[int], top_n: int) -> Step:
    # A logprob entry is {token id: Logprob(logprob, rank)} (or a bare float); the map
    # holds the top alternatives plus the sampled token.
    if isinstance(logprob, Mapping):
        ranked = sorted(logprob.items(), key=lambda kv: getattr(kv[1], "rank", 0) or 0)
        value = logprob.get(token)
        return Step(token, eos=token in eos_ids,
                    logprob=float(getattr(value, "logprob", value)) if value is not None else None,
                    top=tuple((int(t), float(getattr(lp, "logprob", lp)))
                              for t, lp in ranked[:top_n]))
    return Step(token, eos=token in eos_ids,
                logprob=float(logprob) if logprob is not None else None)


def _eos_ids(config: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(i) for i in source)
    return frozenset(ids)


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:limit]
