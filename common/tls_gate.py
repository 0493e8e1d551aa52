"""The orchestrator's audited TLS gate: mTLS in front of a plaintext gRPC server.

gRPC Python gives no hook when a TLS handshake fails, so a caller refused there (no
client certificate, another CA's, an expired one) would leave no audit entry. The
gate terminates TLS itself and relays what it admits to the gRPC server, which then
listens in plaintext on 127.0.0.1 only:

    client --TLS--> Gate (public address) --plaintext--> gRPC server (127.0.0.1:ephemeral)

- Handshake: TLS 1.2+, ALPN "h2" (gRPC clients insist on it), the orchestrator's
  certificate, a client certificate required that chains to our CA or to the extra
  roots (the public enrolment CA, for joining pools). No session tickets: every
  connection is verified in full. The key, certificate and CA files are re-read when
  they change (a `stat` of each per connection), so renewal needs no restart and open
  connections keep their session.
- Refused (any handshake failure, a stall past `handshake_timeout_s`, a hang-up): the
  connection is closed and one audit entry written through a RefusalLog (bounded
  rate, common/refusals.py): principal "anonymous" (a refused certificate is never
  readable: OpenSSL keeps it only once verified), action "tls.handshake", target the
  listen address, outcome "refused: <why>", correlation id the peer's address.
- Admitted: the gate dials the gRPC server, records {its local address -> the
  verified certificate} in a PeerTable (common/gate_peers.py) before relaying a byte,
  and relays byte for byte in both directions until the server closes or the client
  hangs up (a client's half-close is passed on).

Each connection is a common/tls_relay.py Connection (handshake, then relay); this
module holds what they share: the listener, the TLS context, the audit of refusals,
and the dial to the gRPC server.
"""

from __future__ import annotations

import asyncio
import ssl
import time

from common import log
from common.gate_peers import Address, PeerTable
from common.refusals import RefusalLog
from common.tls import Material, file_stamp
from common.tls_relay import Connection, Upstream

ACTION = "tls.handshake"


def server_context(m: Material, extra_roots: bytes = b"") -> ssl.SSLContext:
    """The gate's TLS settings (module docstring) with the files as they are now."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.options |= ssl.OP_NO_TICKET | ssl.OP_NO_RENEGOTIATION
    ctx.num_tickets = 0
    ctx.set_alpn_protocols(["h2"])
    ctx.load_verify_locations(cadata=(m.ca.read_bytes() + b"\n" + extra_roots).decode())
    # Renewal replaces the key, then the certificate: a load between the two finds a
    # pair that does not match (OpenSSL checks) and loads again, as Material.read does.
    for _ in range(49):
        try:
            ctx.load_cert_chain(m.cert, m.key)
            return ctx
        except ssl.SSLError:
            time.sleep(0.01)
    ctx.load_cert_chain(m.cert, m.key)  # still no matching pair: raise
    return ctx


class Gate:
    """See the module docstring. `listen` is "host:port"; `upstream` the gRPC server's
    plaintext address; `refusals` writes the audit entries."""

    def __init__(self, m: Material, listen: str, upstream: Address, peers: PeerTable,
                 refusals: RefusalLog, *, extra_roots: bytes = b"",
                 handshake_timeout_s: float = 10.0, max_handshakes: int = 1024):
        self.material, self.extra_roots = m, extra_roots
        self.listen, self.upstream = listen, upstream
        self.peers, self.refusals = peers, refusals
        self.handshake_timeout_s = handshake_timeout_s
        self.max_handshakes = max_handshakes  # beyond: refused at once, not queued
        self.connections: set[Connection] = set()
        self.handshakes: set[Connection] = set()
        self.port = 0
        self._dials: set[asyncio.Task] = set()
        self._server: asyncio.AbstractServer | None = None
        self._flusher: asyncio.Task | None = None
        self._stamp = file_stamp(self._paths)
        self._ctx = server_context(m, extra_roots)

    @property
    def _paths(self) -> tuple:
        return (self.material.key, self.material.cert, self.material.ca)

    async def bind(self) -> int:
        """Bind the public address (not accepting yet, so a busy port fails at start);
        return the port."""
        host, _, port = self.listen.rpartition(":")
        host = host.strip("[]")
        # "::" means every address, IPv4 too, as for gRPC (asyncio would bind IPv6 only).
        self._server = await asyncio.get_running_loop().create_server(
            lambda: Connection(self), None if host in ("", "::") else host, int(port),
            start_serving=False, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def start(self) -> None:
        """Accept connections (once the gRPC server behind is started)."""
        await self._server.start_serving()
        self._flusher = asyncio.create_task(self._flush_refusals())

    def stop_accepting(self) -> None:
        """Take no new connection and drop the handshakes in progress; admitted
        connections keep flowing (so the gRPC server can stop gracefully behind them)."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.handshakes):
            conn.close()

    async def close(self) -> None:
        """Stop accepting, close every connection, and write the refusals still held
        for a summary."""
        self.stop_accepting()
        if self._flusher is not None:
            self._flusher.cancel()
        for task in list(self._dials):
            task.cancel()
        await asyncio.gather(*self._dials, return_exceptions=True)
        for conn in list(self.connections):
            conn.close()
        self.refusals.flush()

    def context(self) -> ssl.SSLContext:
        """The TLS context, rebuilt when the key, certificate or CA changed."""
        stamp = file_stamp(self._paths)
        if stamp != self._stamp:
            try:
                self._ctx = server_context(self.material, self.extra_roots)
                self._stamp = stamp
            except (OSError, ValueError) as exc:  # mid-rename: keep the previous one
                log.emit("orchestrator", "tls.reload_failed", str(exc), level="warning")
        return self._ctx

    # ---- what each Connection reports

    def handshake_started(self, conn: Connection) -> bool:
        self.connections.add(conn)
        if len(self.handshakes) >= self.max_handshakes:
            return False
        self.handshakes.add(conn)
        return True

    def handshake_ended(self, conn: Connection) -> None:
        self.handshakes.discard(conn)

    def closed(self, conn: Connection) -> None:
        self.connections.discard(conn)

    def refused(self, peer: tuple[str, int], why: str) -> None:
        host, port = peer
        self.refusals.refuse(host, "anonymous", ACTION, self.listen, f"refused: {why}",
                             f"{host}:{port}", f"TLS handshake from {host}:{port}: {why}")

    def connect(self, conn: Connection) -> None:
        """Dial the gRPC server for a verified connection."""
        task = asyncio.create_task(self._dial(conn))
        self._dials.add(task)
        task.add_done_callback(self._dials.discard)

    async def _dial(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, up = await loop.create_connection(lambda: Upstream(conn), *self.upstream)
        except OSError as exc:
            log.emit("orchestrator", "tls.upstream_failed",
                     f"cannot reach the gRPC server at {self.upstream}: {exc}", level="error")
            conn.close()
            return
        except asyncio.CancelledError:
            conn.close()
            raise
        if conn.state != "connecting":  # the client hung up while we dialled
            transport.close()
            return
        local = transport.get_extra_info("sockname")[:2]
        self.peers.add(local, conn.pem)  # before a byte of the client's goes up
        conn.opened(up, local)

    async def _flush_refusals(self) -> None:
        # Summaries of a flood are written when its window ends, even if it stopped.
        while True:
            await asyncio.sleep(self.refusals.window_s / 4)
            if self.refusals.due():
                self.refusals.flush()
