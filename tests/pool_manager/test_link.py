"""The pool link against a stand-in orchestrator: heartbeats outlive a failed
inventory, and worker exits and command results are not lost across reconnects."""

import asyncio
import socket

import grpc
import pytest

from common.config import PoolConfig
from llama_orch.v1 import pool_link_pb2 as L, pool_link_pb2_grpc
from pool_manager import inventory
from pool_manager.link import PoolLink


class FakeSupervisor:
    def __init__(self):
        self.workers = {}

    def devices_in_use(self):
        return set()


class Orch(pool_link_pb2_grpc.PoolLinkServiceServicer):
    """Accepts every pool and records what each session received. With `end_first`,
    it ends the first session right after accepting it."""

    def __init__(self, end_first=False, heartbeat_ms=600_000):
        self.sessions: list[list[L.ConnectRequest]] = []
        self.end_first = end_first
        self.heartbeat_ms = heartbeat_ms

    async def Connect(self, request_iterator, context):
        got = []
        self.sessions.append(got)
        got.append(await request_iterator.__anext__())
        yield L.ConnectResponse(accepted=L.RegistrationAccepted(
            pool_id="p", heartbeat_interval_ms=self.heartbeat_ms))
        if self.end_first and len(self.sessions) == 1:
            return
        async for msg in request_iterator:
            got.append(msg)

    def received(self, kind):
        return [m for s in self.sessions for m in s if m.WhichOneof("message") == kind]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def serve(port, orch):
    srv = grpc.aio.server()
    pool_link_pb2_grpc.add_PoolLinkServiceServicer_to_server(orch, srv)
    srv.add_insecure_port(f"127.0.0.1:{port}")
    await srv.start()
    return srv


async def wait_for(pred, timeout=10):
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.05)


def link(port, **cfg):
    return PoolLink(PoolConfig(id="p", orchestrator=f"127.0.0.1:{port}", **cfg),
                    FakeSupervisor(), inventory.Nvml("test"), ["sim"], "127.0.0.1:1")


def exited(worker_id):
    return L.WorkerExited(worker_id=worker_id, exit_code=1)


async def test_messages_after_the_orchestrator_ended_a_session_reach_the_next_one():
    # The first session's request iterator must not stay behind and take them.
    port = free_port()
    orch = Orch(end_first=True)
    srv = await serve(port, orch)
    pl = link(port)
    task = asyncio.create_task(pl.run())
    try:
        await wait_for(lambda: len(orch.sessions) >= 2)
        await asyncio.sleep(0.3)
        pl.worker_exited(exited("w1"))
        pl.send(L.ConnectRequest(result=L.CommandResult(command_id="c1", ok=True)))
        await wait_for(lambda: orch.received("worker_exited") and orch.received("result"), 3)
        after_registration = orch.sessions[-1][1:]
        assert [m.WhichOneof("message") for m in after_registration] == ["worker_exited", "result"]
    finally:
        task.cancel()
        await srv.stop(0)


async def test_exits_and_results_queued_while_the_orchestrator_is_down_survive_failed_attempts():
    port = free_port()
    orch = Orch()
    srv = await serve(port, orch)
    pl = link(port)
    task = asyncio.create_task(pl.run())
    try:
        await wait_for(lambda: len(orch.sessions) == 1)
        await srv.stop(0)
        await asyncio.sleep(0.2)
        pl.send(L.ConnectRequest(result=L.CommandResult(command_id="c1", ok=True)))
        pl.worker_exited(exited("w1"))
        pl.send(L.ConnectRequest(heartbeat=L.PoolHeartbeat(seq=99)))  # stale by the next session
        await asyncio.sleep(1.5)  # a few refused attempts
        orch2 = Orch()
        srv = await serve(port, orch2)
        await wait_for(lambda: orch2.received("worker_exited") and orch2.received("result"), 20)
        assert [m.worker_exited.worker_id for m in orch2.received("worker_exited")] == ["w1"]
        assert [m.result.command_id for m in orch2.received("result")] == ["c1"]
        assert 99 not in [m.heartbeat.seq for m in orch2.received("heartbeat")]
    finally:
        task.cancel()
        await srv.stop(0)


@pytest.mark.parametrize("fail_at", [2, 3], ids=["first-beat", "a-later-beat"])
async def test_heartbeats_go_on_after_one_fails(monkeypatch, fail_at):
    port = free_port()
    orch = Orch(heartbeat_ms=100)
    srv = await serve(port, orch)
    pl = link(port)
    calls = [0]
    real = PoolLink.inventory

    def flaky(self):  # call 1 is the registration's
        calls[0] += 1
        if calls[0] == fail_at:
            raise RuntimeError("NVML: GPU is lost")
        return real(self)
    monkeypatch.setattr(PoolLink, "inventory", flaky)
    task = asyncio.create_task(pl.run())
    try:
        await wait_for(lambda: len(orch.received("heartbeat")) >= 4, 5)
        assert len(orch.sessions) == 1
    finally:
        task.cancel()
        await srv.stop(0)
