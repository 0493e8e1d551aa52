"""Job persistence seen from the orchestrator: rows, events, and what clients may see.

Every JobEvent is written behind (batched by the store's writer). A client stream only
carries events that are already committed (`JobRecord.durable_seq`), so a client that
resumes after an orchestrator crash never finds a sequence number reused with other
content. The pump flushes as soon as anything is pending: the cost is one group commit
on the streaming path, not a commit per event. Without a store (tests, in-memory use)
events are durable at once.
"""

from __future__ import annotations

import asyncio
import contextlib

from common import log
from llama_orch.v1 import events_pb2
from orchestrator.jobs import JobRecord
from orchestrator.store import JobRow, Store


def row_of(job: JobRecord) -> JobRow:
    return JobRow.from_job(job.to_proto(), queue_order=job.order, priority=int(job.priority),
                           not_before=job.not_before)


class Durability:
    def __init__(self, store: Store | None):
        self.store = store
        self._pending: dict[JobRecord, int] = {}
        self._kick = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self.store is not None:
            self._task = asyncio.create_task(self._pump(), name="durability")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.store is not None:
            with contextlib.suppress(Exception):
                await self.store.flush()
            self._settle(dict(self._pending))

    def appended(self, job: JobRecord, event: events_pb2.JobEvent) -> None:
        if self.store is None:
            job.mark_durable(event.seq)
            return
        self.store.append_events([event])
        self._pending[job] = event.seq
        self._kick.set()

    async def insert(self, job: JobRecord) -> None:
        if self.store is not None:
            await self.store.insert_job(row_of(job))

    async def save(self, job: JobRecord) -> None:
        """Write the job's row; returns once committed."""
        if self.store is not None:
            await self.store.update_job(row_of(job))

    def save_soon(self, job: JobRecord) -> None:
        """Write the job's row without waiting (state changes that a crash may lose safely)."""
        if self.store is not None:
            asyncio.create_task(self._save_logged(job))

    async def _save_logged(self, job: JobRecord) -> None:
        try:
            await self.save(job)
        except Exception as exc:  # the next save of this job carries the state again
            log.emit("orchestrator", "store.write_failed", repr(exc), level="error", job_id=job.job_id)

    async def _pump(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            batch, self._pending = self._pending, {}
            try:
                await self.store.flush()
            except Exception as exc:
                log.emit("orchestrator", "store.flush_failed", repr(exc), level="error")
                await asyncio.sleep(0.5)
                self._pending.update({j: max(s, self._pending.get(j, 0)) for j, s in batch.items()})
                self._kick.set()
                continue
            self._settle(batch)

    @staticmethod
    def _settle(batch: dict[JobRecord, int]) -> None:
        for job, seq in batch.items():
            job.mark_durable(seq)
