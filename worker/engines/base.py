"""The engine interface: the one seam between the worker and an inference library.

An engine owns the model, the tokenizer and the device; the worker owns everything
about a job (validation, stop strings, detokenization, events, cancellation). So a new
engine (`trtllm`, `sim`) implements only this:

    engine = EngineClass(model_path, devices, threads, options)  # cheap checks only
    engine.load()                    # blocking, may take minutes; raises OrchError
    engine.context_length / version / digest / device / eos_token_ids / vocab_size
    engine.slots                     # concurrent generate() calls it serves (default 1)
    engine.device_bytes()            # {device id: bytes in use}
    engine.encode(text) / encode_chat(messages) / decode(ids) / token_text(id, previous)
    async for step in engine.generate(prompt_ids, sampling): ...

Contracts:
- The constructor must not import heavy libraries or touch devices: a bad option or
  device list is refused at once (ENGINE_OPTION_REJECTED, ENGINE_UNAVAILABLE).
- `generate` yields one `Step` per sampled token, in order, and returns after a step
  with `eos=True` or when the context is full. The consumer stops it early (max tokens,
  stop string, cancel) by closing the iterator (`contextlib.aclosing`); the engine must
  free the sequence's state then. Steps must not block the event loop.
- Given the same prompt ids and SamplingConfig (seed included), an engine yields the
  same steps on the same software and hardware.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from common.errors import OrchError

if TYPE_CHECKING:
    from worker.sampling import SamplingConfig


@dataclass(frozen=True)
class Step:
    """One sampled token. An `eos` token ends the choice and is not part of the output."""

    token_id: int
    eos: bool = False
    logprob: float | None = None
    # (token id, logprob) of the most likely alternatives, when logprobs were asked for.
    top: tuple[tuple[int, float], ...] = field(default=())


class Engine(abc.ABC):
    """Base class: option checking and the attributes every engine fills in `load`."""

    name: ClassVar[str]
    # Accepted --option keys, each with its allowed values (None = any value).
    OPTIONS: ClassVar[Mapping[str, frozenset[str] | None]] = {}

    context_length: int = 0
    version: str = ""
    digest: str = ""
    device: str = ""  # for proof records, e.g. "cpu" or "NVIDIA H200 (GPU-...)"
    eos_token_ids: frozenset[int] = frozenset()
    vocab_size: int = 0

    def __init__(self, model_path: Path, devices: Sequence[str], threads: int,
                 options: Mapping[str, str]):
        for key, value in options.items():
            if key not in self.OPTIONS:
                known = ", ".join(sorted(self.OPTIONS)) or "none"
                raise OrchError("ENGINE_OPTION_REJECTED",
                                f"engine {self.name} has no option {key!r} (known: {known})",
                                param=key)
            allowed = self.OPTIONS[key]
            if allowed is not None and value not in allowed:
                raise OrchError("ENGINE_OPTION_REJECTED", f"option {key}={value!r} is not one "
                                f"of {', '.join(sorted(allowed))}", param=key)
        self.model_path = model_path
        self.devices = list(devices)
        self.threads = threads
        self.options = dict(options)

    @property
    def slots(self) -> int:
        """Jobs the worker runs at once; each runs its choices through `generate` one
        after another. 1 unless the engine batches sequences."""
        return 1

    @abc.abstractmethod
    def load(self) -> None:
        """Load model and tokenizer onto the devices; raise OrchError on failure."""

    @abc.abstractmethod
    def device_bytes(self) -> dict[str, int]:
        """Bytes this process uses on each device of its mask, by device id."""

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Tokenize a plain prompt (with the model's usual leading special tokens)."""

    @abc.abstractmethod
    def encode_chat(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """Apply the model's chat template with a generation prompt and tokenize."""

    @abc.abstractmethod
    def decode(self, token_ids: list[int]) -> str:
        """Text of the ids, special tokens skipped."""

    @abc.abstractmethod
    def token_text(self, token_id: int, previous: int | None = None) -> str:
        """A single token's text as it reads after token `previous`, for logprobs."""

    @abc.abstractmethod
    def generate(self, prompt_ids: list[int], sampling: SamplingConfig) -> AsyncIterator[Step]:
        """Yield steps until eos or the context is full (see the module contract)."""

    def close(self) -> None:
        """Release threads and devices at shutdown."""
