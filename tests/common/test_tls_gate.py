"""The audited TLS gate (common/tls_gate.py), its peer table (common/gate_peers.py) and
the bounded refusal log (common/refusals.py), in process: a plaintext gRPC server on
loopback behind a Gate, real handshakes, and hostile clients."""

from __future__ import annotations

import asyncio
import ssl

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common import pki, tls
from common.errors import OrchError
from common.gate_peers import InternalOnly, PeerTable, address_of
from common.refusals import RefusalLog
from common.tls_gate import ACTION, Gate

ECHO = "/test.Echo/Echo"
STREAM = "/test.Echo/Stream"


@pytest.fixture
def ca(tmp_path):
    return pki.CA.init(tmp_path / "pki")[0]


def write(tmp_path, name, ca, role, ident="", ttl_s=3600):
    key, cert = ca.issue_new(role, ident, ttl_s=ttl_s)
    m = tls.Material(tmp_path / f"{name}.key", tmp_path / f"{name}.crt", tmp_path / "ca.crt")
    pki.write_private(m.key, key)
    pki.write_atomic(m.cert, cert)
    pki.write_atomic(m.ca, ca.cert_pem)
    return m


class Stack:
    """A Gate in front of a plaintext gRPC server that answers Health/Check with the
    caller's identity (as PeerCheck finds it through the gate's table) and echoes bytes."""

    def __init__(self, ca, tmp_path, **gate_options):
        self.ca, self.tmp_path, self.gate_options = ca, tmp_path, gate_options
        self.material = write(tmp_path, "orch", ca, "orchestrator")
        self.entries: list[tuple] = []
        self.table = PeerTable()
        self.refusals = RefusalLog(lambda *entry: self.entries.append(entry))
        self.check = tls.PeerCheck(ca.cert, certificate_of=self.table.pem_for)
        self.callers: list[str] = []

    async def __aenter__(self):
        stack = self

        class Health(health_pb2_grpc.HealthServicer):
            async def Check(self, request, context):
                stack.callers.append(str(stack.check.identify(context)))
                return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

        async def echo(request, context):
            return request

        async def stream(requests, context):
            async for r in requests:
                yield r

        self.server = grpc.aio.server(
            interceptors=[InternalOnly(self.table, "internal", lambda p, a, t, o, c, host:
                                       self.refusals.refuse(host, p, a, t, o, c))],
            options=[("grpc.max_receive_message_length", 64 << 20),
                     ("grpc.max_send_message_length", 64 << 20)])
        health_pb2_grpc.add_HealthServicer_to_server(Health(), self.server)
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Echo", {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Stream": grpc.stream_stream_rpc_method_handler(stream)})])
        self.internal = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.gate = Gate(self.material, "127.0.0.1:0", ("127.0.0.1", self.internal), self.table,
                         self.refusals, extra_roots=pki.enrolment_ca_pem(), **self.gate_options)
        self.addr = f"127.0.0.1:{await self.gate.bind()}"
        await self.gate.start()
        return self

    async def __aexit__(self, *exc):
        await self.gate.close()
        await self.server.stop(0)

    def channel(self, m: tls.Material | None = None, creds=None) -> grpc.aio.Channel:
        if creds is None:
            key, cert, ca = m.read()
            creds = grpc.ssl_channel_credentials(ca, key, cert)
        return grpc.aio.secure_channel(self.addr, creds, options=[
            ("grpc.ssl_target_name_override", pki.ORCHESTRATOR_NAME),
            ("grpc.max_receive_message_length", 64 << 20)])

    def refused(self) -> list[tuple[str, str]]:
        """(principal, outcome) of each handshake refusal so far."""
        return [(e[0], e[3]) for e in self.entries if e[1] == ACTION]


async def check(ch) -> str:
    try:
        await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return "ok"
    except grpc.aio.AioRpcError as exc:
        return OrchError.from_rpc_error(exc).code


async def until(predicate, timeout=5.0):
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


async def test_an_admitted_call_is_identified_by_the_certificate_the_gate_verified(ca, tmp_path):
    async with Stack(ca, tmp_path) as s:
        async with s.channel(write(tmp_path, "gw", ca, "client", "gw")) as ch:
            assert await check(ch) == "ok"
            assert s.callers == ["llama-orch://client/gw"]
            assert len(s.table) == 1
        # The entry goes with the connection.
        assert await until(lambda: len(s.table) == 0)
        assert s.entries == []


