"""The `sim` engine: a simulated model for load and scale tests without GPUs.

Never a default: it runs only when a worker is started with `--engine sim`, and it says
so everywhere it is seen (version "sim 1 (simulated)", device "simulated", digest
"sim:..."). Settings come from the engine options over an optional `sim.json` (a flat
object of the same keys) in the model folder, over the defaults in `SETTINGS`.

Text: the folder's `tokenizer.json` when it has one (real words), else a built-in word
list. A choice is a pure function of its seed: `random.Random(seed)` draws a length in
[1, MAX_NATURAL_TOKENS] and then the ids (special tokens skipped); eos follows.

Timing, per choice, from a second generator seeded by the same seed:

    first token after  ttft_ms ± ttft_spread_ms + prompt_tokens × prefill_us_per_token
    each next after    (itl_ms ± itl_spread_ms) × (1 + load_slowdown × (active − 1))

`active` counts the sequences holding one of `slots` (continuous batching); more
concurrent generate() calls than slots wait for one. Fault injection: `error_rate`
fails a choice at a seeded point (the worker reports ENGINE_ERROR);
`crash_after_tokens` ends the process with status 13 once that many tokens were
emitted in all (through `engine.crash`, which a host running sim workers inside its
own process replaces, so that only the one worker ends); `hang_after_tokens` stops
every stream there and never resumes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path

from common.errors import OrchError
from common.log import emit
from worker.engines.base import Engine, Step

VERSION = "sim 1 (simulated)"
CRASH_STATUS = 13
MAX_NATURAL_TOKENS = 256
_TIMING_SALT = 0x5EED_7141
# Logprobs' alternatives come from their own generator: asking for logprobs must not
# change which tokens a seed produces.
_ALTERNATIVES_SALT = 0xA17E_5EED

# key -> (type, default, upper bound or None); every value must be >= 0.
SETTINGS: dict[str, tuple[type, float, float | None]] = {
    "ttft_ms": (float, 50, None),
    "ttft_spread_ms": (float, 10, None),
    "itl_ms": (float, 10, None),
    "itl_spread_ms": (float, 2, None),
    "prefill_us_per_token": (float, 20, None),
    "slots": (int, 8, None),
    "load_slowdown": (float, 0.05, None),
    "crash_after_tokens": (int, 0, None),
    "hang_after_tokens": (int, 0, None),
    "error_rate": (float, 0.0, 1.0),
    "context_length": (int, 4096, None),
    "memory_bytes": (int, 1 << 30, None),
    "load_ms": (float, 0, None),
}
_AT_LEAST_ONE = ("slots", "context_length")

_WORDS = ("the a one two red blue small large river stone light night morning tree "
          "bird song quiet bright old new house road far near and then again over under "
          "with without runs walks sees makes holds finds keeps turns").split()


def _setting(key: str, raw: object) -> float | int:
    kind, _, upper = SETTINGS[key]
    try:
        value = kind(raw) if kind is float else int(str(raw), 10)
    except (TypeError, ValueError):
        value = None
    low = 1 if key in _AT_LEAST_ONE else 0
    if value is None or not math.isfinite(value) or value < low or (
            upper is not None and value > upper):
        bound = f"in [{low}, {upper:g}]" if upper is not None else f">= {low}"
        raise OrchError("ENGINE_OPTION_REJECTED", f"option {key}={raw!r} must be "
                        f"{'an integer' if kind is int else 'a number'} {bound}", param=key)
    return value


class _Words:
    """The built-in tokenizer: id 0 is eos, then one id per word; text joins with spaces."""

    eos = 0

    def __init__(self):
        self.special = frozenset({self.eos})
        self.size = len(_WORDS) + 1

    def encode(self, text: str) -> list[int]:
        return [(_WORDS.index(w) if w in _WORDS else hash_word(w)) + 1 for w in text.split()]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join("</s>" if i == self.eos else _WORDS[i - 1] for i in ids
                        if not (skip_special_tokens and i in self.special))


def hash_word(word: str) -> int:
    """An unknown word's stable index into the word list."""
    return int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "little") % len(_WORDS)


