"""Job persistence seen from the orchestrator: rows, events, and what clients may see.

Every JobEvent is written behind (batched by the store's writer) and is visible to
clients at once, within the job's committed seq reservation (orchestrator/jobs.py
explains why that keeps resume honest across a crash). The store's writer lets
write-behind events linger briefly (store/writer.py), so a token stream is a few
commits a second rather than one per token; the pump checks for write-behind
failures every FLUSH_EVERY_S while events flow. The stored log trails the live one by
about that much, which a crash may lose and recovery realigns.
A job's row is committed before its first event is visible (insert), and its outcome
before its final event (the loop's order); a reservation that runs out is extended
with one row write. Without a store (tests, in-memory use) events are visible at once.
"""

from __future__ import annotations

import asyncio
import contextlib

from common import log
from llama_orch.v1 import events_pb2
from orchestrator.jobs import JobRecord
from orchestrator.store import JobRow, Store, StoreClosed


def row_of(job: JobRecord) -> JobRow:
    return JobRow.from_job(job.to_proto(), queue_order=job.order, priority=int(job.priority),
                           not_before=job.not_before)


FLUSH_EVERY_S = 0.2


class Durability:
    def __init__(self, store: Store | None):
        self.store = store
        self._pending: dict[JobRecord, int] = {}
        # Jobs whose insert is in flight -> done once it is (then job.refused says how).
        self._inserting: dict[JobRecord, asyncio.Future] = {}
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
            self._pending.clear()

    def appended(self, job: JobRecord, event: events_pb2.JobEvent) -> None:
        if self.store is None or job.refused:
            job.mark_visible(event.seq)
            return
        self.store.append_events([event])
        self._pending[job] = event.seq
        self._kick.set()

    def track(self, job: JobRecord, *, inserting: bool = False) -> None:
        """Route the job's new events here (on_append) and its reservations (on_reserve).

        `inserting`: the job's row is about to be inserted (insert()), and that insert
        carries its first reservation, so its first events ask for no row write of
        their own. (One did: a second write of every new job's row, and an upsert that
        could put back the row of a job whose insert the store had refused.)"""
        job.on_append = self.appended
        job.on_reserve = self._reserve
        if self.store is None:
            job.reserved_durable = job.seq_reserved = 1 << 62
        elif inserting:
            job.reserving = True

    async def insert(self, job: JobRecord) -> None:
        """Commit the job's row; its events up to the reservation may then be shown.
        If the insert fails, the job's reservation stays pending for good: nothing
        writes a row for a job the store refused."""
        if self.store is not None:
            reserved = job.seq_reserved
            settled = self._inserting[job] = asyncio.get_running_loop().create_future()
            try:
                await self.store.insert_job(row_of(job))
            except Exception:
                job.refused = True
                raise
            finally:
                settled.set_result(None)
                self._inserting.pop(job, None)
            job.reservation_committed(reserved)
            job.reserving = False
            if job.last_seq > job.reserved_durable:  # more events than the row reserved
                job.reserving = True
                self._reserve(job)

    def _reserve(self, job: JobRecord) -> None:
        asyncio.create_task(self._save_reservation(job))

    async def _save_reservation(self, job: JobRecord) -> None:
        try:
            await self._extend(job)
        finally:
            job.reserving = False

    async def _extend(self, job: JobRecord) -> None:
        while job.reserved_durable < job.last_seq:
            reserved = job.seq_reserved
            try:
                await self.save(job)
            except StoreClosed:
                return  # shutting down: nothing will be written any more
            except Exception as exc:  # events stay hidden until a write succeeds
                log.emit("orchestrator", "store.write_failed", repr(exc), level="error",
                         job_id=job.job_id)
                await asyncio.sleep(0.5)
                continue
            job.reservation_committed(reserved)

    async def save(self, job: JobRecord, *, urgent: bool = True) -> None:
        """Write the job's row; returns once committed. Not before its insert is done,
        and never for a job whose insert the store refused (the upsert would put
        back the row of a job the client was told does not exist)."""
        if (inserting := self._inserting.get(job)) is not None:
            await asyncio.wait([inserting])
        if self.store is not None and not job.refused:
            reserved = job.seq_reserved
            await self.store.update_job(row_of(job), urgent=urgent)
            job.reservation_committed(reserved)

    def save_soon(self, job: JobRecord) -> None:
        """Write the job's row without waiting (state changes that a crash may lose safely)."""
        if self.store is not None:
            asyncio.create_task(self._save_logged(job))

    async def _save_logged(self, job: JobRecord) -> None:
        try:
            # Not urgent: nothing waits on it, so it shares the writer's next commit.
            await self.save(job, urgent=False)
        except Exception as exc:  # the next save of this job carries the state again
            log.emit("orchestrator", "store.write_failed", repr(exc), level="error", job_id=job.job_id)

    async def _pump(self) -> None:
        while True:
            await self._kick.wait()
            # Not at once: an awaited flush would end the writer's linger every token.
            await asyncio.sleep(FLUSH_EVERY_S)
            self._kick.clear()
            batch, self._pending = self._pending, {}
            try:
                await self.store.flush()
            except Exception as exc:
                log.emit("orchestrator", "store.flush_failed", repr(exc), level="error")
                await asyncio.sleep(0.5)
                self._pending.update({j: max(s, self._pending.get(j, 0)) for j, s in batch.items()})
                self._kick.set()
