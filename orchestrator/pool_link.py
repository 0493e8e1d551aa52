"""PoolLinkService: one bidirectional stream per pool manager.

The first message must be a registration; afterwards heartbeats, worker facts, model
progress and command results flow up, and commands flow down. When the stream ends
the pool is lost at once (the heartbeat watchdog covers links that hang instead).

With TLS on (`security` given), Connect takes only a pool certificate whose pool id is
the one registering (platform mode: plus a fresh signed registration), and ends the
stream when that certificate is revoked (checked at every heartbeat). Join is served
by orchestrator/join.py; without TLS there is nothing to join.

Heartbeats also become throttled pool.heartbeat facts (orchestrator/heartbeat_facts.py),
so views follow device memory without polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal as signals
import time
from dataclasses import dataclass

import grpc

from common import pki, tls
from common.errors import OrchError
from llama_orch.v1 import events_pb2, pool_link_pb2, pool_link_pb2_grpc
from orchestrator import join
from orchestrator.core import Orchestrator
from orchestrator.heartbeat_facts import HeartbeatFacts
from orchestrator.registry import PoolRecord

CONNECT = "PoolLinkService/Connect"


@dataclass
class LinkSecurity:
    """What the pool link checks when TLS is on."""
    peers: tls.PeerCheck
    enrolment: join.Enrolment


class PoolLinkServicer(pool_link_pb2_grpc.PoolLinkServiceServicer):
    def __init__(self, orch: Orchestrator, security: LinkSecurity | None = None):
        self.orch = orch
        self.security = security
        self.beats = HeartbeatFacts(orch.facts)  # pool.heartbeat facts, throttled

    def _admit(self, reg: pool_link_pb2.PoolRegistration, peer: pki.Identity | None) -> None:
        """The pool's certificate must name the pool that registers; platform mode also
        wants a fresh signed registration. Refusals change no state."""
        sec = self.security
        if sec is None or peer is None:
            return
        if peer.name != reg.pool_id:
            raise sec.peers.refuse(str(peer), CONNECT, OrchError(
                "PERMISSION_DENIED", f"the certificate names pool {peer.name!r}; it cannot "
                f"register as {reg.pool_id!r}", param="pool_id"))
        if self.orch.cfg.mode == "platform":
            try:
                sec.enrolment.claim(sec.enrolment.verify_signed(
                    reg.signed if reg.HasField("signed") else None, reg.pool_id))
            except OrchError as err:
                raise sec.peers.refuse(str(peer), CONNECT, err) from None

    async def Connect(self, request_iterator, context: grpc.aio.ServicerContext):
        peer = None
        if self.security is not None:  # before reading anything a stranger sends
            try:
                peer = self.security.peers.check(context, {"pool"}, CONNECT)
            except OrchError as err:
                await err.abort(context)
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            return
        if first.WhichOneof("message") != "registration" or not first.registration.pool_id:
            await OrchError("REGISTRATION_REJECTED",
                            "the first message on a pool link must be a registration with a pool_id"
                            ).abort(context)
        reg = first.registration
        try:
            self._admit(reg, peer)
        except OrchError as err:
            await err.abort(context)
        pool = PoolRecord(reg.pool_id, reg.inventory, address=reg.address,
                          models=list(reg.models), version=reg.version)
        for w in reg.workers:
            if w.endpoint:
                tls.announce_worker(w.endpoint, pool.pool_id)
        self.orch.pool_joined(pool, reg.workers)
        yield pool_link_pb2.ConnectResponse(accepted=pool_link_pb2.RegistrationAccepted(
            pool_id=pool.pool_id, heartbeat_interval_ms=self.orch.cfg.pool.heartbeat_ms))
        reader = asyncio.create_task(self._read(pool, request_iterator, peer))
        try:
            while True:
                getter = asyncio.create_task(pool.outbox.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                yield pool_link_pb2.ConnectResponse(command=getter.result())
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            self.beats.forget(pool.link_id)
            self.orch.pool_lost(pool, "pool link closed")
        if not reader.cancelled() and isinstance(reader.exception(), OrchError):
            await reader.exception().abort(context)

    def _still_trusted(self, peer: pki.Identity | None) -> None:
        """A certificate revoked while its stream is open ends that stream."""
        revocations = self.security.peers.revocations if self.security else None
        if peer is not None and revocations is not None and revocations.is_revoked(peer.serial):
            raise self.security.peers.refuse(str(peer), CONNECT, OrchError(
                "CERTIFICATE_REJECTED", f"certificate {peer.serial_hex} ({peer}) was revoked"))

    async def _read(self, pool: PoolRecord, requests, peer: pki.Identity | None = None) -> None:
        orch = self.orch
        async for msg in requests:
            kind = msg.WhichOneof("message")
            pool.last_heartbeat = time.monotonic()
            pool.heard_at = time.time()
            if kind == "heartbeat":
                self._still_trusted(peer)
                pool.inventory = msg.heartbeat.inventory
                pool.models = list(msg.heartbeat.models)
                self.beats.heartbeat(pool.link_id, pool.pool_id, msg.heartbeat.inventory)
            elif kind == "worker_starting":
                w = orch.registry.workers.get(msg.worker_starting.worker_id)
                if w is not None:
                    w.pid = msg.worker_starting.pid
            elif kind == "worker_ready":
                tls.announce_worker(msg.worker_ready.worker.endpoint, pool.pool_id)
                orch.worker_ready(pool.pool_id, msg.worker_ready.worker, msg.worker_ready.load_ms)
            elif kind == "worker_exited":
                self._exited(msg.worker_exited)
            elif kind == "model_progress":
                self._model(pool, msg.model_progress)
            elif kind == "result":
                fut = pool.pending.get(msg.result.command_id)
                if fut is not None and not fut.done():
                    fut.set_result(msg.result)

    _MODEL_FACTS = {
        pool_link_pb2.MODEL_PHASE_DOWNLOADING: events_pb2.FACT_KIND_MODEL_DOWNLOADING,
        pool_link_pb2.MODEL_PHASE_CACHED: events_pb2.FACT_KIND_MODEL_CACHED,
        pool_link_pb2.MODEL_PHASE_PRELOADED: events_pb2.FACT_KIND_MODEL_PRELOADED,
        pool_link_pb2.MODEL_PHASE_EVICTED: events_pb2.FACT_KIND_MODEL_EVICTED,
        pool_link_pb2.MODEL_PHASE_FAILED: events_pb2.FACT_KIND_MODEL_DOWNLOADING,
    }

    def _model(self, pool: PoolRecord, p: pool_link_pb2.ModelProgress) -> None:
        """A pool's model phase (download progress, cached at a commit, ...) as a fact."""
        failed = p.phase == pool_link_pb2.MODEL_PHASE_FAILED
        phase = pool_link_pb2.ModelPhase.Name(p.phase).removeprefix("MODEL_PHASE_").lower()
        message = (f"{p.model_ref}: {OrchError.from_detail(p.error).code}: {p.error.message}"
                   if failed else f"{p.model_ref}: {phase}")
        self.orch.facts.publish(
            self._MODEL_FACTS.get(p.phase, events_pb2.FACT_KIND_MODEL_DOWNLOADING), message,
            level=events_pb2.FACT_LEVEL_ERROR if failed else events_pb2.FACT_LEVEL_INFO,
            pool_id=pool.pool_id, model_ref=p.model_ref, phase=phase,
            bytes_done=p.bytes_done or None, bytes_total=p.bytes_total or None,
            resolved_revision=p.resolved_revision or None,
            error_code=OrchError.from_detail(p.error).code if failed else None)

    def _exited(self, ex: pool_link_pb2.WorkerExited) -> None:
        details = {"exit_code": ex.exit_code if ex.HasField("exit_code") else None,
                   "signal": ex.signal if ex.HasField("signal") else None,
                   "signal_name": ex.signal_name or None, "stderr_tail": ex.stderr_tail or None}
        if ex.expected:
            self.orch.worker_gone(ex.worker_id, None, **details)
            return
        if ex.HasField("error") and ex.error.code:
            err = OrchError.from_detail(ex.error)
        elif ex.HasField("signal"):
            name = ex.signal_name or signals.Signals(ex.signal).name
            err = OrchError("WORKER_CRASHED", f"worker killed by signal {ex.signal} ({name})")
        else:
            err = OrchError("WORKER_CRASHED", f"worker exited with code {ex.exit_code}")
        self.orch.worker_gone(ex.worker_id, err, **details)

    async def Join(self, request, context):
        """A join token (+ CSR, + signed registration in platform mode) buys a pool
        certificate; a pool renews its own with its current certificate."""
        try:
            if self.security is None:
                raise OrchError("PERMISSION_DENIED", "this orchestrator runs without TLS "
                                "(security.tls = false): pools connect without joining")
            peers = self.security.peers
            peer = peers.identify(context)  # None: the public enrolment certificate
            if peer is not None:
                # Only a pool renews; a revoked one never gets a fresh certificate.
                peer = peers.check(context, {"pool"}, join.JOIN)
            return self.security.enrolment.join(request, peer)
        except OrchError as err:
            await err.abort(context)