async def test_handshake_refusals_are_audited_with_a_clear_reason(ca, tmp_path):
    async with Stack(ca, tmp_path) as s:
        other = pki.CA.init(tmp_path / "other")[0]
        stranger = write(tmp_path / "other", "gw", other, "client", "gw")
        stranger = tls.Material(stranger.key, stranger.cert, s.material.ca)  # trusts our CA
        cases = {
            "none": grpc.ssl_channel_credentials(ca.cert_pem),
            "another CA": grpc.ssl_channel_credentials(ca.cert_pem, *stranger.read()[:2]),
            "expired": grpc.ssl_channel_credentials(
                ca.cert_pem, *write(tmp_path, "late", ca, "client", "late", ttl_s=-60).read()[:2]),
        }
        results = {}
        for name, creds in cases.items():
            async with s.channel(creds=creds) as ch:
                results[name] = await check(ch)
        assert results == dict.fromkeys(cases, "UNAVAILABLE")
        assert s.callers == []  # nothing reached a servicer
        refused = s.refused()
        outcomes = [o for _, o in refused]
        assert {p for p, _ in refused} == {"anonymous"}
        assert "refused: no client certificate" in outcomes
        assert any(o.startswith("refused: certificate not issued by a trusted CA") for o in outcomes)
        assert "refused: certificate has expired" in outcomes
        # The public enrolment certificate passes (Join must be reachable); it names nobody.
        async with s.channel(creds=grpc.ssl_channel_credentials(
                ca.cert_pem, *pki.enrolment_identity())) as ch:
            assert await check(ch) == "ok"
        assert s.callers == ["None"]


def alert_for(addr: str, key: bytes | None, cert: bytes | None, tmp_path) -> str:
    """The TLS alert a Python client gets after presenting key/cert (TLS 1.3: its side
    of the handshake completes; the server's verdict arrives as the first read)."""
    import socket
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    if cert is not None:
        (tmp_path / "alert.key").write_bytes(key)
        (tmp_path / "alert.crt").write_bytes(cert)
        ctx.load_cert_chain(tmp_path / "alert.crt", tmp_path / "alert.key")
    host, port = addr.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock, \
            ctx.wrap_socket(sock) as conn:
        try:
            conn.recv(1)
        except ssl.SSLError as exc:
            return exc.reason
        return "none"


async def test_a_refused_client_is_told_why_by_a_tls_alert(ca, tmp_path):
    async with Stack(ca, tmp_path) as s:
        other = pki.CA.init(tmp_path / "other")[0]
        cases = {"none": (None, None), "another CA": other.issue_new("client", "gw"),
                 "expired": ca.issue_new("client", "late", ttl_s=-60)}
        alerts = {name: await asyncio.to_thread(alert_for, s.addr, *pair, tmp_path)
                  for name, pair in cases.items()}
        assert alerts == {"none": "TLSV13_ALERT_CERTIFICATE_REQUIRED",
                          "another CA": "TLSV1_ALERT_UNKNOWN_CA",
                          "expired": "SSLV3_ALERT_CERTIFICATE_EXPIRED"}


async def test_the_internal_port_refuses_and_audits_a_direct_caller(ca, tmp_path):
    async with Stack(ca, tmp_path) as s:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{s.internal}") as ch:
            assert await check(ch) == "UNAUTHENTICATED"
        assert s.callers == []
        [entry] = s.entries
        assert entry[:4] == ("anonymous", "Health/Check", "internal", "UNAUTHENTICATED")
        assert address_of(entry[4])[0] == "127.0.0.1"


async def raw(addr: str):
    host, port = addr.split(":")
    return await asyncio.open_connection(host, int(port))


@pytest.mark.parametrize("sent, why", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\0" * 64, "TLS error: "),
    (b"\x16\x03\x01\x00\x10" + bytes(range(16)) * 4, "TLS error: "),
], ids=["http", "garbage record"])
async def test_garbage_instead_of_a_client_hello_is_refused(ca, tmp_path, sent, why):
    async with Stack(ca, tmp_path) as s:
        reader, writer = await raw(s.addr)
        writer.write(sent)
        await writer.drain()
        await asyncio.wait_for(reader.read(), 5)  # closed by the gate (else: timeout)
        writer.close()
        assert await until(lambda: s.refused())
        assert s.refused()[0][1].startswith("refused: " + why), s.refused()


