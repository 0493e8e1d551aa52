"""Retry policy: exponential backoff with jitter, a bounded number of attempts.

delay(attempt) = min(cap, initial * multiplier ** (attempt - 1)) * U(0.5, 1.0)
Defaults: 5 attempts, 1 s initial, x2, 60 s cap. Jitter spreads the retries of many
jobs that failed together (a pool lost) so they do not stampede one worker.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    initial_s: float = 1.0
    multiplier: float = 2.0
    cap_s: float = 60.0

    def should_retry(self, attempts: int, retryable: bool) -> bool:
        """`attempts` is how many times the job has been dispatched so far."""
        return retryable and attempts < self.max_attempts

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        base = min(self.cap_s, self.initial_s * self.multiplier ** max(0, attempt - 1))
        return base * (0.5 + 0.5 * (rng or random).random())
