"""Table tests of the pure logits -> token functions (worker.sampling)."""

import math

import pytest
import torch

from worker.sampling import (SamplingConfig, apply_penalties, choose, make_generator,
                             mask_top_k, mask_top_p, token_logprobs)

NEG = float("-inf")


def kept(masked: torch.Tensor) -> list[int]:
    return [i for i, v in enumerate(masked.tolist()) if v != NEG]


@pytest.mark.parametrize("logits,k,expected", [
    ([1.0, 3.0, 2.0, 0.0], 2, [1, 2]),
    ([1.0, 3.0, 2.0, 0.0], 1, [1]),
    ([1.0, 3.0, 2.0, 0.0], 0, [0, 1, 2, 3]),
    ([1.0, 3.0, 2.0, 0.0], -1, [0, 1, 2, 3]),
    ([1.0, 3.0, 2.0, 0.0], 9, [0, 1, 2, 3]),
    ([2.0, 2.0, 1.0], 1, [0, 1]),
], ids=["top2", "top1", "off-zero", "off-negative", "k-over-vocab", "ties-kept"])
def test_mask_top_k(logits, k, expected):
    assert kept(mask_top_k(torch.tensor(logits), k)) == expected


# Probabilities 0.5, 0.3, 0.2 (logits are their logs).
P = [math.log(0.5), math.log(0.3), math.log(0.2)]


@pytest.mark.parametrize("logits,p,expected", [
    (P, 0.5, [0]),
    (P, 0.6, [0, 1]),
    (P, 0.8, [0, 1]),
    (P, 0.81, [0, 1, 2]),
    (P, 1.0, [0, 1, 2]),
    (P, 0.01, [0]),
    ([P[2], P[0], P[1]], 0.6, [1, 2]),
], ids=["exact-first", "needs-two", "exact-two", "needs-three", "off", "tiny-keeps-best",
        "unsorted-input"])
def test_mask_top_p(logits, p, expected):
    assert kept(mask_top_p(torch.tensor(logits), p)) == expected


@pytest.mark.parametrize("counts,presence,frequency,expected", [
    ([0, 1, 3], 0.0, 0.0, [1.0, 1.0, 1.0]),
    ([0, 1, 3], 0.5, 0.0, [1.0, 0.5, 0.5]),
    ([0, 1, 3], 0.0, 0.1, [1.0, 0.9, 0.7]),
    ([0, 1, 3], 0.5, 0.1, [1.0, 0.4, 0.2]),
    ([0, 2, 0], -1.0, 0.0, [1.0, 2.0, 1.0]),
], ids=["none", "presence", "frequency", "both", "negative-presence-rewards"])
def test_apply_penalties(counts, presence, frequency, expected):
    out = apply_penalties(torch.ones(3), torch.tensor(counts), presence, frequency)
    assert out.tolist() == pytest.approx(expected)


ZERO = torch.zeros(4, dtype=torch.int32)


@pytest.mark.parametrize("logits,cfg,counts,expected", [
    ([0.1, 2.0, 0.5, 1.9], SamplingConfig(temperature=0.0), ZERO, 1),
    ([3.0, 1.0, 3.0, 0.0], SamplingConfig(temperature=0.0), ZERO, 0),
    ([0.1, 2.0, 0.5, 1.9], SamplingConfig(temperature=0.0, frequency_penalty=1.0),
     torch.tensor([0, 1, 0, 0]), 3),
    ([0.1, 2.0, 0.5, 1.9], SamplingConfig(temperature=5.0, top_k=1, seed=7), ZERO, 1),
    ([0.1, 2.0, 0.5, 5.0], SamplingConfig(temperature=1.0, top_p=0.01, seed=3), ZERO, 3),
], ids=["greedy-argmax", "greedy-tie-lowest-id", "penalty-changes-greedy", "top-k-1-is-greedy",
        "top-p-tiny-is-greedy"])
def test_choose(logits, cfg, counts, expected):
    assert choose(torch.tensor(logits), cfg, counts, make_generator(cfg.seed)) == expected


def draws(seed: int, n: int = 32, **cfg) -> list[int]:
    generator = make_generator(seed)
    logits = torch.linspace(0.0, 1.0, 50)
    config = SamplingConfig(seed=seed, **cfg)
    return [choose(logits, config, torch.zeros(50), generator) for _ in range(n)]


@pytest.mark.parametrize("cfg", [
    {}, {"temperature": 0.7}, {"top_k": 10}, {"top_p": 0.9}, {"presence_penalty": 0.5},
], ids=["plain", "temperature", "top-k", "top-p", "penalty"])
def test_same_seed_same_tokens_other_seed_other_tokens(cfg):
    assert draws(11, **cfg) == draws(11, **cfg)
    assert draws(11, **cfg) != draws(12, **cfg)


def test_masked_tokens_are_never_drawn():
    assert set(draws(5, n=300, top_k=3)) <= {47, 48, 49}


def test_seed_is_taken_as_uint64():
    assert draws(2**64 - 1) == draws(-1)


@pytest.mark.parametrize("high", [2**32, 2**40, 2**63])
def test_every_bit_of_the_seed_counts(high):
    # torch's CPU generator kept only a seed's low 32 bits: s and s + 2**32 drew alike.
    assert draws(5) != draws(5 + high)


def test_token_logprobs():
    logits = torch.tensor([math.log(0.5), math.log(0.3), math.log(0.2)])
    logprob, top = token_logprobs(logits, 1, 2)
    assert logprob == pytest.approx(math.log(0.3))
    assert [t for t, _ in top] == [0, 1]
    assert [lp for _, lp in top] == pytest.approx([math.log(0.5), math.log(0.3)])
    assert token_logprobs(logits, 2, 0)[1] == []
