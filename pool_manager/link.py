"""The pool link: dial the orchestrator, register, heartbeat, carry out commands.

One bidirectional stream. Upward messages go through an outbox queue so every part of
the pool manager can report without touching the stream. On a broken link it
reconnects with exponential backoff and registers again. It never decides anything:
commands come down, facts and results go up.

Worker exits and command results are not lost across reconnects: a message leaves
the link only once gRPC has written it to a session's stream; what a session took
but did not write, and what was queued while no session was up, goes to the next
one. (Anything else queued for a dead link is stale: a registration re-states it.)

Starts in flight are reserved from their first moment (`Starting`): a duplicated
start command or a second start on the same GPU is refused rather than spawned, and
a stop that arrives while the start is still fetching or spawning wins.

With TLS on (an `identity`), the pool joins first when it has no certificate, dials
with its certificate, and renews it in the background: the open stream stays up, the
next connection uses the new certificate. A refusal no retry can fix (a revoked
certificate, a bad token or signature) ends `run` with that error.
"""

from __future__ import annotations

import asyncio
import collections
import random
from dataclasses import dataclass

import grpc

from common import grpc_server, log, pki, tls
from common.config import PoolConfig
from common.errors import OrchError
from llama_orch.v1 import common_pb2, pool_link_pb2, pool_link_pb2_grpc
from pool_manager import inventory
from pool_manager.enroll import PoolIdentity
from pool_manager.models import Models
from pool_manager.supervisor import Supervisor

VERSION = "0.1.0"
# Refusals that retrying cannot fix: the pool manager stops and says why.
FATAL = frozenset({"JOIN_TOKEN_INVALID", "REGISTRATION_REJECTED", "CERTIFICATE_REJECTED",
                   "PERMISSION_DENIED", "UNAUTHENTICATED", "CONFIG_INVALID"})
# Upward messages a broken link must not lose; the rest a registration re-states.
MUST_DELIVER = frozenset({"worker_exited", "result"})


@dataclass
class Starting:
    """A start command being carried out. Its worker id is taken from the start, its
    GPUs once preflight has passed; a stop that arrives meanwhile waits in `stop`."""
    gpus: frozenset[str] = frozenset()
    stop: pool_link_pb2.StopWorkerCommand | None = None


