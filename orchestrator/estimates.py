"""Learned estimates: how long a model's worker takes to start and a job takes to run.

`Estimates` is mutable and owned by the orchestrator's loop (one writer). It is fed
facts as they happen and hands the scheduler a frozen `ModelEstimate` per model in
each snapshot:

  worker_started(model_ref, seconds)              start command -> worker READY
  job_finished(model_ref, worker_id, tokens, s)   dispatch -> terminal event

Each figure is an exponential moving average, x <- x + alpha * (sample - x), seeded by
its first sample. A model gets an estimate once one of its jobs has finished (until
then the scheduler takes no start decision that needs one: a guessed job_s could start
workers nobody needs); start_s falls back to its configured default until a start has
been observed.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

DEFAULT_ALPHA = 0.3
DEFAULT_START_S = 30.0


@dataclass(frozen=True, slots=True)
class ModelEstimate:
    """What one model costs, as far as we know: seconds to start a worker, seconds a
    job occupies a worker, generated tokens per second (0.0 when unknown)."""
    start_s: float
    job_s: float
    tokens_per_s: float = 0.0


class Estimates:
    """Exponential moving averages per model (and tokens/s per worker), fed by facts."""

    def __init__(self, alpha: float = DEFAULT_ALPHA,
                 default_start_s: float = DEFAULT_START_S) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.default_start_s = default_start_s
        self._start: dict[str, float] = {}
        self._job: dict[str, float] = {}
        self._rate: dict[str, float] = {}
        self._worker_rate: dict[str, float] = {}
        self._frozen: Mapping[str, ModelEstimate] | None = None

    def _ema(self, table: dict[str, float], key: str, sample: float) -> None:
        old = table.get(key)
        table[key] = sample if old is None else old + self.alpha * (sample - old)

    def worker_started(self, model_ref: str, seconds: float) -> None:
        """A worker for model_ref became READY `seconds` after its start was commanded."""
        if seconds < 0:
            return
        self._ema(self._start, model_ref, seconds)
        self._frozen = None

    def job_finished(self, model_ref: str, worker_id: str, tokens: int, seconds: float) -> None:
        """A job held worker_id for `seconds` and generated `tokens` (any terminal outcome
        that ran on the worker counts: it occupied the worker all the same)."""
        if seconds <= 0:
            return
        self._ema(self._job, model_ref, seconds)
        if tokens > 0:
            self._ema(self._rate, model_ref, tokens / seconds)
            self._ema(self._worker_rate, worker_id, tokens / seconds)
        self._frozen = None

    def worker_gone(self, worker_id: str) -> None:
        """Forget a worker's own figures (idempotent)."""
        self._worker_rate.pop(worker_id, None)

    def worker_tokens_per_s(self, worker_id: str) -> float:
        return self._worker_rate.get(worker_id, 0.0)

    def get(self, model_ref: str) -> ModelEstimate | None:
        return self.snapshot().get(model_ref)

    def snapshot(self) -> Mapping[str, ModelEstimate]:
        """Frozen estimates for every model with a finished job; rebuilt after new facts."""
        if self._frozen is None:
            models = sorted(self._job)
            self._frozen = MappingProxyType({
                m: ModelEstimate(self._start.get(m, self.default_start_s), self._job[m],
                                 self._rate.get(m, 0.0))
                for m in models})
        return self._frozen
