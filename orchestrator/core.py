"""The Orchestrator: admission, the job table, the decision loop and pool facts.

One asyncio task (the decision loop) owns scheduling: it takes a frozen snapshot,
asks the policy for decisions, validates them and carries them out. Everything else
(RPC handlers, pool links, executors) changes records and wakes the loop.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from common.config import Config
from common.errors import OrchError
from llama_orch.v1 import common_pb2, events_pb2, pool_link_pb2, worker_pb2
from orchestrator import admission, executor, scheduler, validator
from orchestrator.catalog import Catalog
from orchestrator.facts import FactBus
from orchestrator.jobs import JobRecord, new_job_id
from orchestrator.registry import PoolRecord, Registry, WorkerRecord
from orchestrator.snapshot import Dispatch, JobView, Snapshot, StartWorker, Wait
from orchestrator.types import JobState, WorkerPhase

F = events_pb2
MAX_START_FAILURES = 3


class Orchestrator:
    def __init__(self, cfg: Config, catalog: Catalog | None = None, facts: FactBus | None = None):
        self.cfg = cfg
        self.catalog = catalog or Catalog.from_config(cfg.models)
        self.facts = facts or FactBus()
        self.registry = Registry()
        self.jobs: dict[str, JobRecord] = {}
        self.queue: dict[str, JobRecord] = {}  # queued jobs by id, in admission order
        self.idempotency: dict[str, str] = {}
        self._order = 0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._start_failures: dict[str, tuple[int, float, str]] = {}

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._decision_loop(), name="decision-loop"),
                       asyncio.create_task(self._watchdog(), name="watchdog")]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for w in self.registry.workers.values():
            await w.close()

    def wake(self) -> None:
        self._wake.set()

    # ---- jobs --------------------------------------------------------------------------

    def submit(self, spec: common_pb2.JobSpec, *, idempotency_key: str = "",
               correlation_id: str = "") -> tuple[JobRecord, bool]:
        if idempotency_key and idempotency_key in self.idempotency:
            job = self.jobs[self.idempotency[idempotency_key]]
            if job.spec != spec:
                raise OrchError("IDEMPOTENCY_CONFLICT",
                                "this Idempotency-Key was used for a different request",
                                param="idempotency_key")
            return job, True
        admitted = admission.admit(spec, self.catalog, self.cfg.orchestrator)
        self._order += 1
        job = JobRecord(new_job_id(), spec, admitted, correlation_id=correlation_id,
                        idempotency_key=idempotency_key, order=self._order)
        self.jobs[job.job_id] = job
        if idempotency_key:
            self.idempotency[idempotency_key] = job.job_id
        self.queue[job.job_id] = job
        job.append(queued=F.JobQueued(priority=spec.priority or common_pb2.PRIORITY_INTERACTIVE))
        self.facts.publish(F.FACT_KIND_JOB_ADMITTED, f"admitted for {admitted.model.name}",
                           job_id=job.job_id, model_ref=job.model_ref,
                           correlation_id=correlation_id, priority=admitted.priority.name.lower(),
                           prompt_tokens=len(admitted.prompt_ids), seed=str(admitted.seed))
        self.wake()
        return job, False

    def get(self, job_id: str) -> JobRecord:
        job = self.jobs.get(job_id)
        if job is None:
            raise OrchError("NOT_FOUND", f"no job {job_id!r}", param="job_id")
        return job

    async def cancel(self, job_id: str) -> JobRecord:
        job = self.get(job_id)
        if job.done or job.cancel_requested:
            return job
        job.cancel_requested = True
        if job.state is JobState.QUEUED:
            self._finish(job, JobState.CANCELLED, OrchError("CANCELLED", "cancelled by the client"))
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
        self._finish(job, JobState.CANCELLED,
                     OrchError("CANCELLED", "cancelled; the worker did not confirm in time"))

    def _finish(self, job: JobRecord, state: JobState, error: OrchError | None = None) -> None:
        if job.done:
            return
        self.queue.pop(job.job_id, None)
        job.state = state
        job.finished_at = time.time()
        job.error = error
        if error is not None:
            job.append(error=error.to_detail(), final=True)
        kind = {JobState.SUCCEEDED: F.FACT_KIND_JOB_FINISHED, JobState.FAILED: F.FACT_KIND_JOB_FAILED,
                JobState.CANCELLED: F.FACT_KIND_JOB_CANCELLED}[state]
        self.facts.publish(kind, error.message if error else f"finished: {job.finish_reason}",
                           level=F.FACT_LEVEL_WARNING if state is JobState.FAILED else F.FACT_LEVEL_INFO,
                           job_id=job.job_id, worker_id=job.worker_id, pool_id=job.pool_id,
                           model_ref=job.model_ref, correlation_id=job.correlation_id,
                           error_code=error.code if error else None,
                           completion_tokens=job.usage.completion_tokens)

    # ---- the decision loop -------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        jobs = tuple(JobView(j.job_id, j.model_ref, j.priority, j.order,
                             j.admitted.model.memory_estimate_bytes)
                     for j in self.queue.values())
        pools = tuple(self.registry.pool_view(p) for p in self.registry.pools.values())
        backoff = tuple((ref, until) for ref, (_, until, _) in self._start_failures.items())
        return Snapshot(jobs, self.registry.worker_views(), pools, time.time(), backoff)

    async def _decision_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            snap = self.snapshot()
            if not snap.jobs:
                continue
            for decision, why in validator.validate(snap, scheduler.decide(snap)):
                if why:
                    self.facts.publish(F.FACT_KIND_DECISION_REJECTED, why,
                                       level=F.FACT_LEVEL_WARNING, decision=repr(decision))
                else:
                    self._carry_out(decision)
            # Re-check soon for start backoffs that expire without another event.
            if self._start_failures:
                asyncio.get_running_loop().call_later(1.0, self.wake)

    def _carry_out(self, d) -> None:
        if isinstance(d, Dispatch):
            job, worker = self.queue.pop(d.job_id), self.registry.workers[d.worker_id]
            job.state, job.worker_id, job.pool_id = JobState.DISPATCHED, worker.worker_id, worker.pool_id
            job.attempts += 1
            job.waiting_reason = ""
            worker.phase, worker.job_id = WorkerPhase.BUSY, job.job_id
            job.append(dispatched=F.JobDispatched(worker_id=worker.worker_id, pool_id=worker.pool_id,
                                                  attempt=job.attempts))
            self.facts.publish(F.FACT_KIND_JOB_DISPATCHED, d.reason, job_id=job.job_id,
                               worker_id=worker.worker_id, pool_id=worker.pool_id,
                               model_ref=job.model_ref, correlation_id=job.correlation_id,
                               attempt=job.attempts)
            asyncio.create_task(self._run(job, worker))
        elif isinstance(d, StartWorker):
            worker = WorkerRecord("w-" + uuid.uuid4().hex[:12], d.pool_id, d.model_ref,
                                  d.device_ids, d.memory_estimate)
            self.registry.workers[worker.worker_id] = worker
            self.facts.publish(F.FACT_KIND_DECISION_TAKEN, d.reason, worker_id=worker.worker_id,
                               pool_id=d.pool_id, model_ref=d.model_ref, action="start_worker",
                               device_ids=list(d.device_ids))
            asyncio.create_task(self._start_worker(worker))
        elif isinstance(d, Wait):
            job = self.queue.get(d.job_id)
            if job is not None and job.waiting_reason != d.reason:
                job.waiting_reason = d.reason
                self.facts.publish(F.FACT_KIND_JOB_WAITING, d.reason, job_id=job.job_id,
                                   model_ref=job.model_ref, level=F.FACT_LEVEL_DEBUG)

    async def _run(self, job: JobRecord, worker: WorkerRecord) -> None:
        outcome = executor.Outcome()

        def started(_ev) -> None:
            job.state, job.started_at = JobState.RUNNING, time.time()
            self.facts.publish(F.FACT_KIND_JOB_STARTED, "", job_id=job.job_id,
                               worker_id=worker.worker_id, model_ref=job.model_ref,
                               correlation_id=job.correlation_id)
        try:
            await executor.relay(job, worker, outcome, started)
        except Exception as exc:  # a bug here must not wedge the worker or the job
            outcome.error = OrchError("INTERNAL", f"relay failed: {exc!r}")
        if worker.phase is WorkerPhase.BUSY:
            crashed = outcome.error is not None and outcome.error.code == "WORKER_CRASHED"
            worker.phase = WorkerPhase.STOPPING if crashed else WorkerPhase.READY
        worker.job_id, worker.last_used = "", time.time()
        if outcome.ended:
            self._finish(job, JobState.SUCCEEDED)
        elif job.cancel_requested:
            self._finish(job, JobState.CANCELLED, OrchError("CANCELLED", "cancelled by the client"))
        else:
            self._finish(job, JobState.FAILED, outcome.error)
        self.wake()

    async def _start_worker(self, worker: WorkerRecord) -> None:
        pool = self.registry.pools.get(worker.pool_id)
        model = self.catalog.by_ref(worker.model_ref)
        cmd = pool_link_pb2.StartWorkerCommand(
            worker_id=worker.worker_id, model_ref=worker.model_ref,
            engine=model.engine if model else "hf", device_ids=list(worker.device_ids),
            memory_estimate_bytes=worker.memory_estimate)
        self.facts.publish(F.FACT_KIND_WORKER_STARTING, "start commanded", worker_id=worker.worker_id,
                           pool_id=worker.pool_id, model_ref=worker.model_ref,
                           device_ids=list(worker.device_ids))
        result = await pool.command(start_worker=cmd) if pool else None
        if result is None or not result.ok:
            err = OrchError.from_detail(result.error) if result else OrchError(
                "POOL_UNAVAILABLE", "pool went away")
            self.worker_gone(worker.worker_id, err, start_failed=True)

    # ---- facts from pools ----------------------------------------------------------------

    def pool_joined(self, pool: PoolRecord) -> None:
        old = self.registry.pools.get(pool.pool_id)
        if old is not None:
            self.pool_lost(old, "replaced by a new link")
        self.registry.pools[pool.pool_id] = pool
        self.facts.publish(F.FACT_KIND_POOL_JOINED, f"{len(pool.inventory.devices)} devices",
                           pool_id=pool.pool_id, nvml_status=pool.inventory.nvml_status,
                           devices=[d.id for d in pool.inventory.devices])
        self.wake()

    def pool_lost(self, pool: PoolRecord, reason: str) -> None:
        if self.registry.pools.get(pool.pool_id) is not pool or not pool.available:
            return
        pool.available = False
        pool.fail_pending(reason)
        del self.registry.pools[pool.pool_id]
        self.facts.publish(F.FACT_KIND_POOL_LOST, reason, pool_id=pool.pool_id,
                           level=F.FACT_LEVEL_WARNING)
        for w in self.registry.workers_of(pool.pool_id):
            self.worker_gone(w.worker_id, OrchError("POOL_UNAVAILABLE", reason))
        self.wake()

    def worker_ready(self, pool_id: str, info: common_pb2.WorkerInfo, load_ms: int) -> None:
        w = self.registry.workers.get(info.worker_id)
        if w is None or w.pool_id != pool_id:
            return  # not ours (or a stale report); the pool is told to stop it elsewhere
        w.phase, w.endpoint, w.pid = WorkerPhase.READY, info.endpoint, info.pid
        w.device_bytes = dict(info.device_bytes)
        w.engine, w.engine_version, w.model_digest = info.engine, info.engine_version, info.model_digest
        w.last_used = time.time()
        self._start_failures.pop(w.model_ref, None)
        self.facts.publish(F.FACT_KIND_WORKER_READY, f"ready in {load_ms} ms", worker_id=w.worker_id,
                           pool_id=pool_id, model_ref=w.model_ref, endpoint=w.endpoint, pid=w.pid,
                           device_bytes={k: float(v) for k, v in w.device_bytes.items()},
                           load_ms=load_ms)
        self.wake()

    def worker_gone(self, worker_id: str, error: OrchError | None, *, start_failed: bool = False,
                    **details) -> None:
        w = self.registry.workers.pop(worker_id, None)
        if w is None:
            return
        was_starting = w.phase is WorkerPhase.STARTING
        w.phase = WorkerPhase.GONE
        asyncio.create_task(w.close())
        if error is None:
            self.facts.publish(F.FACT_KIND_WORKER_STOPPED, "stopped", worker_id=worker_id,
                               pool_id=w.pool_id, model_ref=w.model_ref, **details)
        else:
            self.facts.publish(F.FACT_KIND_WORKER_FAILED, error.message, level=F.FACT_LEVEL_ERROR,
                               worker_id=worker_id, pool_id=w.pool_id, model_ref=w.model_ref,
                               error_code=error.code, **details)
        if (start_failed or was_starting) and error is not None:
            self._start_failed(w.model_ref, error)
        job = self.jobs.get(w.job_id) if w.job_id else None
        if job is not None and not job.done and job.call is not None:
            job.call.cancel()  # the relay reports WORKER_CRASHED for it
        self.wake()

    def _start_failed(self, model_ref: str, error: OrchError) -> None:
        count = self._start_failures.get(model_ref, (0, 0.0, ""))[0] + 1
        self._start_failures[model_ref] = (count, time.time() + min(60.0, 2.0 ** count), error.message)
        if count < MAX_START_FAILURES:
            return
        self._start_failures.pop(model_ref, None)
        for job in [j for j in self.queue.values() if j.model_ref == model_ref]:
            self._finish(job, JobState.FAILED, OrchError(
                "WORKER_START_FAILED", f"no worker could start for {model_ref}: {error.message}"))

    async def _watchdog(self) -> None:
        """Marks pools lost after missed heartbeats and gives up on stuck starts."""
        cfg = self.cfg.orchestrator
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for pool in list(self.registry.pools.values()):
                limit = cfg.missed_heartbeats * self.cfg.pool.heartbeat_ms / 1000
                if now - pool.last_heartbeat > limit:
                    self.pool_lost(pool, f"no heartbeat for {now - pool.last_heartbeat:.1f} s")
            for w in list(self.registry.workers.values()):
                if w.phase is WorkerPhase.STARTING and time.time() - w.started_at > cfg.worker_start_timeout_s:
                    pool = self.registry.pools.get(w.pool_id)
                    if pool is not None:
                                        asyncio.create_task(pool.command(stop_worker=pool_link_pb2.StopWorkerCommand(
                            worker_id=w.worker_id, force=True)))
                    self.worker_gone(w.worker_id, OrchError(
                        "WORKER_START_FAILED", f"not ready after {cfg.worker_start_timeout_s:.0f} s"),
                        start_failed=True)
