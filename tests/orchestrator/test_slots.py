"""Multi-slot workers in-process: the decision loop against a fake worker with N slots.

The fake worker (a real gRPC server on loopback) holds each job until the test lets it
end, crash or be cancelled, and refuses WORKER_BUSY beyond its slots, as the real one
does, so an over-dispatch would show up as a refusal.
"""

import asyncio

import grpc
import pytest

from common.config import Config
from common.errors import OrchError
from llama_orch.v1 import common_pb2 as C, errors_pb2, events_pb2 as E, worker_pb2, worker_pb2_grpc
from orchestrator.core import Orchestrator
from orchestrator.scheduler import Reason
from orchestrator.types import JobState, WorkerPhase
from tests.orchestrator.scripted_pool import ScriptedPool


class FakeWorker(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(self, slots: int):
        self.slots = slots
        self.gates: dict[str, asyncio.Future] = {}  # running job -> how it should end
        self.most = 0  # most jobs running at once
        self.refused: list[str] = []
        self.cancelled: list[str] = []
        self.port = 0
        self._server: grpc.aio.Server | None = None

    async def start(self) -> "FakeWorker":
        self._server = grpc.aio.server()
        worker_pb2_grpc.add_WorkerServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return self

    async def stop(self) -> None:
        await self._server.stop(0)

    async def Execute(self, request, context):
        if len(self.gates) >= self.slots:
            self.refused.append(request.job_id)
            await OrchError("WORKER_BUSY", "all slots taken").abort(context)
        gate = self.gates[request.job_id] = asyncio.get_running_loop().create_future()
        self.most = max(self.most, len(self.gates))
        try:
            yield worker_pb2.ExecuteResponse(started=E.JobStarted(prompt_tokens=2))
            how = await gate
            self.gates.pop(request.job_id, None)  # freed before the terminal event, as the worker does
            if how == "crash":
                await context.abort(grpc.StatusCode.UNAVAILABLE, "stream broke")
            elif how == "cancel":
                yield worker_pb2.ExecuteResponse(error=OrchError("CANCELLED", "cancelled").to_detail())
            else:
                yield worker_pb2.ExecuteResponse(end=E.JobEnd(
                    finish_reason="stop", usage=C.Usage(prompt_tokens=2, completion_tokens=1)))
        finally:
            self.gates.pop(request.job_id, None)

    async def Cancel(self, request, context):
        gate = self.gates.get(request.job_id)
        if gate is not None and not gate.done():
            self.cancelled.append(request.job_id)
            gate.set_result("cancel")
        return worker_pb2.CancelResponse(was_running=gate is not None)

    def end(self, job_id: str, how: str = "end") -> None:
        self.gates[job_id].set_result(how)


async def until(cond, timeout: float = 5.0) -> None:
    async def wait():
        while not cond():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(wait(), timeout)


@pytest.fixture
async def orch():
    cfg = Config()
    cfg.pool.heartbeat_ms = 200
    cfg.orchestrator.missed_heartbeats = 1000  # scripted pools send no heartbeats
    cfg.orchestrator.retry_initial_s = 0.05
    o = Orchestrator(cfg)
    await o.start()
    # The pool offers no engine the model needs: nothing is started, only the fake
    # workers the tests announce serve.
    ScriptedPool(o, "p", ["sim-0", "sim-1"])
    fakes: list[FakeWorker] = []

    async def announce(worker_id: str, slots: int, device: str = "sim-0") -> FakeWorker:
        fake = await FakeWorker(slots).start()
        fakes.append(fake)
        o.worker_ready("p", C.WorkerInfo(
            worker_id=worker_id, model_ref=o.catalog.resolve("tiny").ref, device_ids=[device],
            endpoint=f"127.0.0.1:{fake.port}", state=C.WORKER_STATE_READY, slots=slots), 0)
        return fake
    o.announce = announce
    yield o
    await o.stop()
    for fake in fakes:
        await fake.stop()


async def submit(orch, n):
    return [(await orch.submit(C.JobSpec(model="tiny", prompt=f"the fox {i}")))[0] for i in range(n)]


async def test_a_worker_runs_up_to_its_slots_and_a_finished_job_frees_one(orch):
    fake = await orch.announce("w1", slots=4)
    w = orch.registry.workers["w1"]
    jobs = await submit(orch, 6)
    await until(lambda: len(fake.gates) == 4)
    await asyncio.sleep(0.2)  # a fifth is not sent
    assert (len(fake.gates), w.phase, len(w.jobs), w.to_proto().active_jobs) == (4, WorkerPhase.BUSY, 4, 4)
    waiting = [j for j in jobs if j.state is JobState.QUEUED]
    assert len(waiting) == 2 and waiting[0].waiting_reason == Reason.BUSY  # one Wait per model
    first = next(iter(fake.gates))
    fake.end(first)
    await until(lambda: orch.jobs[first].state is JobState.SUCCEEDED and len(fake.gates) == 4)
    assert sum(j.state is JobState.QUEUED for j in jobs) == 1
    while any(not j.done for j in jobs):
        for job_id in list(fake.gates):
            fake.end(job_id)
        await asyncio.sleep(0.02)
    assert all(j.state is JobState.SUCCEEDED and j.attempts == 1 for j in jobs)
    assert (fake.most, fake.refused) == (4, [])
    assert (w.phase, w.jobs, w.idle) == (WorkerPhase.READY, set(), True)


async def test_a_crash_of_one_job_stops_the_worker_and_its_other_jobs_fail_over(orch):
    fake = await orch.announce("w1", slots=4)
    w = orch.registry.workers["w1"]
    jobs = await submit(orch, 3)
    await until(lambda: len(fake.gates) == 3)
    crashed, *others = jobs
    fake.end(crashed.job_id, "crash")
    await until(lambda: crashed.attempts == 1 and crashed.state is JobState.QUEUED)
    # No job goes to a worker one of whose jobs crashed; the others run on there.
    assert w.phase is WorkerPhase.STOPPING and w.jobs == {j.job_id for j in others}
    # The pool then reports the process gone: its other jobs are retried.
    orch.worker_gone("w1", OrchError("WORKER_CRASHED", "exited with status 13"))
    await until(lambda: all(j.state is JobState.QUEUED for j in jobs))
    retried = [e.retrying.cause.code for j in jobs for e in j.events if e.WhichOneof("kind") == "retrying"]
    assert retried == [errors_pb2.ERROR_CODE_WORKER_CRASHED] * 3
    fake2 = await orch.announce("w2", slots=4, device="sim-1")
    await until(lambda: len(fake2.gates) == 3)
    for job_id in list(fake2.gates):
        fake2.end(job_id)
    await until(lambda: all(j.done for j in jobs))
    assert all(j.state is JobState.SUCCEEDED and j.attempts == 2 and j.worker_id == "w2" for j in jobs)
    assert fake.refused == fake2.refused == []


async def test_cancel_reaches_only_the_jobs_own_slot(orch):
    fake = await orch.announce("w1", slots=4)
    w = orch.registry.workers["w1"]
    jobs = await submit(orch, 3)
    await until(lambda: len(fake.gates) == 3)
    victim = jobs[1]
    await orch.cancel(victim.job_id)
    await until(lambda: victim.done)
    assert victim.state is JobState.CANCELLED and fake.cancelled == [victim.job_id]
    assert w.jobs == {jobs[0].job_id, jobs[2].job_id} and w.free_slots == 2
    for job_id in list(fake.gates):
        fake.end(job_id)
    await until(lambda: jobs[0].done and jobs[2].done)
    assert jobs[0].state is jobs[2].state is JobState.SUCCEEDED and w.idle


async def test_single_slot_workers_keep_one_job_each(orch):
    fake = await orch.announce("w1", slots=1)
    jobs = await submit(orch, 2)
    await until(lambda: len(fake.gates) == 1)
    await asyncio.sleep(0.2)
    assert orch.registry.workers["w1"].phase is WorkerPhase.BUSY and len(fake.gates) == 1
    for _ in range(2):
        await until(lambda: len(fake.gates) == 1)
        fake.end(next(iter(fake.gates)))
    await until(lambda: all(j.done for j in jobs))
    assert fake.most == 1 and fake.refused == []


async def test_a_worker_a_pool_reports_on_joining_is_adopted_with_its_slots(orch):
    from orchestrator.registry import PoolRecord
    info = C.WorkerInfo(worker_id="wa", model_ref=orch.catalog.resolve("tiny").ref, device_ids=["d0"],
                        state=C.WORKER_STATE_BUSY, endpoint="127.0.0.1:9", slots=8, active_jobs=8)
    orch.pool_joined(PoolRecord("p2", C.Inventory(engines=["sim"])), [info])
    w = orch.registry.workers["wa"]
    # Its jobs belonged to an earlier link and ended with it: every slot is ours again.
    assert (w.phase, w.slots, w.jobs, w.free_slots) == (WorkerPhase.READY, 8, set(), 8)
