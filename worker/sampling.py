"""Pure logits -> token functions, seeded.

Order of operations for one step (OpenAI semantics, as vLLM applies them):

    logits ── penalties ──┬── temperature == 0 ──▶ argmax (greedy; lowest id wins ties)
                          └── / temperature ── top-k mask ── top-p mask ── softmax
                                   ── inverse CDF at u ~ U[0,1) from the job's generator

    penalised[j] = logits[j] - frequency_penalty * count[j] - presence_penalty * (count[j] > 0)

`count` is how often token j occurs in the completion so far (not the prompt). The
random draw is a float64 from a generator seeded per choice with the whole 64-bit seed
(Python's `random.Random`: torch's CPU generator keeps only a seed's low 32 bits, so
seeds s and s + 2**32 gave the same text), so the token depends only on the logits and
the seed, not on the device or on other jobs.
Logprobs are reported from the model's own distribution (raw logits, before penalties
and temperature), like vLLM's default.

torch is imported inside the functions that use it, not here: every worker imports
this module for SamplingConfig, and a `sim` worker must not pay ~200 MB of RSS for a
library it never calls.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

GREEDY_BELOW = 1e-5  # temperatures this small are treated as 0


@dataclass(frozen=True)
class SamplingConfig:
    """One choice's sampling parameters, validated and with defaults filled."""

    seed: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 (or less) = off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool = False
    top_logprobs: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


def make_generator(seed: int) -> random.Random:
    """The generator of one choice's draws; seeds are uint64 on the wire, and every
    bit of one counts."""
    return random.Random(seed & 0xFFFF_FFFF_FFFF_FFFF)


def apply_penalties(logits: torch.Tensor, counts: torch.Tensor,
                    presence: float, frequency: float) -> torch.Tensor:
    """Subtract OpenAI presence/frequency penalties; `counts` has one entry per token."""
    if not presence and not frequency:
        return logits
    counts = counts.to(logits.dtype)
    return logits - frequency * counts - presence * (counts > 0).to(logits.dtype)


def mask_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k highest logits (ties at the k-th value are all kept); k <= 0 is off."""
    import torch

    if k <= 0 or k >= logits.numel():
        return logits
    kth = torch.topk(logits, k).values[-1]
    return logits.masked_fill(logits < kth, float("-inf"))


def mask_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches p."""
    import torch

    if p >= 1.0:
        return logits
    order = torch.argsort(logits, descending=True, stable=True)
    probs = torch.softmax(logits[order].double(), dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    drop = mass_before >= p
    drop[0] = False  # the most likely token always survives
    return logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))


def choose(logits: torch.Tensor, cfg: SamplingConfig, counts: torch.Tensor,
           generator: random.Random) -> int:
    """Pick the next token from a 1-D float logits vector (see the module docstring)."""
    import torch

    logits = apply_penalties(logits.float(), counts, cfg.presence_penalty, cfg.frequency_penalty)
    if cfg.greedy:
        return int(torch.argmax(logits))
    logits = mask_top_p(mask_top_k(logits / cfg.temperature, cfg.top_k), cfg.top_p)
    probs = torch.softmax(logits.double(), dim=-1)
    cdf = torch.cumsum(probs, dim=-1)
    u = generator.random()  # in [0, 1), 53 bits
    # right=True skips zero-probability tokens: their cdf equals their predecessor's.
    index = int(torch.searchsorted(cdf, u * cdf[-1], right=True))
    return min(index, logits.numel() - 1)


def token_logprobs(logits: torch.Tensor, token_id: int,
                   top: int) -> tuple[float, list[tuple[int, float]]]:
    """The chosen token's logprob and the `top` most likely alternatives."""
    import torch

    logp = torch.log_softmax(logits.double(), dim=-1)
    alternatives: list[tuple[int, float]] = []
    if top > 0:
        values, ids = torch.topk(logp, min(top, logp.numel()))
        alternatives = [(int(i), float(v)) for i, v in zip(ids, values)]
    return float(logp[token_id]), alternatives
