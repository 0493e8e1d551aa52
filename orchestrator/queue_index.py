"""The queue index: queued jobs per model (and per tenant), in scheduling order,
without scanning them all.

Owned by the orchestrator's loop (one writer, no locks). Per model there are:

  ready    per tenant, a heap of (priority, order)   jobs eligible now: interactive
                                                      before batch, FIFO (admission
                                                      order) within a class
  delayed  one heap of (not_before, priority, order)  jobs waiting on retry backoff;
                                                      moved to their tenant's ready heap
                                                      by the first query at or after
                                                      not_before

Outside platform mode every job has tenant "" and a model has one ready heap, so
nothing below costs more than with a single heap. In platform mode the per-tenant heaps
let the scheduler look past the heads of a tenant that is over its quota to other
tenants' jobs without walking the held-back ones: `heads` merges the tenants' heaps
best-first, skipping tenants whose cap is 0 and stopping each at its cap.

Costs (n jobs of the model, T tenants with eligible jobs of the model):
add O(log n); remove O(1) (lazy deletion: the heap entry is marked dead and dropped
when it surfaces, or when dead entries outnumber live ones the heaps are rebuilt, so
memory and amortised time stay O(log n) per operation);
heads(model, k, now) O(k log k + due log n) with one tenant, O((T + k) log(T + k) + due
log n) with caps or several tenants; tenant_heads(model, tenant, k) O(k log k);
tenants(model) O(T); counts O(1). Queries leave the heaps unchanged apart from
promotions and dropping dead entries at the top.

Contract: a job id is in the index at most once. `add` of an id already present
replaces it (a retried job is re-added with its new not_before and attempts).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator, Mapping

from orchestrator.snapshot import JobView
from orchestrator.types import Priority


class _Entry:
    __slots__ = ("view", "delayed", "dead")

    def __init__(self, view: JobView, delayed: bool) -> None:
        self.view, self.delayed, self.dead = view, delayed, False


class _ModelQueue:
    __slots__ = ("heaps", "live", "delayed", "n_ready", "n_delayed", "dead")

    def __init__(self) -> None:
        self.heaps: dict[str, list[tuple]] = {}  # tenant -> (priority, order, seq, entry)
        self.live: dict[str, int] = {}  # tenant -> live entries in its ready heap
        self.delayed: list[tuple] = []  # (not_before, priority, order, seq, entry)
        self.n_ready = self.n_delayed = self.dead = 0

    @property
    def ready(self) -> list[tuple]:
        """The ready heap of jobs without a tenant (every job outside platform mode)."""
        return self.heaps.get("", [])

    def push_ready(self, t: tuple) -> None:
        tenant = t[-1].view.tenant_id
        heap = self.heaps.get(tenant)
        if heap is None:
            heap = self.heaps[tenant] = []
            self.live[tenant] = 0
        heapq.heappush(heap, t)
        self.live[tenant] += 1
        self.n_ready += 1

    def top(self, tenant: str) -> list[tuple]:
        """The tenant's ready heap with dead entries dropped from its top."""
        heap = self.heaps[tenant]
        while heap and heap[0][-1].dead:
            heapq.heappop(heap)
            self.dead -= 1
        return heap

    def compact(self) -> None:
        for tenant, heap in self.heaps.items():
            heap[:] = [t for t in heap if not t[-1].dead]
            heapq.heapify(heap)
        self.delayed = [t for t in self.delayed if not t[-1].dead]
        heapq.heapify(self.delayed)
        self.dead = 0


def _smallest(heap: list[tuple], k: int) -> list[JobView]:
    """The k smallest live entries of a heap, without popping them (best-first walk)."""
    out: list[JobView] = []
    frontier = [(heap[0], 0)] if heap else []
    n = len(heap)
    while frontier and len(out) < k:
        t, i = heapq.heappop(frontier)
        if not t[-1].dead:
            out.append(t[-1].view)
        for c in (2 * i + 1, 2 * i + 2):
            if c < n:
                heapq.heappush(frontier, (heap[c], c))
    return out