async def test_a_client_that_stalls_mid_handshake_is_cut_off(ca, tmp_path):
    async with Stack(ca, tmp_path, handshake_timeout_s=0.5) as s:
        reader, writer = await raw(s.addr)
        writer.write(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, then nothing
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        assert await until(lambda: s.refused())
        assert s.refused() == [("anonymous", "refused: no handshake within 0.5 s")]
        assert len(s.gate.handshakes) == 0


async def test_a_client_that_connects_and_closes_is_refused(ca, tmp_path):
    async with Stack(ca, tmp_path) as s:
        _, writer = await raw(s.addr)
        writer.close()
        assert await until(lambda: s.refused())
        assert s.refused() == [("anonymous", "refused: connection closed during the handshake")]


async def test_large_messages_streams_and_many_connections_relay_intact(ca, tmp_path):
    async with Stack(ca, tmp_path) as s:
        m = write(tmp_path, "gw", ca, "client", "gw")
        big = bytes(range(256)) * (32 << 12)  # 32 MiB
        async with s.channel(m) as ch:
            assert await ch.unary_unary(ECHO)(big, timeout=60) == big
            chunks = [bytes([i]) * (i * 1000 + 1) for i in range(200)]
            got = [r async for r in ch.stream_stream(STREAM)(iter(chunks), timeout=60)]
            assert got == chunks
        channels = [s.channel(m) for _ in range(40)]
        try:
            results = await asyncio.gather(*(ch.unary_unary(ECHO)(b"%d" % i, timeout=30)
                                             for i, ch in enumerate(channels)))
            assert results == [b"%d" % i for i in range(40)]
            assert len(s.table) == 40
        finally:
            await asyncio.gather(*(ch.close() for ch in channels))
        assert await until(lambda: len(s.table) == 0)
        assert s.entries == []


def served_serial(addr: str) -> int:
    import socket
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    host, port = addr.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock, \
            ctx.wrap_socket(sock) as conn:
        return x509.load_der_x509_certificate(conn.getpeercert(binary_form=True)).serial_number


async def test_renewal_serves_new_connections_and_keeps_open_ones(ca, tmp_path):
    async with Stack(ca, tmp_path) as s:
        client = write(tmp_path, "gw", ca, "client", "gw")
        async with s.channel(client) as old:
            calls = old.stream_stream(STREAM)(timeout=30)
            await calls.write(b"before")
            assert await calls.read() == b"before"
            before = pki.load_cert(s.material.cert.read_bytes()).serial_number
            assert await asyncio.to_thread(served_serial, s.addr) == before
            write(tmp_path, "orch", ca, "orchestrator")  # what a renewal writes
            after = await asyncio.to_thread(served_serial, s.addr)
            assert after != before
            await calls.write(b"after")  # the open stream keeps flowing
            assert await calls.read() == b"after"
            await calls.done_writing()
            async with s.channel(client) as new:
                assert await check(new) == "ok"


async def test_close_ends_the_relays_and_empties_the_table(ca, tmp_path):
    s = Stack(ca, tmp_path)
    async with s:
        ch = s.channel(write(tmp_path, "gw", ca, "client", "gw"))
        assert await check(ch) == "ok"
        await s.gate.close()
        assert len(s.table) == 0 and not s.gate.connections
        await ch.close()


# ---- the bounded refusal log

def test_refusals_are_written_up_to_a_rate_then_summarised_per_address():
    written, now = [], [0.0]
    log = RefusalLog(lambda *e: written.append(e), per_address=3, total=5, window_s=60,
                     addresses=2, clock=lambda: now[0])
    results = [log.refuse("10.0.0.1", "anonymous", ACTION, "t", f"refused: {i}", "c")
               for i in range(10)]
    assert results == [True] * 3 + [False] * 7
    assert log.refuse("10.0.0.2", "anonymous", ACTION, "t", "refused: x", "c")
    assert log.refuse("10.0.0.2", "anonymous", ACTION, "t", "refused: x", "c")
    assert not log.refuse("10.0.0.2", "anonymous", ACTION, "t", "refused: x", "c")  # total
    assert not log.refuse("10.0.0.3", "anonymous", ACTION, "t", "refused: y", "c")  # addresses
    assert len(written) == 5 and not log.due()
    now[0] = 61
    assert log.due()
    log.flush()
    summaries = {e[4]: e[3] for e in written[5:]}
    assert summaries["10.0.0.1"].startswith("refused ×7 ") and "last: refused: 9" in summaries["10.0.0.1"]
    assert summaries["10.0.0.2"].startswith("refused ×1 ")
    assert summaries["*"].startswith("refused ×1 ") and summaries["*"].endswith("refused: y")
    # A new window writes again.
    assert log.refuse("10.0.0.1", "anonymous", ACTION, "t", "refused: 10", "c")


async def test_a_busy_address_fails_to_bind(ca, tmp_path):
    async with Stack(ca, tmp_path) as s:
        other = Gate(s.material, s.addr, ("127.0.0.1", s.internal), PeerTable(), s.refusals)
        with pytest.raises(OSError):
            await other.bind()


class FakeTransport:
    def __init__(self):
        self.paused = False

    def pause_reading(self):
        self.paused = True

    def resume_reading(self):
        self.paused = False


def test_a_full_buffer_on_one_side_pauses_reading_on_the_other():
    from common.tls_relay import Connection, Upstream
    conn = Connection(gate=None)
    conn.transport, up = FakeTransport(), Upstream(conn)
    conn.up, up.transport = up, FakeTransport()
    up.pause_writing()  # the gRPC server is not reading: stop reading the client
    assert conn.transport.paused and not up.transport.paused
    up.resume_writing()
    conn.pause_writing()  # the client is not reading: stop reading the gRPC server
    assert up.transport.paused and not conn.transport.paused
    conn.resume_writing()
    assert not up.transport.paused


def half_close_client(addr: str, key: bytes, cert: bytes, tmp_path, how: str) -> bytes:
    """Send b"hello", end the stream (`how`: "fin" = TCP half-close, "close_notify" =
    TLS's), then read everything the gate relays back until it closes."""
    import socket
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    (tmp_path / "hc.key").write_bytes(key)
    (tmp_path / "hc.crt").write_bytes(cert)
    ctx.load_cert_chain(tmp_path / "hc.crt", tmp_path / "hc.key")
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls_ = ctx.wrap_bio(incoming, outgoing)
    host, port = addr.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        while True:
            try:
                tls_.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        tls_.write(b"hello")
        if how == "close_notify":
            try:
                tls_.unwrap()
            except ssl.SSLWantReadError:
                pass
        sock.sendall(outgoing.read())
        if how == "fin":
            sock.shutdown(socket.SHUT_WR)
        got = b""
        while data := sock.recv(65536):
            incoming.write(data)
            try:
                while chunk := tls_.read(65536):
                    got += chunk
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                pass
        return got


@pytest.mark.parametrize("how", ["fin", "close_notify"])
async def test_the_clients_end_of_stream_is_passed_on_and_the_answer_relayed(ca, tmp_path, how):
    async def upstream(reader, writer):  # answers only once the client is done
        data = await reader.read()
        writer.write(data + b" bye")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    table, refusals = PeerTable(), RefusalLog(lambda *e: None)
    gate = Gate(write(tmp_path, "orch", ca, "orchestrator"), "127.0.0.1:0",
                ("127.0.0.1", server.sockets[0].getsockname()[1]), table, refusals)
    addr = f"127.0.0.1:{await gate.bind()}"
    await gate.start()
    try:
        key, cert = ca.issue_new("client", "gw")
        got = await asyncio.to_thread(half_close_client, addr, key, cert, tmp_path, how)
        assert got == b"hello bye"
        assert await until(lambda: not gate.connections and len(table) == 0)
    finally:
        await gate.close()
        server.close()


async def test_a_corrupt_record_after_the_handshake_closes_both_sides(ca, tmp_path):
    async with Stack(ca, tmp_path) as s:
        async with s.channel(write(tmp_path, "gw", ca, "client", "gw")) as ch:
            assert await check(ch) == "ok"
            [conn] = s.gate.connections
            conn.data_received(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # application data, bad MAC
            assert conn.state == "closed" and len(s.table) == 0
