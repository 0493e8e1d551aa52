"""Per-tenant submission rate limits: a token bucket per tenant, checked before admission.

    limiter = ratelimit.limiter_of(orch)
    await limiter.check(tenant_id)       # raises RateLimited (RATE_LIMITED) when over

Contract
- A tenant's limit is tenants.submit_rate_per_second, r (NULL or 0: none), set by
  AdminService CreateTenant / SetQuota. Its bucket holds at most b = max(1, 2r)
  tokens (the proto's "burst = 2x"), refills at r tokens per second and starts full.
  Each Submit and each Generate takes one token.
- With no token left the call is refused with RATE_LIMITED and a hint: retry after
  ceil((1 - tokens) / r) seconds, at least 1 — the gRPC trailing metadata
  `retry-after` (whole seconds), which the gateway turns into the `Retry-After`
  header of its 429.
- It is checked before admission, so a refused submission stores nothing and costs the
  queue nothing. It is the only refusal for load: quotas (concurrent jobs, VRAM, token
  budgets) never refuse a submission; the scheduler holds over-quota work in the queue.
- Callers without a tenant (auth off: the LOCAL operator) and tenants without a limit
  are never limited.
- A tenant's limit is read from the store at most once per LIMITS_TTL_S; a change made
  through this orchestrator's AdminService applies at once (`set_rate`), one written
  by another process (the CLI) within LIMITS_TTL_S. If the store cannot be read the
  submission goes through (logged): a rate limit protects the queue, it must never be
  what makes the service unavailable.
- Buckets live in this orchestrator's memory; a restart refills them.
"""

from __future__ import annotations

import collections
import math
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from common import log
from common.errors import OrchError
from orchestrator import metrics
from orchestrator.store import Store, StoreError

if TYPE_CHECKING:
    from orchestrator.core import Orchestrator

LIMITS_TTL_S = 5.0
BURST_FACTOR = 2.0


class _Status(collections.namedtuple("_Status", ("code", "details", "trailing_metadata")),
              grpc.Status):
    pass


class RateLimited(OrchError):
    """RATE_LIMITED, with the whole seconds after which a retry may succeed; on gRPC the
    hint travels as trailing metadata `retry-after`."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__("RATE_LIMITED", message)
        self.retry_after_s = retry_after_s

    def to_status(self) -> grpc.Status:
        status = super().to_status()
        return _Status(status.code, status.details,
                       (*status.trailing_metadata, ("retry-after", str(self.retry_after_s))))


@dataclass(slots=True)
class Bucket:
    """A token bucket: `burst` tokens at most, refilled at `rate` per second."""

    rate: float
    burst: float
    tokens: float
    at: float  # when `tokens` was last brought up to date (the limiter's clock)

    @classmethod
    def full(cls, rate: float, now: float) -> Bucket:
        burst = max(1.0, BURST_FACTOR * rate)
        return cls(rate, burst, burst, now)

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = now

    def take(self, now: float) -> float:
        """Take a token: 0.0 if there was one, else the seconds until there is one."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def retune(self, rate: float, now: float) -> None:
        """A new rate: what was saved up so far stays, within the new burst."""
        self._refill(now)
        self.rate, self.burst = rate, max(1.0, BURST_FACTOR * rate)
        self.tokens = min(self.tokens, self.burst)


class RateLimiter:
    """The buckets of one orchestrator's tenants; see the module docstring."""

    def __init__(self, store: Store | None, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.clock = clock
        self._rates: dict[str, tuple[float, float]] = {}  # tenant -> (rate, read until)
        self._buckets: dict[str, Bucket] = {}
        self.lookups = 0  # store reads (for tests: the cache works)

    def set_rate(self, tenant_id: str, rate: float | None) -> None:
        """The tenant's limit changed (None or 0: none); applies to its next submission."""
        now = self.clock()
        rate = float(rate or 0.0)
        self._rates[tenant_id] = (rate, now + LIMITS_TTL_S)
        bucket = self._buckets.get(tenant_id)
        if rate <= 0:
            self._buckets.pop(tenant_id, None)
        elif bucket is None:
            self._buckets[tenant_id] = Bucket.full(rate, now)
        elif bucket.rate != rate:
            bucket.retune(rate, now)

    async def check(self, tenant_id: str) -> None:
        """Take one submission from the tenant's bucket, or raise RateLimited."""
        if not tenant_id:
            return
        rate = await self._rate(tenant_id)
        if rate <= 0:
            return
        now = self.clock()
        bucket = self._buckets.get(tenant_id)
        if bucket is None:
            bucket = self._buckets[tenant_id] = Bucket.full(rate, now)
        wait = bucket.take(now)
        if wait <= 0:
            return
        metrics.ADMISSIONS.labels(outcome="RATE_LIMITED", **metrics.C).inc()
        retry_after = max(1, math.ceil(wait))
        raise RateLimited(f"more than {rate:g} submissions per second (burst "
                          f"{bucket.burst:g}) for this tenant; retry after {retry_after} s",
                          retry_after)

    async def _rate(self, tenant_id: str) -> float:
        now = self.clock()
        cached = self._rates.get(tenant_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        if self.store is None:
            return 0.0
        self.lookups += 1
        try:
            row = await self.store.get_tenant(tenant_id)
        except StoreError as exc:
            log.emit("orchestrator", "ratelimit.unread", f"tenant {tenant_id}'s rate limit "
                     f"could not be read; not limiting: {exc}", level="warning")
            return cached[0] if cached is not None else 0.0
        self.set_rate(tenant_id, row.submit_rate_per_second if row is not None else None)
        return self._rates[tenant_id][0]


_LIMITERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def limiter_of(orch: Orchestrator) -> RateLimiter:
    """The orchestrator's limiter (one per Orchestrator, shared by ClientService, which
    checks it, and AdminService, which changes the limits)."""
    found = _LIMITERS.get(orch)
    if found is None:
        found = _LIMITERS[orch] = RateLimiter(orch.store)
    return found
