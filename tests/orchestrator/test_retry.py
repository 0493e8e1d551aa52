import random

import pytest

from orchestrator.retry import RetryPolicy


@pytest.mark.parametrize("attempt,lo,hi", [(1, 0.5, 1.0), (2, 1.0, 2.0), (3, 2.0, 4.0), (10, 30.0, 60.0)])
def test_backoff_doubles_with_jitter_and_a_cap(attempt, lo, hi):
    rng = random.Random(1)
    delays = [RetryPolicy().delay(attempt, rng) for _ in range(200)]
    assert lo <= min(delays) and max(delays) <= hi and len(set(delays)) > 1


@pytest.mark.parametrize("attempts,retryable,expected", [
    (1, True, True), (4, True, True), (5, True, False), (1, False, False)])
def test_retry_eligibility(attempts, retryable, expected):
    assert RetryPolicy().should_retry(attempts, retryable) is expected
