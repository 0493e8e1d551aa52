"""The `hf` engine: transformers + PyTorch, on the CPU or on one CUDA GPU.

Generation is a manual loop over the KV cache, one forward step per token, run on a
single dedicated thread: tokens stream as they are made, the event loop stays free for
Cancel and health checks, and steps of a cancelled job and of the next job never run
concurrently (they queue on that thread), so each job's arithmetic is the same as if
it ran alone. Logits go to the CPU for sampling (worker.sampling), which makes the
choice of token depend only on logits and seed.

A mask of several GPUs is refused: tensor parallelism is the trtllm engine's job.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common.errors import OrchError
from worker.engines.base import Engine, Step
from worker.proof import model_digest

_DTYPES = ("auto", "float32", "float16", "bfloat16")


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:limit]


class HfEngine(Engine):
    name = "hf"
    OPTIONS = {
        # Weights' dtype; default float32 on the CPU (exact, reproducible), the
        # checkpoint's own dtype on a GPU.
        "dtype": frozenset(_DTYPES),
        "attn_implementation": frozenset({"eager", "sdpa"}),
    }

    def __init__(self, model_path: Path, devices: Sequence[str], threads: int,
                 options: Mapping[str, str]):
        super().__init__(model_path, devices, threads, options)
        if self.devices == ["cpu"]:
            self._cuda = False
        elif "cpu" in self.devices or len(self.devices) != 1:
            raise OrchError("ENGINE_OPTION_REJECTED",
                            f"engine hf runs on the cpu or on exactly one GPU, not on "
                            f"{','.join(self.devices) or 'nothing'}", param="devices")
        else:
            self._cuda = True
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-step")
        self.tokenizer: Any = None
        self.model: Any = None

    def load(self) -> None:
        try:  # heavy imports happen here, so refusing an option stays instant
            import torch
            import transformers

            from worker import sampling
        except ImportError as exc:
            raise OrchError("ENGINE_UNAVAILABLE", f"engine hf needs torch and transformers: "
                                                  f"{_one_line(exc)}") from None
        self._torch, self._sampling = torch, sampling
        transformers.utils.logging.disable_progress_bar()  # stderr is one line until ready
        torch.set_num_threads(self.threads)
        # Same seed, same tokens: refuse nondeterministic kernels where torch has a
        # deterministic one, and only warn where it has none.
        torch.use_deterministic_algorithms(True, warn_only=True)
        if self._cuda and not torch.cuda.is_available():
            raise OrchError("ENGINE_UNAVAILABLE", f"device {self.devices[0]} requested but "
                                                  f"torch sees no CUDA GPU", param="devices")
        self._device = torch.device("cuda:0" if self._cuda else "cpu")
        dtype = self.options.get("dtype", "auto" if self._cuda else "float32")
        kwargs: dict[str, Any] = {"dtype": dtype if dtype == "auto" else getattr(torch, dtype),
                                  "local_files_only": True}
        if "attn_implementation" in self.options:
            kwargs["attn_implementation"] = self.options["attn_implementation"]
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(
                self.model_path, local_files_only=True)
            model = transformers.AutoModelForCausalLM.from_pretrained(self.model_path, **kwargs)
            self.model = model.to(self._device).eval()
        except Exception as exc:  # noqa: BLE001 - every load failure is one stable code
            raise OrchError("ENGINE_ERROR", f"cannot load {self.model_path}: "
                                            f"{_one_line(exc)}") from None
        config = self.model.config
        self.context_length = int(getattr(config, "max_position_embeddings", 0)
                                  or self.tokenizer.model_max_length)
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        self.eos_token_ids = self._eos_ids()
        self.version = f"transformers {transformers.__version__}; torch {torch.__version__}"
        self.device = (f"{torch.cuda.get_device_name(0)} ({self.devices[0]})" if self._cuda
                       else "cpu")
        self.digest = model_digest(self.model_path)

    def _eos_ids(self) -> frozenset[int]:
        # generation_config may list several (end of document, end of chat turn).
        ids: set[int] = set()
        for source in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id,
                       self.model.config.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(int(i) for i in source)
        return frozenset(ids)

    def device_bytes(self) -> dict[str, int]:
        if self._cuda:
            return {self.devices[0]: int(self._torch.cuda.memory_allocated(0))}
        tensors = [*self.model.parameters(), *self.model.buffers()]
        return {"cpu": sum(t.numel() * t.element_size() for t in tensors)}

    def encode(self, text: str) -> list[int]:
        bos = self.tokenizer.bos_token
        # A prompt that already starts with <s> (a rendered template) must not get two.
        add = not (bos and text.startswith(bos))
        return list(self.tokenizer(text, add_special_tokens=add)["input_ids"])

    def encode_chat(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        if not self.tokenizer.chat_template:
            raise OrchError("INVALID_ARGUMENT", "this model has no chat template; send a prompt",
                            param="messages")
        try:
            text = self.tokenizer.apply_chat_template(
                [dict(m) for m in messages], tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # noqa: BLE001 - templates raise whatever they like
            raise OrchError("INVALID_ARGUMENT", f"chat template refused the messages: "
                                                f"{_one_line(exc)}", param="messages") from None
        # Templates render the leading <s> themselves.
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def token_text(self, token_id: int, previous: int | None = None) -> str:
        if previous is not None:
            # In context, so a word keeps its leading space (" and", not "and").
            before = self.tokenizer.decode([previous], skip_special_tokens=False)
            both = self.tokenizer.decode([previous, token_id], skip_special_tokens=False)
            if both.startswith(before):
                return both[len(before):]
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    async def generate(self, prompt_ids: list[int], sampling) -> AsyncIterator[Step]:
        loop = asyncio.get_running_loop()
        seq = _Sequence(self, prompt_ids, sampling)
        try:
            while seq.length < self.context_length:
                step = await loop.run_in_executor(self._executor, seq.advance)
                yield step
                if step.eos:
                    return
        finally:
            seq.release()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class _Sequence:
    """One choice's state between steps: KV cache, pending input, counts, generator."""

    def __init__(self, engine: HfEngine, prompt_ids: list[int], sampling):
        self._sampler = engine._sampling
        self._engine = engine
        self._cfg = sampling
        self._past: Any = None
        self._feed = list(prompt_ids)  # the whole prompt first (prefill), then one token
        self._counts = engine._torch.zeros(engine.vocab_size, dtype=engine._torch.int32)
        self._generator = self._sampler.make_generator(sampling.seed)
        self.length = len(prompt_ids)

    def advance(self) -> Step:
        torch, engine = self._engine._torch, self._engine
        with torch.inference_mode():
            ids = torch.tensor([self._feed], dtype=torch.long, device=engine._device)
            out = engine.model(input_ids=ids, past_key_values=self._past, use_cache=True,
                               logits_to_keep=1)
            self._past = out.past_key_values
            logits = out.logits[0, -1].float().cpu()
        token = self._sampler.choose(logits, self._cfg, self._counts, self._generator)
        self._counts[token] += 1
        self._feed = [token]
        self.length += 1
        if not self._cfg.logprobs:
            return Step(token, eos=token in engine.eos_token_ids)
        logprob, top = self._sampler.token_logprobs(logits, token, self._cfg.top_logprobs)
        return Step(token, eos=token in engine.eos_token_ids, logprob=logprob, top=tuple(top))

    def release(self) -> None:
        self._past = None
