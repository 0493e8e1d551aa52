"""The Orchestrator: admission, the job table, the decision loop and pool facts.

One asyncio task (the decision loop) owns scheduling: it takes a frozen snapshot,
asks the policy for decisions, validates them and carries them out. Everything else
(RPC handlers, pool links, executors) changes records and wakes the loop.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import time
import uuid
from collections.abc import Mapping
from types import MappingProxyType

from common import log
from common.config import Config
from common.errors import OrchError
from llama_orch.v1 import common_pb2, events_pb2, pool_link_pb2, worker_pb2
from orchestrator import (admission, executor, metrics, quota, quota_store, recovery, scheduler,
                          validator)
from orchestrator.durability import Durability
from orchestrator.store import DuplicateKey, Store, StoreClosed, StoreError
from orchestrator.catalog import Catalog
from orchestrator.facts import FactBus
from orchestrator.jobs import JobRecord, new_job_id
from orchestrator.registry import PoolRecord, Registry, WorkerRecord
from orchestrator.retry import RetryPolicy
from orchestrator.estimates import Estimates
from orchestrator.queue_index import QueueIndex
from orchestrator.snapshot import (Dispatch, EvictModel, JobView, Preload, Snapshot, StartWorker,
                                   StopWorker, Wait, assemble)
from orchestrator import advisor, policies, usage, watchdog
from orchestrator.lua_policy import LuaPolicy, decide_with_fallback
from orchestrator.types import JobState, WorkerPhase

F = events_pb2
MAX_START_FAILURES = 3
# A wake-up this soon after the previous scheduling cycle yields to the event loop once
# before its cycle, so a burst of events is served by one cycle (see _decision_loop).
COALESCE_AFTER_S = 0.005
_CAPACITY_REASONS = frozenset({scheduler.Reason.NO_ROOM, scheduler.Reason.BUSY_NO_ROOM,
                               scheduler.Reason.EVICTING})


# Finished jobs kept in memory (the newest; older ones are read from the store). A
# 32-token job holds ~60 objects the cyclic collector tracks (its events are protobuf
# messages), and a full collection walks them all while the event loop waits (measured
# ~0.45 us per object: 10,000 such jobs would pause it ~270 ms). 256 add ~7 ms and
# still serve a just-finished job's result and resume from memory.
FINISHED_IN_MEMORY = 256
# A finished job's row write that failed is retried after this, doubling up to the max.
CLOSE_RETRY_S = 0.5
CLOSE_RETRY_MAX_S = 10.0


class Orchestrator:
    def __init__(self, cfg: Config, catalog: Catalog | None = None, facts: FactBus | None = None,
                 store: Store | None = None):
        self.cfg = cfg
        self.store = store
        self.durability = Durability(store)
        self._finished: collections.deque[str] = collections.deque()
        self.catalog = catalog or Catalog.from_config(cfg.models)
        self.facts = facts or FactBus()
        self.registry = Registry()
        self.jobs: dict[str, JobRecord] = {}
        self.queue: dict[str, JobRecord] = {}  # queued jobs by id
        self.index = QueueIndex()  # the same jobs, indexed for the scheduler's snapshot
        self.estimates = Estimates()
        self.advice: tuple = ()
        self._wake_at = float("inf")
        self._wake_timer: asyncio.TimerHandle | None = None
        self.optimize_now = asyncio.Event()
        # model ref -> (pool, device) where its workers are never evicted. Set by the
        # admin API's PinModel/UnpinModel, which write the store's pins table first and
        # hold pins_lock across the write and this update (so memory and the store agree
        # whatever order concurrent calls commit in); start() loads them back.
        self.pins: dict[str, set[tuple[str, str]]] = {}
        self.pins_lock = asyncio.Lock()
        self.preloads: set[tuple[str, str]] = set()  # (pool, model) hot-loaded or on the way
        self.idempotency: dict[str, str] = {}
        # Idempotency key -> the insert of the job that carries it, while in flight.
        self._inserting: dict[str, asyncio.Future] = {}
        self._order = 0
        self._wake = asyncio.Event()
        self._last_cycle = float("-inf")  # perf_counter() at the end of the last cycle with work
        self._tasks: list[asyncio.Task] = []
        self._start_failures: dict[str, tuple[int, float, str]] = {}
        o = cfg.orchestrator
        self.retry = RetryPolicy(o.retry_max_attempts, o.retry_initial_s, o.retry_multiplier, o.retry_cap_s)
        self._deadlines: list[tuple[float, str]] = []  # heap of (deadline, job_id)
        # Platform mode: each tenant's limits (orchestrator/quota.py), replaced whole on a
        # change; the snapshot reads a frozen copy, made again only after a change.
        self._tenants: dict[str, quota.TenantLimits] = {}
        self._tenants_frozen: Mapping[str, quota.TenantLimits] = MappingProxyType({})
        self._tenants_dirty = False
        # Jobs of tenants whose limits are not loaded yet: queued, but out of the index
        # (the scheduler never sees them) until the limits arrive.
        self._tenant_pending: dict[str, list[str]] = {}
        # The scheduler policy: None is the built-in, else an operator's Lua policy
        # (orchestrator/policies.py keeps its versions; load_policy/activate_policy).
        self.policy: LuaPolicy | None = None

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Load the pins, recover unfinished jobs from the store, then start the loops."""
        self.durability.start()
        if self.store is not None:  # before the first cycle may evict a pinned worker
            self.pins = await self.store.load_pins()
        if self.cfg.tenancy and self.store is not None:  # before recovery queues jobs
            for tid, limits in (await quota_store.load(self.store)).items():
                self.tenant_limits_changed(tid, limits)
        if self.store is not None:
            await recovery.recover(self)
        await self.load_policy()
        metrics.watch(self)  # gauges read on scrape, not set on every wake
        self._tasks = [asyncio.create_task(self._decision_loop(), name="decision-loop"),
                       asyncio.create_task(watchdog.run(self), name="watchdog"),
                       asyncio.create_task(advisor.run(self), name="optimizer")]
        self.wake()

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.durability.stop()
        for w in list(self.registry.workers.values()):
            try:  # a channel with a call stuck on a dead peer must not hold up the stop
                await asyncio.wait_for(w.close(), 2.0)
            except asyncio.TimeoutError:
                pass

    def wake(self) -> None:
        self._wake.set()

    # ---- the scheduler policy (orchestrator/policies.py) ----------------------------------

    async def load_policy(self) -> None:
        """The store's active policy version, then cfg.scheduler.policy if it differs."""
        await policies.load(self)

    async def activate_policy(self, *, source: str = "", version: int = 0, builtin: bool = False,
                              author: str = ""):
        """Activate new Lua source, an earlier version, or the built-in (validated first:
        POLICY_INVALID; POLICY_FORBIDDEN in platform mode). Returns the active version."""
        return await policies.activate(self, source=source, version=version, builtin=builtin,
                                       author=author)

    # ---- jobs --------------------------------------------------------------------------

    async def submit(self, spec: common_pb2.JobSpec, *, idempotency_key: str = "",
                     correlation_id: str = "", tenant_id: str = "",
                     abandon_cancels: bool = False) -> tuple[JobRecord, bool]:
        """Admit and persist a job; it is durable when this returns. A repeated
        Idempotency-Key returns the earlier job (or IDEMPOTENCY_CONFLICT if the request
        differs).

        Without a key the job is scheduled while its row is being committed: the
        commit overlaps dispatch and the worker's first step instead of preceding
        them, and nothing of the job is visible (events, outcome) before the row is
        committed. If the store refuses the row, the job is withdrawn.

        The insert and what follows it run to the end even if the caller is cancelled
        meanwhile (a client that went away): a row the store commits always belongs to
        a live job. `abandon_cancels`: such a job is then cancelled (a streaming
        client's job that nobody will read)."""
        if idempotency_key:
            existing = await self._by_idempotency_key(idempotency_key)
            if existing is not None:
                return self._same_request(existing, spec), True
        try:
            admitted = admission.admit(spec, self.catalog, self.cfg.orchestrator)
        except OrchError as err:
            metrics.ADMISSIONS.labels(component="orchestrator", outcome=err.code).inc()
            raise
        self._order += 1
        job = JobRecord(new_job_id(), spec, admitted, correlation_id=correlation_id,
                        idempotency_key=idempotency_key, order=self._order,
                        tenant_id=tenant_id)  # the submitter's tenant (tenancy.py)
        if not idempotency_key:
            try:
                self._track(job, inserting=True)
                job.append(queued=F.JobQueued(
                    priority=spec.priority or common_pb2.PRIORITY_INTERACTIVE))
                self._admitted(job, correlation_id)
                self.wake()
            except StoreError as exc:  # the store is closed: nothing is inserted
                self._withdraw(job, exc)
                raise job.cancel_error from None
            insert = asyncio.ensure_future(self._insert_or_withdraw(job))
        else:
            insert = asyncio.ensure_future(self._insert_then_track(job, correlation_id))
            self._inserting[idempotency_key] = insert
            insert.add_done_callback(lambda done: self._inserting.pop(idempotency_key)
                                     if self._inserting.get(idempotency_key) is done else None)
        try:
            await asyncio.shield(insert)
        except asyncio.CancelledError:
            insert.add_done_callback(lambda t: self._abandoned(t, job, abandon_cancels))
            raise
        except DuplicateKey:
            existing = await self._by_idempotency_key(idempotency_key)
            if existing is None:
                raise OrchError("INTERNAL", "idempotency key collided but no job holds it") from None
            return self._same_request(existing, spec), True
        except StoreError as exc:
            raise OrchError("UNAVAILABLE", f"the state store refused the job: {exc}") from None
        return job, False

    async def _insert_or_withdraw(self, job: JobRecord) -> None:
        """Commit a scheduled job's row; if the store refuses it, withdraw the job."""
        try:
            await self.durability.insert(job)
        except StoreError as exc:
            self._withdraw(job, exc)
            raise job.cancel_error from None

    async def _insert_then_track(self, job: JobRecord, correlation_id: str) -> None:
        """Commit a keyed job's row, then make it live (a retry with its key finds it)."""
        await self.durability.insert(job)
        self._track(job)
        job.append(queued=F.JobQueued(priority=job.spec.priority or common_pb2.PRIORITY_INTERACTIVE))
        self._admitted(job, correlation_id)
        self.wake()

    def _abandoned(self, insert: asyncio.Future, job: JobRecord, cancel: bool) -> None:
        """The submitter left during `insert`: once it is done, the job runs on, or is
        cancelled if `cancel` and it was admitted."""
        if insert.cancelled() or insert.exception() is not None:
            return  # refused or withdrawn: nothing runs
        if cancel and not job.done:
            asyncio.ensure_future(self.cancel(job.job_id, OrchError(
                "CANCELLED", "the client went away before the job was admitted")))

    def _admitted(self, job: JobRecord, correlation_id: str) -> None:
        admitted = job.admitted
        metrics.ADMISSIONS.labels(component="orchestrator", outcome="admitted").inc()
        self.facts.publish(F.FACT_KIND_JOB_ADMITTED, f"admitted for {admitted.model.name}",
                           job_id=job.job_id, model_ref=job.model_ref,
                           correlation_id=correlation_id, priority=admitted.priority.name.lower(),
                           prompt_tokens=len(admitted.prompt_ids), seed=str(admitted.seed))

    def _withdraw(self, job: JobRecord, cause: Exception) -> None:
        """The store refused a job already scheduled: it never existed for the client."""
        self._dequeue(job.job_id)
        self.jobs.pop(job.job_id, None)
        job.refused = True
        job.cancel_requested = True
        job.cancel_error = OrchError("UNAVAILABLE", f"the state store refused the job: {cause}")
        if job.call is not None:
            job.call.cancel()
        self.facts.publish(F.FACT_KIND_JOB_FAILED, job.cancel_error.message, level=F.FACT_LEVEL_ERROR,
                           job_id=job.job_id, model_ref=job.model_ref, error_code="UNAVAILABLE")

    def _track(self, job: JobRecord, *, inserting: bool = False) -> None:
        """Make a live job known to the loop: table, queue (if queued), deadline.
        `inserting`: its row's insert is still to come (Durability.track)."""
        self.durability.track(job, inserting=inserting)
        self.jobs[job.job_id] = job
        if job.idempotency_key:
            self.idempotency[job.idempotency_key] = job.job_id
        if job.state is JobState.QUEUED:
            self._enqueue(job)
        heapq.heappush(self._deadlines, (job.created_at + job.admitted.deadline_ms / 1000, job.job_id))

    def _enqueue(self, job: JobRecord) -> None:
        self.queue[job.job_id] = job
        self.index.remove(job.job_id)
        tenant = job.tenant_id if self.cfg.tenancy else ""  # no tenants outside platform
        if tenant and tenant not in self._tenants:
            self._await_tenant(job)
            return
        m = job.admitted.model
        self.index.add(JobView(job.job_id, job.model_ref, job.priority, job.order,
                               m.memory_estimate_bytes, m.device_count, m.engine or "hf",
                               job.not_before, job.attempts, tenant))

    # ---- tenants' limits (platform mode; orchestrator/quota.py) ----------------------------

    @property
    def tenant_limits(self) -> Mapping[str, quota.TenantLimits]:
        """Each known tenant's limits and credit, as the scheduler reads them."""
        if self._tenants_dirty:
            self._tenants_frozen = MappingProxyType(dict(self._tenants))
            self._tenants_dirty = False
        return self._tenants_frozen

    def tenant_limits_changed(self, tenant_id: str, limits) -> None:
        """A tenant's quota or credit changed: `limits` is its new quota.TenantLimits or
        store.TenantRow (None: the tenant is gone; its jobs run unlimited). The admin
        API calls this (or `reload_tenant`) after CreateTenant, SetQuota and AddCredit;
        the next cycle decides with it. Queued jobs held for the tenant's limits join
        the queue."""
        if limits is None:
            limits = quota.UNLIMITED
        elif not isinstance(limits, quota.TenantLimits):
            limits = quota.TenantLimits.of(limits)
        if self._tenants.get(tenant_id) != limits:
            self._tenants[tenant_id] = limits
            self._tenants_dirty = True
        for job_id in self._tenant_pending.pop(tenant_id, ()):
            job = self.queue.get(job_id)
            if job is not None and job.state is JobState.QUEUED:
                self._enqueue(job)
        self.wake()

    async def reload_tenant(self, tenant_id: str) -> quota.TenantLimits | None:
        """Read the tenant's limits and credit back from the store (after every debit
        queued before the call is committed) and apply them; None for no such tenant."""
        if self.store is None:
            self.tenant_limits_changed(tenant_id, None)
            return None
        limits = await quota_store.load_one(self.store, tenant_id)
        self.tenant_limits_changed(tenant_id, limits)
        return limits

    def _await_tenant(self, job: JobRecord) -> None:
        """Hold a job out of the index until its tenant's limits are loaded (its first
        job since the start, of a tenant created since), so no job runs unlimited."""
        waiting = self._tenant_pending.setdefault(job.tenant_id, [])
        waiting.append(job.job_id)
        job.waiting_reason = "tenant limits loading"
        if len(waiting) > 1:
            return  # already on its way

        async def load() -> None:
            delay = 0.2
            while job.tenant_id in self._tenant_pending:
                try:
                    await self.reload_tenant(job.tenant_id)
                except Exception as exc:  # noqa: BLE001 - the store is down: keep them waiting
                    self.facts.publish(F.FACT_KIND_JOB_WAITING, f"tenant limits not "
                                       f"loaded: {exc}", level=F.FACT_LEVEL_WARNING,
                                       job_id=job.job_id, model_ref=job.model_ref)
                    await asyncio.sleep(delay)
                    delay = min(5.0, delay * 2)
        asyncio.get_running_loop().create_task(load())

    def _dequeue(self, job_id: str) -> JobRecord | None:
        self.index.remove(job_id)
        return self.queue.pop(job_id, None)

    @staticmethod
    def _same_request(job: JobRecord, spec: common_pb2.JobSpec) -> JobRecord:
        if job.spec != spec:
            raise OrchError("IDEMPOTENCY_CONFLICT",
                            "this Idempotency-Key was used for a different request",
                            param="idempotency_key")
        return job

    async def _by_idempotency_key(self, key: str) -> JobRecord | None:
        inserting = self._inserting.get(key)
        if inserting is not None:  # its job is live once the insert is done
            await asyncio.wait([inserting])
        job_id = self.idempotency.get(key)
        if job_id is not None and job_id in self.jobs:
            return self.jobs[job_id]
        if self.store is None:
            return None
        row = await self.store.find_by_idempotency_key(key)
        return await self.get(row.job_id) if row is not None else None

    async def get(self, job_id: str) -> JobRecord:
        """A job by id: live or recently finished from memory, older ones from the store."""
        job = self.jobs.get(job_id)
        if job is None and self.store is not None and len(job_id) <= 64:
            row = await self.store.get_job(job_id)
            if row is not None:
                job = await recovery.finished_record(self, row)
        if job is None:
            raise OrchError("NOT_FOUND", f"no job {job_id!r}", param="job_id")
        return job

    async def cancel(self, job_id: str, error: OrchError | None = None) -> JobRecord:
        """Cancel a job (or expire it, with DEADLINE_EXCEEDED). Idempotent; a finished job
        is returned with its recorded outcome."""
        job = await self.get(job_id)
        if job.done or job.cancel_requested:
            return job
        job.cancel_requested = True
        job.cancel_error = error or OrchError("CANCELLED", "cancelled by the client")
        if job.state is JobState.QUEUED:
            self._finish(job, self._cancel_state(job), job.cancel_error)
            return job
        worker = self.registry.workers.get(job.worker_id)
        if worker is not None and worker.endpoint:
            asyncio.create_task(self._cancel_on_worker(worker, job))
        asyncio.get_running_loop().call_later(self.cfg.orchestrator.cancel_grace_s,
                                              self._cancel_deadline, job)
        return job

    async def _cancel_on_worker(self, worker: WorkerRecord, job: JobRecord) -> None:
        try:
            await worker.stub().Cancel(worker_pb2.CancelRequest(job_id=job.job_id), timeout=2)
        except Exception:  # the grace deadline closes the job whatever the worker does
            pass

    def _cancel_deadline(self, job: JobRecord) -> None:
        if job.done:
            return
        if job.call is not None:
            job.call.cancel()
        self._finish(job, self._cancel_state(job), job.cancel_error)

    @staticmethod
    def _cancel_state(job: JobRecord) -> JobState:
        err = job.cancel_error
        return JobState.FAILED if err is not None and err.code == "DEADLINE_EXCEEDED" else JobState.CANCELLED

    def _finish(self, job: JobRecord, state: JobState, error: OrchError | None = None) -> None:
        """Close a job: its state at once, its row durably, then its final event (so a
        client never sees an outcome the store could lose)."""
        if job.done:
            return
        self._dequeue(job.job_id)
        job.state = state
        job.finished_at = time.time()
        job.error = error
        metrics.FINISHED.labels(component="orchestrator", status=state.value).inc()
        if not job.refused:  # withdrawn while it ran: no record, no fact (_withdraw told)
            self._announce_outcome(job)
        asyncio.ensure_future(self._close(job))

    def _announce_outcome(self, job: JobRecord) -> None:
        """A finished job's usage record (written behind, never blocks) and its fact."""
        usage.job_finished(self, job)
        state, error = job.state, job.error
        kind = {JobState.SUCCEEDED: F.FACT_KIND_JOB_FINISHED, JobState.FAILED: F.FACT_KIND_JOB_FAILED,
                JobState.CANCELLED: F.FACT_KIND_JOB_CANCELLED}[state]
        self.facts.publish(kind, error.message if error else f"finished: {job.finish_reason}",
                           level=F.FACT_LEVEL_WARNING if state is JobState.FAILED else F.FACT_LEVEL_INFO,
                           job_id=job.job_id, worker_id=job.worker_id, pool_id=job.pool_id,
                           model_ref=job.model_ref, correlation_id=job.correlation_id,
                           error_code=error.code if error else None,
                           completion_tokens=job.usage.completion_tokens)

    async def _close(self, job: JobRecord) -> None:
        """Record the outcome, then show it. A failed write is retried with backoff
        until it commits: until then the job's stream waits for its final event, and
        a crash meanwhile finds its old row, so recovery runs it again."""
        delay = CLOSE_RETRY_S
        while True:
            try:
                await self.durability.save(job)
                break
            except StoreClosed:
                return  # shutting down: recovery takes it from its stored state
            except Exception as exc:  # noqa: BLE001 - a store error, retried
                log.emit("orchestrator", "store.write_failed", "could not record the "
                         f"outcome yet, retrying in {delay:g} s: {exc!r}", level="error",
                         job_id=job.job_id)
                await asyncio.sleep(delay)
                delay = min(delay * 2, CLOSE_RETRY_MAX_S)
        if job.error is not None:
            job.append(error=job.error.to_detail(), final=True)
        elif job.pending_end is not None:
            job.append(end=job.pending_end, final=True)
        self._retire(job)

    def _retire(self, job: JobRecord) -> None:
        """Finished jobs stay in memory for a while, then only in the store."""
        self._finished.append(job.job_id)
        while len(self._finished) > FINISHED_IN_MEMORY and self.store is not None:
            old = self.jobs.pop(self._finished.popleft(), None)
            if old is not None and old.idempotency_key:
                self.idempotency.pop(old.idempotency_key, None)

    # ---- the decision loop -------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """This moment's snapshot: the registry's Fleet (kept up to date as records
        change, so this costs O(changes), not O(workers)) with the queue's heads."""
        backoff = {ref: until for ref, (_, until, _) in self._start_failures.items()}
        if not self.cfg.tenancy:
            return assemble(self.index, self.registry.facts(self.pins), time.time(),
                            start_backoff_until=backoff, estimates=self.estimates.snapshot(),
                            advice=self.advice)
        return assemble(self.index, self.registry.facts(self.pins), time.time(),
                        start_backoff_until=backoff, estimates=self.estimates.snapshot(),
                        advice=self.advice, tenancy=True, tenants=self.tenant_limits)

    async def _decision_loop(self) -> None:
        while True:
            await self._wake.wait()
            if time.perf_counter() - self._last_cycle < COALESCE_AFTER_S:
                # Busy: events arrive faster than cycles. Let the ones already due (more
                # submits, more jobs ending) run first, so this cycle serves them all. An
                # isolated wake-up runs at once: time to first token pays nothing.
                await asyncio.sleep(0)
            self._wake.clear()
            try:
                self._cycle()
            except Exception as exc:  # a bug in one cycle must not stop scheduling for good
                self.facts.publish(F.FACT_KIND_DECISION_REJECTED, f"scheduling cycle failed: {exc!r}",
                                   level=F.FACT_LEVEL_ERROR)
                await asyncio.sleep(0.5)
                self.wake()

    def _cycle(self) -> None:
        if not self.queue:
            return
        t0 = time.perf_counter()
        snap = self.snapshot()
        self._wake_at = float("inf")
        if self.policy is not None:
            decisions, problem = decide_with_fallback(self.policy, snap)
            if problem is not None:
                policies.report_problem(self, problem)
        else:
            decisions = scheduler.decide(snap)
        checked = validator.validate(snap, decisions)
        metrics.SCHEDULING_LATENCY.labels(component="orchestrator").observe(
            (time.perf_counter() - t0) * 1000)
        for decision, why in checked:
            metrics.DECISIONS.labels(component="orchestrator", action=type(decision).__name__,
                                     outcome="rejected" if why else "accepted").inc()
            if why:
                self.facts.publish(F.FACT_KIND_DECISION_REJECTED, why,
                                   level=F.FACT_LEVEL_WARNING, decision=repr(decision))
            else:
                self._carry_out(decision)
        # One timer for the earliest retry backoff to expire (not one per waiting model),
        # and a re-check for start backoffs that expire without another event.
        if self._start_failures:
            self._wake_at = min(self._wake_at, time.time() + 1.0)
        if self._wake_at != float("inf"):
            if self._wake_timer is not None:
                self._wake_timer.cancel()
            self._wake_timer = asyncio.get_running_loop().call_later(
                max(0.0, self._wake_at - time.time()), self.wake)
        self._last_cycle = time.perf_counter()

    def expire_deadlines(self) -> None:
        now = time.time()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, job_id = heapq.heappop(self._deadlines)
            job = self.jobs.get(job_id)
            if job is not None and not job.done:
                asyncio.ensure_future(self.cancel(job_id, OrchError(
                    "DEADLINE_EXCEEDED", f"the job did not finish within {job.admitted.deadline_ms} ms")))

    def _carry_out(self, d) -> None:
        if isinstance(d, Dispatch):
            job, worker = self._dequeue(d.job_id), self.registry.workers[d.worker_id]
            job.state, job.worker_id, job.pool_id = JobState.DISPATCHED, worker.worker_id, worker.pool_id
            job.attempts += 1
            job.waiting_reason = ""
            # Unreserved when its relay ends (_run); in platform mode the worker is the
            # job's tenant's until its last job ends (the validator checked it is not
            # another tenant's).
            worker.reserve(job.job_id, job.tenant_id if self.cfg.tenancy else "")
            job.append(dispatched=F.JobDispatched(worker_id=worker.worker_id, pool_id=worker.pool_id,
                                                  attempt=job.attempts))
            self.facts.publish(F.FACT_KIND_JOB_DISPATCHED, d.reason, job_id=job.job_id,
                               worker_id=worker.worker_id, pool_id=worker.pool_id,
                               model_ref=job.model_ref, correlation_id=job.correlation_id,
                               attempt=job.attempts, running=len(worker.jobs), slots=worker.slots)
            self.durability.save_soon(job)
            try:
                call: object = executor.start(job, worker)
            except Exception as exc:  # noqa: BLE001 - _run turns it into the job's outcome
                call = exc
            asyncio.create_task(self._run(job, worker, call))
        elif isinstance(d, StartWorker):
            worker = WorkerRecord("w-" + uuid.uuid4().hex[:12], d.pool_id, d.model_ref,
                                  d.device_ids, d.memory_estimate)
            self.registry.workers[worker.worker_id] = worker
            self.facts.publish(F.FACT_KIND_DECISION_TAKEN, d.reason, worker_id=worker.worker_id,
                               pool_id=d.pool_id, model_ref=d.model_ref, action="start_worker",
                               device_ids=list(d.device_ids))
            asyncio.create_task(self._start_worker(worker))
        elif isinstance(d, StopWorker):
            worker = self.registry.workers[d.worker_id]
            worker.phase = WorkerPhase.STOPPING
            self.facts.publish(F.FACT_KIND_DECISION_TAKEN, d.reason, worker_id=worker.worker_id,
                               pool_id=worker.pool_id, model_ref=worker.model_ref, action="stop_worker")
            asyncio.create_task(self._stop_worker(worker))
        elif isinstance(d, (Preload, EvictModel)):
            self.facts.publish(F.FACT_KIND_DECISION_TAKEN, f"{d.reason} (not carried out: pools "
                               "do not preload or evict model files yet)", pool_id=d.pool_id,
                               model_ref=d.model_ref, action=type(d).__name__.lower())
        elif isinstance(d, Wait):
            job = self.queue.get(d.job_id)
            if job is not None and job.waiting_reason != d.reason:
                job.waiting_reason = d.reason
                self.facts.publish(F.FACT_KIND_JOB_WAITING, d.reason, job_id=job.job_id,
                                   model_ref=job.model_ref, level=F.FACT_LEVEL_DEBUG,
                                   waiting_jobs=d.jobs)
            if d.until:
                self._wake_at = min(self._wake_at, d.until)
            elif d.reason in _CAPACITY_REASONS:
                # Memory freed outside our own commands (or a worker's exit the last
                # heartbeat did not show yet) arrives with a heartbeat, which does not
                # wake the loop: look again after one.
                self._wake_at = min(self._wake_at, time.time() + self.cfg.pool.heartbeat_ms / 1000)

    async def _stop_worker(self, worker: WorkerRecord) -> None:
        pool = self.registry.pools.get(worker.pool_id)
        result = await pool.command(stop_worker=pool_link_pb2.StopWorkerCommand(
            worker_id=worker.worker_id)) if pool else None
        if result is None or not result.ok:
            # Already gone, or the pool went away: either way it holds nothing any more.
            self.worker_gone(worker.worker_id, None)

    async def _run(self, job: JobRecord, worker: WorkerRecord, call: object) -> None:
        """Relay the dispatched job's `call` (executor.start's, or the exception it
        raised) to its end, then settle the job and free the worker's slot."""
        outcome = executor.Outcome()

        def started(_ev) -> None:
            job.state, job.started_at = JobState.RUNNING, time.time()
            self.facts.publish(F.FACT_KIND_JOB_STARTED, "", job_id=job.job_id,
                               worker_id=worker.worker_id, model_ref=job.model_ref,
                               correlation_id=job.correlation_id)
        try:
            if isinstance(call, Exception):
                raise call
            await executor.relay(job, worker, call, outcome, started)
        except Exception as exc:  # a bug here must not wedge the worker or the job
            outcome.error = OrchError("INTERNAL", f"relay failed: {exc!r}")
        worker.unreserve(job.job_id)
        if (outcome.error is not None and outcome.error.code == "WORKER_CRASHED"
                and worker.phase in (WorkerPhase.READY, WorkerPhase.BUSY)):
            # No more jobs for it. Jobs still in its other slots run on if it is alive;
            # if it died, their streams break too and each is retried (below).
            worker.phase = WorkerPhase.STOPPING
        metrics.DISPATCHES.labels(component="orchestrator", outcome="ended" if outcome.ended else (
            outcome.error.code if outcome.error else "unknown")).inc()
        if outcome.ended:
            self.estimates.job_finished(job.model_ref, worker.worker_id, job.usage.completion_tokens,
                                        max(1e-3, time.time() - (job.started_at or time.time())))
            self._finish(job, JobState.SUCCEEDED)
        elif job.cancel_requested:
            self._finish(job, self._cancel_state(job), job.cancel_error)
        elif outcome.error is not None and self.retry.should_retry(job.attempts, outcome.error.retryable):
            self._requeue(job, outcome.error)
        else:
            err = outcome.error or OrchError("INTERNAL", "the job ended without a result")
            if err.retryable:
                err = OrchError("RETRIES_EXHAUSTED", f"gave up after {job.attempts} attempts; "
                                f"last error {err.code}: {err.message}")
            self._finish(job, JobState.FAILED, err)
        if job.done and not job.refused:  # its last attempt: its tokens draw on its credit
            quota.charge(self, job)
        self.wake()

    def _requeue(self, job: JobRecord, cause: OrchError) -> None:
        """Put a failed attempt back in the queue after a jittered backoff (same seed)."""
        delay = self.retry.delay(job.attempts)
        job.state, job.worker_id, job.pool_id = JobState.QUEUED, "", ""
        job.not_before = time.time() + delay
        job.waiting_reason = "retry backoff"
        self._enqueue(job)
        job.append(retrying=F.JobRetrying(attempt=job.attempts + 1, backoff_ms=int(delay * 1000),
                                          cause=cause.to_detail()))
        self.durability.save_soon(job)
        metrics.RETRIES.labels(component="orchestrator", code=cause.code).inc()
        self.facts.publish(F.FACT_KIND_JOB_RETRYING, f"{cause.code}: {cause.message}",
                           level=F.FACT_LEVEL_WARNING, job_id=job.job_id, model_ref=job.model_ref,
                           correlation_id=job.correlation_id, attempt=job.attempts + 1,
                           backoff_ms=int(delay * 1000), cause=cause.code)
        asyncio.get_running_loop().call_later(delay, self.wake)

    async def _start_worker(self, worker: WorkerRecord, options: dict[str, str] | None = None,
                            *, by_operator: bool = False) -> OrchError | None:
        """Command the start: ONE worker process over the whole mask (tensor parallelism).
        Returns the pool's refusal, if any. A refused start counts toward the model's
        start backoff unless an operator asked for it (the refusal is then about the
        devices they chose, not the model)."""
        pool = self.registry.pools.get(worker.pool_id)
        model = self.catalog.by_ref(worker.model_ref)
        cmd = pool_link_pb2.StartWorkerCommand(
            worker_id=worker.worker_id, model_ref=worker.model_ref,
            engine=model.engine if model else "hf", device_ids=list(worker.device_ids),
            engine_options={**(model.engine_options if model else {}), **(options or {})},
            memory_estimate_bytes=worker.memory_estimate)
        self.facts.publish(F.FACT_KIND_WORKER_STARTING, "start commanded", worker_id=worker.worker_id,
                           pool_id=worker.pool_id, model_ref=worker.model_ref,
                           device_ids=list(worker.device_ids),
                           memory_estimate_bytes=float(worker.memory_estimate))
        result = await pool.command(start_worker=cmd) if pool else None
        if result is not None and result.ok:
            return None
        err = OrchError.from_detail(result.error) if result else OrchError(
            "POOL_UNAVAILABLE", "pool went away")
        self.worker_gone(worker.worker_id, err, start_failed=True, back_off=not by_operator)
        return err

    # ---- facts from pools ----------------------------------------------------------------

    def pool_joined(self, pool: PoolRecord, workers=()) -> None:
        old = self.registry.pools.get(pool.pool_id)
        if old is not None:
            self.pool_lost(old, "replaced by a new link")
        self.registry.pools[pool.pool_id] = pool
        for info in workers:
            self._adopt(pool.pool_id, info)
        self.facts.publish(F.FACT_KIND_POOL_JOINED, f"{len(pool.inventory.devices)} devices",
                           pool_id=pool.pool_id, nvml_status=pool.inventory.nvml_status,
                           devices=[d.id for d in pool.inventory.devices])
        self.optimize_now.set()
        self.wake()

    def pool_lost(self, pool: PoolRecord, reason: str) -> None:
        if self.registry.pools.get(pool.pool_id) is not pool or not pool.available:
            return
        pool.available = False
        pool.fail_pending(reason)
        del self.registry.pools[pool.pool_id]
        self.preloads = {k for k in self.preloads if k[0] != pool.pool_id}
        self.facts.publish(F.FACT_KIND_POOL_LOST, reason, pool_id=pool.pool_id,
                           level=F.FACT_LEVEL_WARNING)
        for w in self.registry.workers_of(pool.pool_id):
            self.worker_gone(w.worker_id, OrchError("POOL_UNAVAILABLE", reason))
        self.optimize_now.set()
        self.wake()

    def _adopt(self, pool_id: str, info: common_pb2.WorkerInfo) -> WorkerRecord | None:
        """Take over a worker a pool reports (after an orchestrator or link restart)."""
        if info.worker_id in self.registry.workers:
            return self.registry.workers[info.worker_id]
        model = self.catalog.by_ref(info.model_ref)
        w = WorkerRecord(info.worker_id, pool_id, info.model_ref, tuple(info.device_ids),
                         model.memory_estimate_bytes if model else 0)
        w.pid = info.pid  # device memory is attributed to our workers by pid (registry)
        self.registry.workers[w.worker_id] = w
        if info.state in (common_pb2.WORKER_STATE_READY, common_pb2.WORKER_STATE_BUSY) \
                and info.endpoint:
            # Jobs it ran for an earlier link are not ours: their calls ended with that
            # link, which frees their slots on the worker.
            w.phase, w.endpoint, w.slots = WorkerPhase.READY, info.endpoint, max(1, info.slots)
            w.device_bytes = dict(info.device_bytes)
            w.engine, w.engine_version, w.model_digest = info.engine, info.engine_version, info.model_digest
        self.facts.publish(F.FACT_KIND_WORKER_READY if w.phase is WorkerPhase.READY
                           else F.FACT_KIND_WORKER_STARTING, "adopted from the pool",
                           worker_id=w.worker_id, pool_id=pool_id, model_ref=w.model_ref,
                           endpoint=w.endpoint or None, adopted=True)
        return w

    def worker_ready(self, pool_id: str, info: common_pb2.WorkerInfo, load_ms: int) -> None:
        w = self.registry.workers.get(info.worker_id)
        if w is None and pool_id in self.registry.pools:
            w = self._adopt(pool_id, common_pb2.WorkerInfo(
                worker_id=info.worker_id, model_ref=info.model_ref, device_ids=info.device_ids,
                state=common_pb2.WORKER_STATE_STARTING))
        if w is None or w.pool_id != pool_id:
            return
        w.phase, w.endpoint, w.pid = WorkerPhase.READY, info.endpoint, info.pid
        w.slots = max(1, info.slots)  # 0: a pool that does not report slots
        if len(w.jobs) >= w.slots:  # a repeated report while it runs jobs
            w.phase = WorkerPhase.BUSY
        w.device_bytes = dict(info.device_bytes)
        w.engine, w.engine_version, w.model_digest = info.engine, info.engine_version, info.model_digest
        w.last_used = time.time()
        self.estimates.worker_started(w.model_ref, max(0.0, w.last_used - w.started_at))
        self._start_failures.pop(w.model_ref, None)
        self.facts.publish(F.FACT_KIND_WORKER_READY, f"ready in {load_ms} ms", worker_id=w.worker_id,
                           pool_id=pool_id, model_ref=w.model_ref, endpoint=w.endpoint, pid=w.pid,
                           device_bytes={k: float(v) for k, v in w.device_bytes.items()},
                           load_ms=load_ms, slots=w.slots, engine=w.engine or None,
                           engine_version=w.engine_version or None)
        self.wake()

    def worker_gone(self, worker_id: str, error: OrchError | None, *, start_failed: bool = False,
                    back_off: bool = True, **details) -> None:
        w = self.registry.workers.pop(worker_id, None)
        if w is None:
            return
        was_starting = w.phase is WorkerPhase.STARTING
        w.phase = WorkerPhase.GONE
        self.estimates.worker_gone(worker_id)
        asyncio.create_task(w.close())
        if error is None:
            self.facts.publish(F.FACT_KIND_WORKER_STOPPED, "stopped", worker_id=worker_id,
                               pool_id=w.pool_id, model_ref=w.model_ref, **details)
        else:
            self.facts.publish(F.FACT_KIND_WORKER_FAILED, error.message, level=F.FACT_LEVEL_ERROR,
                               worker_id=worker_id, pool_id=w.pool_id, model_ref=w.model_ref,
                               error_code=error.code, **details)
        if back_off and (start_failed or was_starting) and error is not None:
            self._start_failed(w.model_ref, error)
        for job_id in sorted(w.jobs):  # every job in its slots
            job = self.jobs.get(job_id)
            if job is not None and not job.done and job.call is not None:
                job.call.cancel()  # the relay reports WORKER_CRASHED for it (and retries)
        self.wake()

    def _start_failed(self, model_ref: str, error: OrchError) -> None:
        count = self._start_failures.get(model_ref, (0, 0.0, ""))[0] + 1
        self._start_failures[model_ref] = (count, time.time() + min(60.0, 2.0 ** count), error.message)
        if count < MAX_START_FAILURES:
            return
        self._start_failures.pop(model_ref, None)
        for job in [j for j in list(self.queue.values()) if j.model_ref == model_ref]:
            self._finish(job, JobState.FAILED, OrchError(
                "WORKER_START_FAILED", f"no worker could start for {model_ref}: {error.message}"))