class Upward:
    """One session's request stream: its registration, then messages in order.

    A message stays in `unsent` until gRPC asks for the next one, which it does only
    after writing it. `end()` stops the stream: the request iterator of a finished call
    is not always cancelled by gRPC, and must not take messages meant for the next
    session. After `end()`, `unsent` holds what this session did not write (and, when
    a write completes just as the session ends, one it did: the orchestrator ignores a
    repeated exit or result, so a repeat is the safe side).
    """

    def __init__(self, first: pool_link_pb2.ConnectRequest,
                 backlog: list[pool_link_pb2.ConnectRequest],
                 outbox: asyncio.Queue[pool_link_pb2.ConnectRequest]):
        self._first = first
        self._outbox = outbox
        self._ended = asyncio.Event()
        self.unsent = collections.deque(backlog)

    def end(self) -> None:
        self._ended.set()

    async def messages(self):
        yield self._first
        while not self._ended.is_set() and (self.unsent or await self._take()):
            yield self.unsent[0]
            self.unsent.popleft()

    async def _take(self) -> bool:
        """The next outbox message into `unsent`; False once the session ended."""
        get = asyncio.ensure_future(self._outbox.get())
        ended = asyncio.ensure_future(self._ended.wait())
        try:
            await asyncio.wait({get, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            get.cancel()  # a get cancelled before it completed has taken nothing
            if get.done() and not get.cancelled():
                self.unsent.append(get.result())
        return not self._ended.is_set()


class PoolLink:
    def __init__(self, cfg: PoolConfig, supervisor: Supervisor, nvml: inventory.Nvml,
                 engines: list[str], callback_address: str, models: Models | None = None,
                 identity: PoolIdentity | None = None):
        self.cfg = cfg
        self.identity = identity
        self._session_serial: int | None = None  # the certificate the current session uses
        self.models = models
        self.supervisor = supervisor
        self.nvml = nvml
        self.engines = engines
        self.callback_address = callback_address
        self.outbox: asyncio.Queue[pool_link_pb2.ConnectRequest] = asyncio.Queue()
        self._unsent: list[pool_link_pb2.ConnectRequest] = []  # what the last session did not write
        self._seq = 0
        self._starting: dict[str, Starting] = {}  # start commands in flight, by worker id
        self._claims: dict[str, inventory.Claim] = {}  # start commands' memory, by worker id
        self._holds: dict[str, str] = {}  # worker id -> the pinned model ref it runs from

    def worker_exited(self, report: pool_link_pb2.WorkerExited) -> None:
        """A worker ended: its model may be evicted again; the orchestrator is told."""
        pinned = self._holds.pop(report.worker_id, None)
        if pinned is not None and self.models is not None:
            self.models.released(pinned)
        self.send(pool_link_pb2.ConnectRequest(worker_exited=report))

    def residency(self) -> list[common_pb2.ModelResidency]:
        return self.models.residency() if self.models is not None else []

    def send(self, msg: pool_link_pb2.ConnectRequest) -> None:
        self.outbox.put_nowait(msg)

    def inventory(self) -> common_pb2.Inventory:
        # May run in a thread (heartbeats): copy what the event loop changes.
        holdings = inventory.held(list(self.supervisor.workers.values()), dict(self._claims))
        return inventory.take(self.nvml, self.cfg.devices, self.engines, holdings)

    def describe(self) -> tuple[str, common_pb2.Inventory]:
        """What a signed registration vouches for: where this pool serves, and what it has."""
        return self.callback_address, self.inventory()

    async def run(self) -> None:
        backoff = 0.2
        renewal = None
        try:
            while True:
                try:
                    if self.identity is not None:
                        await self.identity.ensure(self.describe)
                        renewal = renewal or asyncio.create_task(
                            self.identity.renew_forever(self.describe))
                    await self._session()
                    backoff = 0.2
                except (grpc.aio.AioRpcError, OrchError) as exc:
                    err = exc if isinstance(exc, OrchError) else OrchError.from_rpc_error(exc)
                    if err.code in FATAL and not self._renewed_since_session():
                        raise err from None
                    log.emit("pool_manager", "pool.link_lost", f"{err.code}: {err.message}",
                             level="warning", orchestrator=self.cfg.orchestrator)
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 10.0)
        finally:
            if renewal is not None:
                renewal.cancel()

    def _serial(self) -> int | None:
        cert = self.identity.certificate() if self.identity is not None else None
        return cert.serial_number if cert is not None else None

    def _renewed_since_session(self) -> bool:
        # The stream's certificate was revoked, but a renewal has replaced it since:
        # reconnect with the new one rather than give up.
        return self._session_serial is not None and self._serial() != self._session_serial

    def _channel(self) -> grpc.aio.Channel:
        self._session_serial = self._serial()
        if self.identity is None:
            return grpc_server.channel(self.cfg.orchestrator)
        # The certificate files are read now: after a renewal, the next session uses
        # the new one while the current stream keeps its connection.
        return tls.channel(self.cfg.orchestrator, self.identity.material, pki.ORCHESTRATOR_NAME)

    async def _session(self) -> None:
        async with self._channel() as ch:
            stub = pool_link_pb2_grpc.PoolLinkServiceStub(ch)
            registration = pool_link_pb2.ConnectRequest(registration=pool_link_pb2.PoolRegistration(
                pool_id=self.cfg.id, version=VERSION, inventory=self.inventory(),
                address=self.callback_address, workers=self.worker_infos(),
                models=self.residency()))
            if self.identity is not None and (signed := self.identity.sign(*self.describe())):
                registration.registration.signed.CopyFrom(signed)
            upward = Upward(registration, self._backlog(), self.outbox)
            call = stub.Connect(upward.messages())
            heartbeat = None
            try:
                async for msg in call:
                    kind = msg.WhichOneof("message")
                    if kind == "accepted":
                        log.emit("pool_manager", "pool.joined", f"registered as {self.cfg.id}",
                                 orchestrator=self.cfg.orchestrator)
                        heartbeat = asyncio.create_task(self._heartbeats(
                            msg.accepted.heartbeat_interval_ms or self.cfg.heartbeat_ms))
                    elif kind == "command":
                        asyncio.create_task(self._execute(msg.command))
            finally:
                if heartbeat is not None:
                    heartbeat.cancel()
                upward.end()
                call.cancel()
                self._unsent = list(upward.unsent)

    def _backlog(self) -> list[pool_link_pb2.ConnectRequest]:
        """What a new session sends after its registration: the worker exits and command
        results earlier sessions did not write; anything else queued meanwhile is stale
        (the orchestrator re-learns it from the registration)."""
        backlog = [m for m in self._unsent + self._drain()
                   if m.WhichOneof("message") in MUST_DELIVER]
        self._unsent = []
        return backlog

    def _drain(self) -> list[pool_link_pb2.ConnectRequest]:
        items = []
        while not self.outbox.empty():
            items.append(self.outbox.get_nowait())
        return items

    def worker_infos(self) -> list[common_pb2.WorkerInfo]:
        out = []
        for w in self.supervisor.workers.values():
            if w.stopping:
                continue
            if w.info is not None:
                out.append(w.info)
            else:
                out.append(common_pb2.WorkerInfo(
                    worker_id=w.worker_id, model_ref=w.model_ref, engine=w.engine,
                    device_ids=list(w.device_ids), pid=w.proc.pid,
                    state=common_pb2.WORKER_STATE_STARTING))
        return out

    async def _heartbeats(self, interval_ms: int) -> None:
        while True:
            await asyncio.sleep(interval_ms / 1000)
            try:
                await self._heartbeat()
            except Exception as exc:  # one bad beat (a GPU lost mid-query) must not end them
                log.emit("pool_manager", "pool.heartbeat_failed", repr(exc), level="warning")

    async def _heartbeat(self) -> None:
        self._seq += 1
        inv = await asyncio.to_thread(self.inventory)
        self.send(pool_link_pb2.ConnectRequest(heartbeat=pool_link_pb2.PoolHeartbeat(
            seq=self._seq, inventory=inv, workers=self.worker_infos(),
            models=self.residency())))

    async def _execute(self, cmd: pool_link_pb2.PoolCommand) -> None:
        result = pool_link_pb2.CommandResult(command_id=cmd.command_id, ok=True)
        try:
            kind = cmd.WhichOneof("command")
            if kind == "start_worker":
                result.worker_id = cmd.start_worker.worker_id
                await self._start(cmd.start_worker)
            elif kind == "stop_worker":
                result.worker_id = cmd.stop_worker.worker_id
                if not await self._stop(cmd.stop_worker):
                    raise OrchError("NOT_FOUND", f"no worker {cmd.stop_worker.worker_id} here")
            elif kind in ("fetch_model", "preload_model", "evict_model") and self.models is None:
                raise OrchError("INVALID_ARGUMENT", f"this pool manager has no model cache ({kind})")
            elif kind == "fetch_model":
                await self.models.fetch(cmd.fetch_model.model_ref)
            elif kind == "preload_model":
                await self.models.preload(cmd.preload_model.model_ref)
            elif kind == "evict_model":
                await self.models.evict(cmd.evict_model.model_ref, cmd.evict_model.from_disk)
            else:
                raise OrchError("INVALID_ARGUMENT", f"this pool manager cannot {kind} yet")
        except OrchError as err:
            result.ok = False
            result.error.CopyFrom(err.to_detail())
        except Exception as exc:  # report, never crash the link
            result.ok = False
            result.error.CopyFrom(OrchError("INTERNAL", repr(exc)).to_detail())
        self.send(pool_link_pb2.ConnectRequest(result=result))

    async def _stop(self, cmd: pool_link_pb2.StopWorkerCommand) -> bool:
        starting = self._starting.get(cmd.worker_id)
        if starting is not None and cmd.worker_id not in self.supervisor.workers:
            starting.stop = cmd  # not spawned yet: the start carries it out
            return True
        grace = cmd.grace_ms / 1000 if cmd.grace_ms else None
        return await self.supervisor.stop(cmd.worker_id, grace_s=grace, force=cmd.force)

    async def _start(self, cmd: pool_link_pb2.StartWorkerCommand) -> None:
        """Preflight, then spawn. Failures carry a stable code and are not retried here.

        The worker id is reserved before the first await, so a duplicated command is
        refused instead of spawning a second, untracked process."""
        if cmd.worker_id in self.supervisor.workers or cmd.worker_id in self._starting:
            raise OrchError("INVALID_ARGUMENT", f"worker {cmd.worker_id} already exists")
        starting = self._starting[cmd.worker_id] = Starting()
        try:
            await self._preflight_and_spawn(cmd, starting)
        finally:
            del self._starting[cmd.worker_id]

    def _gpus_taken(self) -> set[str]:
        """GPUs of running workers and of starts that passed preflight: one worker each."""
        return self.supervisor.devices_in_use() | {
            d for s in self._starting.values() for d in s.gpus}

    async def _preflight_and_spawn(self, cmd: pool_link_pb2.StartWorkerCommand,
                                   starting: Starting) -> None:
        inv = await asyncio.to_thread(self.inventory)
        # From here to the claim below nothing awaits: the checks and the reservations
        # they lead to are one step, so two starts in flight cannot both pass them.
        devices = {d.id: d for d in inv.devices}
        if not cmd.device_ids:
            raise OrchError("DEVICE_NOT_FOUND", "empty device mask", param="device_ids")
        if unknown := [d for d in cmd.device_ids if d not in devices]:
            raise OrchError("DEVICE_NOT_FOUND", f"unknown devices {unknown}", param="device_ids")
        if cmd.engine and cmd.engine not in self.engines:
            raise OrchError("ENGINE_UNAVAILABLE", f"engine {cmd.engine!r} is not available here "
                            f"(have {', '.join(self.engines)})", param="engine")
        exclusive = {d for d in cmd.device_ids if devices[d].kind == common_pb2.DEVICE_KIND_GPU}
        if overlap := exclusive & self._gpus_taken():
            raise OrchError("DEVICE_MASK_OVERLAP", f"devices {sorted(overlap)} already run a worker",
                            param="device_ids")
        # Memory on every device of the mask. Simulated devices are counted now, not from
        # `inv` (taken before an await), so two starts in flight cannot share the room.
        self._claims = {k: c for k, c in self._claims.items()
                        if k in self.supervisor.workers or c.spawning}
        simulated = {d.id: d for d in inventory.simulated(self.cfg.devices, inventory.held(
            self.supervisor.workers.values(), self._claims))}
        for d in cmd.device_ids:
            free = (simulated[d] if d in simulated else devices[d]).memory_free_bytes
            if cmd.memory_estimate_bytes > free:
                raise OrchError("INSUFFICIENT_MEMORY", f"{d}: needs {cmd.memory_estimate_bytes} bytes, "
                                f"{free} free", param="device_ids")
        starting.gpus = frozenset(exclusive)
        claim = self._claims[cmd.worker_id] = inventory.Claim(
            cmd.worker_id, tuple(cmd.device_ids), cmd.memory_estimate_bytes)
        pinned = ""
        try:
            model_dir = ""
            if self.models is not None and starting.stop is None:  # fetched first if not cached
                model_dir, pinned = await self.models.for_worker(cmd.model_ref)
            if starting.stop is not None:
                self._stopped_before_spawn(cmd)
                return
            wp = await self.supervisor.spawn(cmd, {d.id for d in inv.devices
                                                   if d.kind == common_pb2.DEVICE_KIND_GPU},
                                             model_dir=model_dir)
            if pinned:
                self._holds[cmd.worker_id] = pinned
                pinned = ""
        finally:
            claim.spawning = False  # from here on the worker itself, if any, holds it
            if pinned and self.models is not None:  # fetched, but the spawn failed
                self.models.released(pinned)
        self.send(pool_link_pb2.ConnectRequest(worker_starting=pool_link_pb2.WorkerStarting(
            worker_id=cmd.worker_id, model_ref=cmd.model_ref, device_ids=list(cmd.device_ids),
            pid=wp.proc.pid, engine=cmd.engine)))
        if starting.stop is not None:  # it came while the process was being spawned
            await self._stop(starting.stop)

    def _stopped_before_spawn(self, cmd: pool_link_pb2.StartWorkerCommand) -> None:
        # The stop was answered ok, so the orchestrator waits for this worker's exit:
        # it ended as asked, before it had a process.
        log.emit("pool_manager", "worker.stopped_before_start",
                 f"{cmd.worker_id} stopped before it was spawned", worker_id=cmd.worker_id)
        self.send(pool_link_pb2.ConnectRequest(worker_exited=pool_link_pb2.WorkerExited(
            worker_id=cmd.worker_id, expected=True, stderr_tail="stopped before it was spawned")))
