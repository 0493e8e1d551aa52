"""STAND-IN for `tensorrt_llm` — NOT TensorRT-LLM. Used only by the trtllm engine tests.

Mimics the documented shape of TensorRT-LLM's LLM API (REFERENCE.md; the 1.x
`tensorrt_llm.llmapi` reference): `LLM(model, tensor_parallel_size, kv_cache_config,
...)`, a `SamplingParams` dataclass with the real field names (`max_tokens` defaults
to 32), `llm.generate_async(prompt_token_ids, params, streaming=True)` returning an
async-iterable `RequestOutput` with `abort()`, whose items carry
`outputs[0].token_ids_diff / text_diff / finish_reason`.

It generates nothing real: it streams the script in `LLM.script` (token ids, then
an optional finish reason), recording every call in `LLM.instances[-1].calls` so
tests can check what the engine asked for.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from tensorrt_llm.llmapi import KvCacheConfig

__version__ = "0.0.0-standin"
__all__ = ["LLM", "KvCacheConfig", "SamplingParams", "__version__"]


@dataclass(kw_only=True)
class SamplingParams:
    """The fields of the real SamplingParams the engine may set (real names, defaults)."""

    end_id: int | None = None
    pad_id: int | None = None
    max_tokens: int = 32
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    n: int = 1
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    temperature: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: int | None = None
    detokenize: bool = True


@dataclass
class CompletionOutput:
    index: int = 0
    token_ids: list[int] = field(default_factory=list)
    token_ids_diff: list[int] = field(default_factory=list)
    text_diff: str = ""
    finish_reason: str | None = None
    logprobs_diff: list[Any] = field(default_factory=list)


@dataclass
class RequestOutput:
    outputs: list[CompletionOutput]
    finished: bool = False


class _Stream:
    """What generate_async(..., streaming=True) returns: async-iterable, abortable."""

    def __init__(self, script: list, finish: str | None, chunk: int):
        self._script, self._finish, self._chunk = script, finish, chunk
        self.aborted = False
        self._sent: list[int] = []

    def abort(self) -> None:
        self.aborted = True

    def __aiter__(self):
        return self._run()

    async def _run(self):
        ids = list(self._script)
        while ids or not self._sent:
            await asyncio.sleep(0)
            if self.aborted:
                yield RequestOutput([CompletionOutput(token_ids=list(self._sent),
                                                      finish_reason="cancelled")], True)
                return
            diff, ids = ids[:self._chunk], ids[self._chunk:]
            self._sent += diff
            last = not ids
            yield RequestOutput([CompletionOutput(
                token_ids=list(self._sent), token_ids_diff=diff,
                text_diff="".join(f"<{t}>" for t in diff),
                finish_reason=self._finish if last else None)], last and bool(self._finish))
            if last:
                return


class LLM:
    """Records its construction and requests; streams `LLM.script` for every request."""

    instances: list[LLM] = []
    script: list[int] = [5, 6, 7]  # token ids each request streams
    finish_reason: str | None = "length"  # put on the last output (None = never finish)
    chunk: int = 1  # token ids per streamed output

    def __init__(self, model: str, tensor_parallel_size: int = 1, **kwargs: Any):
        self.model, self.tensor_parallel_size, self.kwargs = model, tensor_parallel_size, kwargs
        self.calls: list[tuple[list[int], SamplingParams]] = []
        self.streams: list[_Stream] = []
        self.shut_down = False
        LLM.instances.append(self)

    def generate_async(self, inputs: list[int], sampling_params: SamplingParams,
                       streaming: bool = False) -> _Stream:
        assert streaming, "the stand-in only streams"
        self.calls.append((list(inputs), sampling_params))
        stream = _Stream(LLM.script, LLM.finish_reason, LLM.chunk)
        self.streams.append(stream)
        return stream

    def shutdown(self) -> None:
        self.shut_down = True
