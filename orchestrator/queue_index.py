"""The queue index: queued jobs per model, in scheduling order, without scanning them all.

Owned by the orchestrator's loop (one writer, no locks). Per model there are two heaps:

  ready    (priority, order)             jobs eligible now: interactive before batch,
                                         FIFO (admission order) within a class
  delayed  (not_before, priority, order) jobs waiting on retry backoff; moved to
                                         `ready` by the first query at or after not_before

Costs: add O(log n); remove O(1) (lazy deletion: the heap entry is marked dead and
dropped when it surfaces, or when dead entries outnumber live ones the heaps are
rebuilt, so memory and amortised time stay O(log n) per operation);
heads(model, k, now) O(k log k + due log n) and leaves the heaps unchanged apart from
promotions and dropping dead entries at the top; counts O(1).

Contract: a job id is in the index at most once. `add` of an id already present
replaces it (a retried job is re-added with its new not_before and attempts).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator

from orchestrator.snapshot import JobView
from orchestrator.types import Priority


class _Entry:
    __slots__ = ("view", "delayed", "dead")

    def __init__(self, view: JobView, delayed: bool) -> None:
        self.view, self.delayed, self.dead = view, delayed, False


class _ModelQueue:
    __slots__ = ("ready", "delayed", "n_ready", "n_delayed", "dead")

    def __init__(self) -> None:
        self.ready: list[tuple] = []    # (priority, order, seq, entry)
        self.delayed: list[tuple] = []  # (not_before, priority, order, seq, entry)
        self.n_ready = self.n_delayed = self.dead = 0

    def compact(self) -> None:
        self.ready = [t for t in self.ready if not t[-1].dead]
        self.delayed = [t for t in self.delayed if not t[-1].dead]
        heapq.heapify(self.ready)
        heapq.heapify(self.delayed)
        self.dead = 0


class QueueIndex:
    """Queued jobs indexed by model, priority and retry eligibility."""

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
        else:
            heapq.heappush(mq.ready, (int(job.priority), job.order, next(self._seq), entry))
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
        if entry.delayed:
            mq.n_delayed -= 1
        else:
            mq.n_ready -= 1
        if mq.n_ready + mq.n_delayed == 0:
            del self._models[view.model_ref]
        else:
            mq.dead += 1
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
            mq.n_ready += 1
            heapq.heappush(mq.ready, (t[1], t[2], t[3], entry))

    def heads(self, model_ref: str, k: int, now: float) -> tuple[JobView, ...]:
        """The first k jobs for the model that are eligible at `now`, in (priority, order)."""
        mq = self._models.get(model_ref)
        if mq is None or k <= 0:
            return ()
        self._promote(mq, now)
        heap = mq.ready
        while heap and heap[0][-1].dead:
            heapq.heappop(heap)
            mq.dead -= 1
        # Best-first walk of the heap tree: the k smallest without popping them.
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
        return tuple(out)

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
