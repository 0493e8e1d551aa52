"""One connection through the TLS gate (common/tls_gate.py): its handshake, then the
byte-for-byte relay to the gRPC server behind.

TLS runs on an ssl.SSLObject over memory BIOs rather than asyncio's TLS transport, for
two reasons: a refused handshake must still send its alert (asyncio's transport drops
it, and the client would see only "connection reset" instead of "certificate
expired"), and the relay stays a couple of calls per chunk.

    handshake --(verified)--> connecting --(upstream dialled, peer recorded)--> open --> closed
        \\--(any failure, stall, hang-up)--> closed, refused (Gate.refused)

An end of stream from the client is passed on as one (TCP half-close) and the server's
answer still relayed; an end from the server closes both sides.

Backpressure both ways: when one side's write buffer passes its high mark, reading
stops on the other side until it drains. While connecting, what the client sends
waits in the incoming BIO (reading is paused), so not a byte reaches the gRPC server
before its peer is recorded.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING

from common.gate_peers import Address

if TYPE_CHECKING:
    from common.tls_gate import Gate

READ_SIZE = 64 * 1024  # a TLS record holds at most 16 KiB: one read rarely fills it
WRITE_LIMIT = 1024 * 1024  # bytes buffered towards one side before the other pauses


def reason(exc: BaseException) -> str:
    """Why a handshake failed, for the audit log."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or "certificate verify failed"
        if exc.verify_code in (2, 18, 19, 20, 21):  # no issuer we trust
            return f"certificate not issued by a trusted CA ({why})"
        return why  # "certificate has expired", "certificate is not yet valid", ...
    if isinstance(exc, ssl.SSLError):
        if exc.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return "no client certificate"
        if exc.reason:
            return "TLS error: " + exc.reason.lower().replace("_", " ")
        return f"TLS error: {exc}"
    return f"{type(exc).__name__}: {exc}"


class Upstream(asyncio.Protocol):
    """The relay's plaintext end, towards the gRPC server."""

    def __init__(self, conn: "Connection"):
        self.conn = conn
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_LIMIT)

    def data_received(self, data: bytes) -> None:
        self.conn.send(data)

    def eof_received(self) -> bool:
        self.conn.close()
        return False

    def connection_lost(self, exc) -> None:
        self.transport = None
        self.conn.close()

    def pause_writing(self) -> None:
        if self.conn.transport is not None:
            self.conn.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.conn.transport is not None:
            self.conn.transport.resume_reading()


class Connection(asyncio.Protocol):
    """A client's connection to the gate: see the module docstring."""

    def __init__(self, gate: "Gate"):
        self.gate = gate
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("?", 0)
        self.state = "handshake"
        self.up: Upstream | None = None
        self.local: Address | None = None  # the upstream connection's, while recorded
        self.pem = b""  # the verified client certificate
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.peer = tuple((transport.get_extra_info("peername") or ("?", 0))[:2])
        transport.set_write_buffer_limits(high=WRITE_LIMIT)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = self.gate.context().wrap_bio(self.incoming, self.outgoing, server_side=True)
        if not self.gate.handshake_started(self):
            self.refuse(f"over {self.gate.max_handshakes} handshakes in progress", abort=True)
            return
        self._timer = asyncio.get_running_loop().call_later(
            self.gate.handshake_timeout_s, self._stalled)

    def data_received(self, data: bytes) -> None:
        self.incoming.write(data)
        if self.state == "open":
            self._decrypt()
        elif self.state == "handshake":
            self._handshake()
        # connecting: it waits in the BIO; closed: dropped

    def _handshake(self) -> None:
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, ValueError) as exc:
            self._flush()  # the alert tells the client why
            self.refuse(reason(exc))
            return
        self._flush()
        self._handshake_over()
        self.pem = ssl.DER_cert_to_PEM_cert(self.tls.getpeercert(binary_form=True)).encode()
        self.state = "connecting"
        self.transport.pause_reading()
        self.gate.connect(self)

    def opened(self, up: Upstream, local: Address) -> None:
        """The upstream connection is up and the peer recorded: relay."""
        self.up, self.local, self.state = up, local, "open"
        self.transport.resume_reading()
        self._decrypt()  # what came with the handshake's last flight

    def _decrypt(self) -> None:
        chunks, ended, broken = [], False, False
        try:
            while chunk := self.tls.read(READ_SIZE):
                chunks.append(chunk)
            ended = True  # b"": the client's close_notify
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError:  # a corrupt record, say: nothing more can be trusted
            broken = True
        if chunks and self.up.transport is not None:
            self.up.transport.write(b"".join(chunks) if len(chunks) > 1 else chunks[0])
        self._flush()  # e.g. the answer to a key update, or our alert
        if broken:
            self.close()
        elif ended:
            self._client_done()

    def send(self, data: bytes) -> None:
        """Encrypt `data` from the gRPC server to the client."""
        if self.state not in ("connecting", "open"):
            return
        try:
            self.tls.write(data)
        except ssl.SSLError:
            self.close()
            return
        self._flush()

    def _flush(self) -> None:
        if self.outgoing.pending and self.transport is not None:
            self.transport.write(self.outgoing.read())

    def eof_received(self) -> bool:
        if self.state == "handshake":
            self.refuse("connection closed during the handshake")
            return False
        return self._client_done()

    def _client_done(self) -> bool:
        """The client sends no more (close_notify or a TCP FIN): pass the end on and
        keep relaying the server's answer until the server closes, which it does (a
        gRPC server answers an end of stream by closing). The other way round there is
        no half-close: when the server closes, both sides close (a client that never
        closed its side would hold the connection forever)."""
        up = self.up.transport if self.up is not None else None
        if self.state != "open" or up is None or up.is_closing():
            self.close()
            return False
        up.write_eof()
        return True

    def connection_lost(self, exc) -> None:
        if self.state == "handshake":
            self.refuse("connection closed during the handshake")
        self.transport = None
        self.close()

    def pause_writing(self) -> None:
        if self.up is not None and self.up.transport is not None:
            self.up.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None and self.up.transport is not None:
            self.up.transport.resume_reading()

    def _stalled(self) -> None:
        self._timer = None
        if self.state == "handshake":
            self.refuse(f"no handshake within {self.gate.handshake_timeout_s:g} s", abort=True)

    def _handshake_over(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.gate.handshake_ended(self)

    def refuse(self, why: str, abort: bool = False) -> None:
        """End a handshake that failed; the gate audits it."""
        if self.state != "handshake":
            return
        if abort and self.transport is not None:
            self.transport.abort()
        self.close()
        self.gate.refused(self.peer, why)

    def close(self) -> None:
        """Close both ends, once; each flushes what it buffered first."""
        if self.state == "closed":
            return
        was, self.state = self.state, "closed"
        if was == "handshake":
            self._handshake_over()
        if self.local is not None:  # before the socket closes and its port can be reused
            self.gate.peers.remove(self.local)
            self.local = None
        if self.transport is not None:
            if was == "open":
                try:
                    self.tls.unwrap()  # close_notify
                except ssl.SSLError:
                    pass
                self._flush()
            self.transport.close()
        if self.up is not None and self.up.transport is not None:
            self.up.transport.close()
        self.gate.closed(self)