class _HfTokenizer:
    """A folder's tokenizer.json through the tokenizers library."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.size = self._tok.get_vocab_size()
        self.special = frozenset(i for i, t in self._tok.get_added_tokens_decoder().items()
                                 if t.special)
        config = path / "tokenizer_config.json"
        name = json.loads(config.read_text()).get("eos_token") if config.is_file() else None
        self.eos = self._tok.token_to_id(name or "</s>")
        if self.eos is None:  # no eos token in the vocabulary: use one past its end
            self.eos, self.size = self.size, self.size + 1
            self.special |= {self.eos}

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        ids = [i for i in ids if i < self._tok.get_vocab_size()]
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)


class SimEngine(Engine):
    name = "sim"
    OPTIONS = {key: None for key in SETTINGS}  # any value here; checked by _setting

    def __init__(self, model_path: Path, devices: Sequence[str], threads: int,
                 options: Mapping[str, str]):
        super().__init__(model_path, devices, threads, options)
        file = model_path / "sim.json"
        try:
            defaults = json.loads(file.read_text()) if file.is_file() else {}
        except (OSError, ValueError) as exc:
            raise OrchError("ENGINE_OPTION_REJECTED", f"cannot read {file}: {exc}",
                            param="sim.json") from None
        if not isinstance(defaults, dict) or set(defaults) - set(SETTINGS):
            raise OrchError("ENGINE_OPTION_REJECTED", f"{file} must be an object of the sim "
                            f"options ({', '.join(sorted(SETTINGS))})", param="sim.json")
        merged = {key: spec[1] for key, spec in SETTINGS.items()} | defaults | dict(options)
        self.settings = {key: _setting(key, value) for key, value in merged.items()}
        self._slot_free = asyncio.Semaphore(self.slots)  # binds to a loop on first wait
        self._active = 0
        self._emitted = 0  # tokens emitted by every choice, for crash/hang injection
        self._tokenizer: _Words | _HfTokenizer | None = None
        # Ends the worker with a status; a replacement may return, and then must tear
        # the worker down (its streams break, as when a process dies).
        self.crash: Callable[[int], None] = _exit_process

    @property
    def slots(self) -> int:
        return int(self.settings["slots"])

    def load(self) -> None:
        time.sleep(self.settings["load_ms"] / 1000)
        if (self.model_path / "tokenizer.json").is_file():
            self._tokenizer = _HfTokenizer(self.model_path)
        else:
            self._tokenizer = _Words()
        self.context_length = int(self.settings["context_length"])
        self.vocab_size = self._tokenizer.size
        self.eos_token_ids = frozenset({self._tokenizer.eos})
        self.version, self.device = VERSION, "simulated"
        # Not the weights' hash: a sim pointed at a real folder must not read 100 GB.
        self.digest = "sim:" + hashlib.sha256(str(self.model_path).encode()).hexdigest()
        self._choices = [i for i in range(self.vocab_size) if i not in self._tokenizer.special]

    def device_bytes(self) -> dict[str, int]:
        return {device: int(self.settings["memory_bytes"]) for device in self.devices}

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text)

    def encode_chat(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
        return self.encode(text + "\nassistant:")

    def decode(self, token_ids: list[int]) -> str:
        return self._tokenizer.decode(token_ids)

    def token_text(self, token_id: int, previous: int | None = None) -> str:
        return self._tokenizer.decode([token_id], skip_special_tokens=False)

    async def generate(self, prompt_ids: list[int], sampling) -> AsyncIterator[Step]:
        s = self.settings
        tokens, timing = random.Random(sampling.seed), random.Random(sampling.seed ^ _TIMING_SALT)
        alternatives = random.Random(sampling.seed ^ _ALTERNATIVES_SALT)
        length = tokens.randint(1, MAX_NATURAL_TOKENS)
        fail_at = timing.randrange(length) if timing.random() < s["error_rate"] else None
        async with self._slot_free:
            self._active += 1
            try:
                delay = _spread(timing, s["ttft_ms"], s["ttft_spread_ms"])
                delay += len(prompt_ids) * s["prefill_us_per_token"] / 1000
                made, used = 0, len(prompt_ids)
                while used < self.context_length:
                    await asyncio.sleep(delay / 1000)
                    if made == fail_at:
                        raise RuntimeError(f"simulated engine error (error_rate "
                                           f"{s['error_rate']:g}) after {made} tokens")
                    if made == length:
                        yield Step(self._tokenizer.eos, eos=True)
                        return
                    await self._inject_faults()
                    token = tokens.choice(self._choices)
                    made, used, self._emitted = made + 1, used + 1, self._emitted + 1
                    yield self._step(token, sampling, alternatives)
                    slowdown = 1 + s["load_slowdown"] * (self._active - 1)
                    delay = _spread(timing, s["itl_ms"], s["itl_spread_ms"]) * slowdown
            finally:
                self._active -= 1

    async def _inject_faults(self) -> None:
        crash, hang = self.settings["crash_after_tokens"], self.settings["hang_after_tokens"]
        if crash and self._emitted >= crash:
            emit("worker", "sim.crash", f"crash_after_tokens={crash} reached; exiting "
                 f"{CRASH_STATUS}", level="warning")
            self.crash(CRASH_STATUS)
            await asyncio.Event().wait()  # the worker is being torn down around us
        if hang and self._emitted >= hang:
            await asyncio.Event().wait()  # forever; only task cancellation ends it

    def _step(self, token: int, sampling, rng: random.Random) -> Step:
        if not sampling.logprobs:
            return Step(token)
        logprob = -math.log(len(self._choices))  # a uniform model
        # Equally likely, all of them: the chosen token first, then others at random.
        want = min(sampling.top_logprobs, len(self._choices))
        others = [i for i in rng.sample(self._choices, want) if i != token][:max(0, want - 1)]
        top = ([token] + others)[:want]
        return Step(token, logprob=logprob, top=tuple((i, logprob) for i in top))


def _exit_process(status: int) -> None:
    os._exit(status)


def _spread(rng: random.Random, centre_ms: float, spread_ms: float) -> float:
    return max(0.0, centre_ms + rng.uniform(-spread_ms, spread_ms))