class QueueIndex:
    """Queued jobs indexed by model, tenant, priority and retry eligibility."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._models: dict[str, _ModelQueue] = {}
        self._depth: dict[Priority, int] = {p: 0 for p in Priority}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._entries

    def __iter__(self) -> Iterator[JobView]:
        """Every queued job, in no particular order (for tests and diagnostics)."""
        return (e.view for e in self._entries.values())

    def get(self, job_id: str) -> JobView | None:
        e = self._entries.get(job_id)
        return None if e is None else e.view

    def add(self, job: JobView) -> None:
        """Queue a job (or replace the queued job with the same id)."""
        if job.job_id in self._entries:
            self.remove(job.job_id)
        mq = self._models.get(job.model_ref)
        if mq is None:
            mq = self._models[job.model_ref] = _ModelQueue()
        delayed = job.not_before > 0.0
        entry = _Entry(job, delayed)
        if delayed:
            heapq.heappush(mq.delayed, (job.not_before, int(job.priority), job.order,
                                        next(self._seq), entry))
            mq.n_delayed += 1
        else:  # mq.push_ready, inlined: this is the loop's hot path
            tenant = job.tenant_id
            heap = mq.heaps.get(tenant)
            if heap is None:
                heap = mq.heaps[tenant] = []
                mq.live[tenant] = 1
            else:
                mq.live[tenant] += 1
            heapq.heappush(heap, (int(job.priority), job.order, next(self._seq), entry))
            mq.n_ready += 1
        self._entries[job.job_id] = entry
        self._depth[job.priority] += 1

    def remove(self, job_id: str) -> JobView | None:
        """Take a job out (dispatched, cancelled, failed). Idempotent: an id that is not
        queued returns None and changes nothing."""
        entry = self._entries.pop(job_id, None)
        if entry is None:
            return None
        entry.dead = True
        view = entry.view
        self._depth[view.priority] -= 1
        mq = self._models[view.model_ref]
        if mq.n_ready + mq.n_delayed == 1:
            del self._models[view.model_ref]
            return view
        mq.dead += 1
        if entry.delayed:
            mq.n_delayed -= 1
        else:
            mq.n_ready -= 1
            tenant, live = view.tenant_id, mq.live
            n = live[tenant] - 1
            if n:
                live[tenant] = n
            else:  # every entry left in its heap is dead: drop them all
                del live[tenant]
                mq.dead -= len(mq.heaps.pop(tenant))
        if mq.dead > 64 and mq.dead > mq.n_ready + mq.n_delayed:
            mq.compact()
        return view

    def depth_by_priority(self) -> dict[Priority, int]:
        return dict(self._depth)

    def models(self) -> list[str]:
        """Models with at least one queued job, sorted (deterministic)."""
        return sorted(self._models)

    def count(self, model_ref: str, now: float) -> tuple[int, int]:
        """(eligible, waiting on retry backoff) for a model at `now`."""
        mq = self._models.get(model_ref)
        if mq is None:
            return 0, 0
        self._promote(mq, now)
        return mq.n_ready, mq.n_delayed

    def _promote(self, mq: _ModelQueue, now: float) -> None:
        delayed = mq.delayed
        while delayed and delayed[0][0] <= now:
            t = heapq.heappop(delayed)
            entry = t[-1]
            if entry.dead:
                mq.dead -= 1
                continue
            entry.delayed = False
            mq.n_delayed -= 1
            mq.push_ready((t[1], t[2], t[3], entry))

    def heads(self, model_ref: str, k: int, now: float,
              caps: Mapping[str, int] | None = None) -> tuple[JobView, ...]:
        """The first k jobs for the model that are eligible at `now`, in (priority,
        order), over every tenant; with `caps`, only tenants named there, each with at
        most caps[tenant] jobs (a tenant capped at 0 costs nothing)."""
        mq = self._models.get(model_ref)
        if mq is None or k <= 0:
            return ()
        self._promote(mq, now)
        heaps = mq.heaps
        if caps is None and len(heaps) == 1:  # one tenant (every job outside platform mode)
            for heap in heaps.values():
                while heap and heap[0][-1].dead:
                    heapq.heappop(heap)
                    mq.dead -= 1
                return tuple(_smallest(heap, k))
        # Best-first over the tenants' heaps at once: the frontier holds (entry, tenant,
        # index); entries never tie (their seq is unique), so neither does the frontier.
        frontier = []
        for tenant in heaps:
            cap = k if caps is None else caps.get(tenant, 0)
            if cap > 0:
                heap = mq.top(tenant)
                if heap:
                    frontier.append((heap[0], tenant, 0))
        heapq.heapify(frontier)
        out: list[JobView] = []
        taken: dict[str, int] = {}
        while frontier and len(out) < k:
            t, tenant, i = heapq.heappop(frontier)
            if not t[-1].dead:
                n = taken.get(tenant, 0)
                if caps is not None and n >= caps[tenant]:
                    continue  # the tenant's cap is reached: its subtree is not walked
                out.append(t[-1].view)
                taken[tenant] = n + 1
            heap = heaps[tenant]
            for c in (2 * i + 1, 2 * i + 2):
                if c < len(heap):
                    heapq.heappush(frontier, (heap[c], tenant, c))
        return tuple(out)

    def tenant_heads(self, model_ref: str, tenant: str, k: int, now: float
                     ) -> tuple[JobView, ...]:
        """The tenant's first k jobs for the model that are eligible at `now`."""
        mq = self._models.get(model_ref)
        if mq is None or k <= 0:
            return ()
        self._promote(mq, now)
        if tenant not in mq.heaps:
            return ()
        return tuple(_smallest(mq.top(tenant), k))

    def tenants(self, model_ref: str, now: float) -> list[tuple[str, JobView, int]]:
        """(tenant, its first eligible job, its eligible jobs) for each tenant with jobs
        of the model eligible at `now`, in no particular order."""
        mq = self._models.get(model_ref)
        if mq is None:
            return []
        self._promote(mq, now)
        return [(tenant, mq.top(tenant)[0][-1].view, n) for tenant, n in mq.live.items()]

    def next_eligible(self, model_ref: str, now: float) -> JobView | None:
        """The model's job in retry backoff that becomes eligible first, if any."""
        mq = self._models.get(model_ref)
        if mq is None:
            return None
        self._promote(mq, now)
        delayed = mq.delayed
        while delayed and delayed[0][-1].dead:
            heapq.heappop(delayed)
            mq.dead -= 1
        return delayed[0][-1].view if delayed else None

    def next_eligible_at(self, model_ref: str, now: float = 0.0) -> float | None:
        """When the model's next job in retry backoff becomes eligible (None: none waits)."""
        job = self.next_eligible(model_ref, now)
        return None if job is None else job.not_before
