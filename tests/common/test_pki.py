"""The PKI (common/pki.py), peer checks and credentials (common/tls.py), and enrolment
(orchestrator/join.py): CA, certificates and their roles, revocation, join tokens,
signed registrations, the Join decision, and real in-process TLS handshakes."""

from __future__ import annotations

import asyncio
import os
import stat
import time

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common import config, pki, tls
from common.errors import OrchError
from llama_orch.v1 import common_pb2, pool_link_pb2
from orchestrator import join
from pool_manager.enroll import signed_registration


@pytest.fixture
def ca(tmp_path):
    return pki.CA.init(tmp_path / "pki")[0]


def cfg_for(tmp_path, mode="lab", **security):
    cfg = config.Config(mode=mode, data_dir=tmp_path)
    cfg.security.pki_dir = str(tmp_path / "pki")
    for k, v in security.items():
        setattr(cfg.security, k, v)
    return cfg.validate()


def sans(cert):
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (ext.get_values_for_type(x509.UniformResourceIdentifier),
            ext.get_values_for_type(x509.DNSName))


def eku(cert):
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


# ---- the CA

def test_ca_init_makes_a_p256_ca_with_a_private_key_and_is_idempotent(tmp_path):
    ca, created = pki.CA.init(tmp_path / "pki")
    assert created
    assert stat.S_IMODE(os.stat(tmp_path / "pki" / "ca.key").st_mode) == 0o600
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey) and ca.key.curve.name == "secp256r1"
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.cert.issuer == ca.cert.subject
    again, created = pki.CA.init(tmp_path / "pki")
    assert not created and pki.fingerprint(again.cert) == pki.fingerprint(ca.cert)


def test_loading_a_missing_ca_says_how_to_make_one(tmp_path):
    with pytest.raises(OrchError) as err:
        pki.CA.load(tmp_path / "nothing")
    assert err.value.code == "CONFIG_INVALID" and "ca init" in err.value.message


@pytest.mark.parametrize("role, name, uri, dns, usages", [
    ("pool", "gpu-1", "llama-orch://pool/gpu-1", ["gpu-1.pool.llama-orch"],
     {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}),
    ("client", "gateway", "llama-orch://client/gateway", [], {ExtendedKeyUsageOID.CLIENT_AUTH}),
    ("orchestrator", "", "llama-orch://orchestrator", ["orchestrator.llama-orch"],
     {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}),
], ids=["pool", "client", "orchestrator"])
def test_a_certificate_names_its_identity_and_role(ca, role, name, uri, dns, usages):
    _, pem = ca.issue_new(role, name, ttl_s=3600)
    cert = pki.load_cert(pem)
    assert sans(cert) == ([uri], dns)
    assert eku(cert) == usages
    ident = pki.identity_of(cert)
    assert (ident.role, ident.name, ident.serial) == (role, name, cert.serial_number)
    cert.verify_directly_issued_by(ca.cert)


def test_the_ca_ignores_the_names_a_csr_asks_for(ca):
    key = pki.new_key()
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([
               x509.DNSName("orchestrator.llama-orch"), x509.DNSName("other.pool.llama-orch"),
               x509.UniformResourceIdentifier("llama-orch://orchestrator")]), critical=False)
           .sign(key, hashes.SHA256()))
    cert = ca.issue(csr.public_bytes(serialization.Encoding.PEM), "pool", "p1", 3600,
                    dns=("evil.example",))
    assert sans(cert) == (["llama-orch://pool/p1"], ["p1.pool.llama-orch"])


@pytest.mark.parametrize("role, name, dns", [
    ("pool", "has_underscore", ()), ("pool", "", ()), ("pool", "a.b", ()),
    ("admin", "x", ()), ("client", "ok", ("sneaky.pool.llama-orch",))])
def test_bad_names_are_refused(ca, role, name, dns):
    with pytest.raises(OrchError) as err:
        ca.issue_new(role, name, dns=dns)
    assert err.value.code == "INVALID_ARGUMENT"


@pytest.mark.parametrize("name", ["pool-a\n", "pool-a\r", " pool-a", "pool-a "],
                         ids=["trailing-lf", "trailing-cr", "leading-space", "trailing-space"])
def test_names_are_matched_whole_so_whitespace_around_them_is_refused(name):
    # A `$`-anchored re.match lets "pool-a\n" through; the name must match in full.
    pki.check_name("pool", "pool-a")
    with pytest.raises(OrchError) as err:
        pki.check_name("pool", name)
    assert (err.value.code, err.value.param) == ("INVALID_ARGUMENT", "pool_id")


@pytest.mark.parametrize("key", [ec.generate_private_key(ec.SECP384R1()),
                                 ed25519.Ed25519PrivateKey.generate()], ids=["p384", "ed25519"])
def test_only_p256_keys_are_certified(ca, key):
    algo = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, algo)
    with pytest.raises(OrchError) as err:
        ca.issue(csr.public_bytes(serialization.Encoding.PEM), "pool", "p1")
    assert err.value.code == "CERTIFICATE_REJECTED" and "P-256" in err.value.message


def test_ensure_issues_when_missing_or_two_thirds_used_and_not_otherwise(ca, tmp_path):
    key, cert = tmp_path / "o.key", tmp_path / "o.crt"
    assert ca.ensure(key, cert, "orchestrator", ttl_s=3600)
    assert not ca.ensure(key, cert, "orchestrator", ttl_s=3600)
    # The chain carries the CA, so a joining pool can pin it from the handshake.
    assert cert.read_bytes().endswith(ca.cert_pem)
    k, c = ca.issue_new("orchestrator", ttl_s=3600)
    old = pki.load_cert(c)
    at = old.not_valid_before_utc + (old.not_valid_after_utc - old.not_valid_before_utc) * 0.7
    assert pki.remaining_fraction(old, at) < 1 / 3
    other = pki.CA.init(tmp_path / "other")[0]
    k, c = other.issue_new("orchestrator", ttl_s=3600)
    key.write_bytes(k)
    cert.write_bytes(c)
    assert ca.ensure(key, cert, "orchestrator", ttl_s=3600)  # another CA's: replaced
    pki.load_cert(cert.read_bytes()).verify_directly_issued_by(ca.cert)


# ---- revocation

def test_revocation_is_seen_by_a_running_checker_and_is_idempotent(ca):
    _, pem = ca.issue_new("pool", "p1")
    serial = pki.load_cert(pem).serial_number
    revocations = pki.Revocations(ca.dir / "ca.crl", ca.cert)
    assert not revocations.is_revoked(serial)
    assert ca.revoke(serial) and not ca.revoke(serial)
    assert revocations.is_revoked(serial)
    assert pki.parse_serial(format(serial, "x")) == serial == pki.parse_serial(hex(serial))


def test_a_crl_not_signed_by_the_ca_is_an_error_not_an_empty_list(ca, tmp_path):
    other = pki.CA.init(tmp_path / "other")[0]
    (ca.dir / "ca.crl").write_bytes((other.dir / "ca.crl").read_bytes())
    with pytest.raises(OrchError) as err:
        pki.Revocations(ca.dir / "ca.crl", ca.cert).is_revoked(1)
    assert err.value.code == "CERTIFICATE_REJECTED"


# ---- peer checks

class FakeContext:
    def __init__(self, pem: bytes = b""):
        self.pem = pem

    def auth_context(self):
        return {"x509_pem_cert": [self.pem]} if self.pem else {}


def test_peer_checks_refuse_each_wrong_caller_with_its_code(ca, tmp_path):
    refused = []
    check = tls.PeerCheck(ca.cert, pki.Revocations(ca.dir / "ca.crl", ca.cert),
                          on_refused=lambda who, what, err: refused.append((who, err.code)))
    client = ca.issue_new("client", "gw")[1]
    pool = ca.issue_new("pool", "p1")[1]
    revoked = ca.issue_new("client", "old")[1]
    ca.revoke(pki.load_cert(revoked).serial_number)
    expired = ca.issue_new("client", "late", ttl_s=-60)[1]
    enrolment = pki.enrolment_identity()[1]
    assert check.check(FakeContext(client), {"client"}, "ClientService/Submit").name == "gw"
    cases = [(b"", "UNAUTHENTICATED"), (enrolment, "UNAUTHENTICATED"),
             (revoked, "CERTIFICATE_REJECTED"), (expired, "CERTIFICATE_REJECTED"),
             (pool, "PERMISSION_DENIED")]
    for pem, code in cases:
        with pytest.raises(OrchError) as err:
            check.check(FakeContext(pem), {"client"}, "ClientService/Submit")
        assert err.value.code == code, pem[:40]
    assert [c for _, c in refused] == [c for _, c in cases]
    assert "llama-orch://pool/p1" in str(refused[-1][0])
    # Whole identities may be allowed, not just roles.
    assert check.check(FakeContext(pool), {"llama-orch://pool/p1"}, "x").name == "p1"
    with pytest.raises(OrchError):
        check.check(FakeContext(pool), {"llama-orch://pool/p2"}, "x")


def test_the_enrolment_ca_is_public_and_its_certificates_name_nobody(ca):
    key_pem, cert_pem = pki.enrolment_identity()
    cert = pki.load_cert(cert_pem)
    assert pki.identity_of(cert) is None
    enrol_ca = pki.load_cert(pki.enrolment_ca_pem())
    cert.verify_directly_issued_by(enrol_ca)
    assert tls.PeerCheck(ca.cert).identify(FakeContext(cert_pem)) is None


async def test_guard_keeps_each_methods_kind_and_checks_first(ca):
    class Servicer:
        async def Unary(self, request, context):
            return request + 1

        async def Stream(self, request, context):
            for i in range(request):
                yield i

    class Aborted(Exception):
        pass

    class Ctx(FakeContext):
        async def abort_with_status(self, status):
            raise Aborted(status.details)

    guarded = tls.guard(Servicer(), tls.PeerCheck(ca.cert), {"client"}, "S")
    client = Ctx(ca.issue_new("client", "c")[1])
    assert await guarded.Unary(1, client) == 2
    assert [i async for i in guarded.Stream(3, client)] == [0, 1, 2]
    with pytest.raises(Aborted):
        await guarded.Unary(1, Ctx(ca.issue_new("pool", "p")[1]))
    with pytest.raises(Aborted):
        [i async for i in guarded.Stream(3, Ctx())]


def test_material_reads_a_matching_pair_only(ca, tmp_path):
    k1, c1 = ca.issue_new("pool", "p1")
    k2, _ = ca.issue_new("pool", "p1")
    m = tls.Material(tmp_path / "k", tmp_path / "c", tmp_path / "ca")
    m.key.write_bytes(k1), m.cert.write_bytes(c1), m.ca.write_bytes(ca.cert_pem)
    assert m.read()[:2] == (k1, c1)
    m.key.write_bytes(k2)  # the key of a renewal whose certificate is not written yet
    assert not pki.key_matches(k2, c1)
    with pytest.raises(OrchError):
        m.read()


# ---- join tokens

def test_join_tokens_are_single_use_bound_to_a_pool_hashed_and_expire(ca):
    tokens = join.JoinTokens(ca.dir, pki.fingerprint(ca.cert))
    token, expires = tokens.create("p1", ttl_s=60, now=1000.0)
    secret, _, fp = token.partition(".")
    assert fp == pki.fingerprint(ca.cert) and expires == 1060.0
    stored = (ca.dir / "join_tokens.json").read_text()
    assert secret not in stored and "p1" in stored
    assert stat.S_IMODE(os.stat(ca.dir / "join_tokens.json").st_mode) == 0o600

    def refused(tok, pool, now):
        with pytest.raises(OrchError) as err:
            tokens.check(tok, pool, now=now)
        assert err.value.code == "JOIN_TOKEN_INVALID"
        return err.value.message

    assert "another pool" in refused(token, "p2", 1001.0)
    assert "expired" in refused(token, "p1", 1061.0)
    assert "another orchestrator" in refused(secret + "." + "0" * 64, "p1", 1001.0)
    assert "unknown" in refused("made-up", "p1", 1001.0)
    key = tokens.check(token, "p1", now=1001.0)
    assert tokens.check(secret, "p1", now=1001.0) == key  # the fingerprint is optional
    tokens.consume(key)
    assert "already used" in refused(token, "p1", 1001.0)
    with pytest.raises(OrchError):
        tokens.consume(key)


# ---- signed registrations

@pytest.fixture
def provider(ca):
    key = ed25519.Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    keys = join.ProviderKeys(ca.dir)
    key_id = keys.enroll(pub, "acme")
    return key, key_id, keys, join.Nonces(ca.dir)


def registration(key, pool="p1", **over):
    inv = common_pb2.Inventory()
    signed = signed_registration(key, pool, "10.0.0.5:9200", inv)
    if over:
        payload = pool_link_pb2.RegistrationPayload.FromString(signed.payload)
        for k, v in over.items():
            if k == "timestamp":
                payload.timestamp.FromSeconds(int(v))
            else:
                setattr(payload, k, v)
        signed.payload = payload.SerializeToString()
        signed.signature = key.sign(signed.payload)
    return signed


def test_a_good_signed_registration_verifies_once(provider):
    key, key_id, keys, nonces = provider
    signed = registration(key)
    assert signed.provider_key_id == key_id
    payload = join.verify_registration(signed, "p1", keys, nonces, 300)
    assert payload.pool_id == "p1" and payload.endpoint == "10.0.0.5:9200"
    nonces.claim(payload.nonce, time.time() + 600)
    with pytest.raises(OrchError) as err:
        join.verify_registration(signed, "p1", keys, nonces, 300)
    assert err.value.code == "REGISTRATION_REJECTED" and "replayed" in err.value.message


def _tamper_payload(s):
    s.payload = s.payload[:-1] + bytes([s.payload[-1] ^ 1])


def _tamper_signature(s):
    s.signature = bytes([s.signature[0] ^ 1]) + s.signature[1:]


@pytest.mark.parametrize("make, why", [
    (lambda k: (lambda s: (setattr(s, "provider_key_id", "ed25519:" + "0" * 32), s)[1])(
        registration(k)), "unknown provider key"),
    (lambda k: (lambda s: (_tamper_payload(s), s)[1])(registration(k)), "does not verify"),
    (lambda k: (lambda s: (_tamper_signature(s), s)[1])(registration(k)), "does not verify"),
    (lambda k: registration(k, timestamp=time.time() - 301), "off"),
    (lambda k: registration(k, timestamp=time.time() + 301), "off"),
    (lambda k: registration(k, pool="p2"), "signed for pool"),
    (lambda k: registration(k, nonce=b"short"), "nonce"),
    (lambda k: registration(ed25519.Ed25519PrivateKey.generate()), "unknown provider key"),
], ids=["unknown-key-id", "tampered-payload", "tampered-signature", "stale", "future",
        "other-pool", "short-nonce", "stranger's-key"])
def test_bad_registrations_are_rejected(provider, make, why):
    key, _, keys, nonces = provider
    with pytest.raises(OrchError) as err:
        join.verify_registration(make(key), "p1", keys, nonces, 300)
    assert err.value.code == "REGISTRATION_REJECTED" and why in err.value.message


def test_provider_keys_accept_raw_or_pem_ed25519_only(ca):
    keys = join.ProviderKeys(ca.dir)
    raw = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert keys.enroll(raw) == pki.provider_key_id(raw) and keys.get(pki.provider_key_id(raw))
    p256 = pki.new_key().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(OrchError):
        keys.enroll(p256)


# ---- the Join decision

def join_request(pool="p1", token="", signed=None):
    key = pki.new_key()
    req = pool_link_pb2.JoinRequest(pool_id=pool, join_token=token,
                                    csr_pem=pki.make_csr(key, "x").decode())
    if signed is not None:
        req.signed.CopyFrom(signed)
    return req


def test_lab_join_with_a_token_gets_a_pool_certificate_once(tmp_path):
    cfg = cfg_for(tmp_path)
    ca = pki.CA.init(config.pki_dir(cfg))[0]
    enrol = join.Enrolment(cfg, ca)
    token, _ = join.create_join_token(cfg, "p1")
    resp = enrol.join(join_request(token=token), None)
    cert = pki.load_cert(resp.certificate_pem.encode())
    assert pki.identity_of(cert).name == "p1" and resp.ca_certificate_pem.encode() == ca.cert_pem
    with pytest.raises(OrchError) as err:
        enrol.join(join_request(token=token), None)
    assert err.value.code == "JOIN_TOKEN_INVALID"


def test_a_refused_join_burns_no_token_and_claims_no_nonce(tmp_path):
    cfg = cfg_for(tmp_path)
    ca = pki.CA.init(config.pki_dir(cfg))[0]
    enrol = join.Enrolment(cfg, ca)
    token, _ = join.create_join_token(cfg, "p1")
    key = ed25519.Ed25519PrivateKey.generate()
    join.enroll_provider_key(cfg, key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    signed = registration(key)
    before = {p.name: p.read_bytes() for p in config.pki_dir(cfg).glob("*.json")}
    bad_csr = join_request(token=token, signed=signed)
    bad_csr.csr_pem = "not a csr"
    for req, code in [(bad_csr, "CERTIFICATE_REJECTED"),
                      (join_request(pool="p2", token=token, signed=registration(key, "p2")),
                       "JOIN_TOKEN_INVALID"),
                      (join_request(token=token, signed=registration(key, nonce=b"x")),
                       "REGISTRATION_REJECTED")]:
        with pytest.raises(OrchError) as err:
            enrol.join(req, None)
        assert err.value.code == code
    assert {p.name: p.read_bytes() for p in config.pki_dir(cfg).glob("*.json")} == before
    assert enrol.join(join_request(token=token, signed=signed), None).certificate_pem


def test_platform_join_needs_a_signed_registration(tmp_path):
    cfg = cfg_for(tmp_path, mode="platform")
    ca = pki.CA.init(config.pki_dir(cfg))[0]
    enrol = join.Enrolment(cfg, ca)
    token, _ = join.create_join_token(cfg, "p1")
    with pytest.raises(OrchError) as err:
        enrol.join(join_request(token=token), None)
    assert err.value.code == "REGISTRATION_REJECTED" and "platform" in err.value.message
    key = ed25519.Ed25519PrivateKey.generate()
    join.enroll_provider_key(cfg, key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    assert enrol.join(join_request(token=token, signed=registration(key)), None).certificate_pem


def test_a_pool_renews_its_own_certificate_without_a_token_but_not_anothers(tmp_path):
    cfg = cfg_for(tmp_path)
    ca = pki.CA.init(config.pki_dir(cfg))[0]
    enrol = join.Enrolment(cfg, ca)
    me = pki.identity_of(pki.load_cert(ca.issue_new("pool", "p1")[1]))
    assert enrol.join(join_request(), me).certificate_pem
    for pool, peer in [("p2", me), ("p1", None)]:
        with pytest.raises(OrchError) as err:
            enrol.join(join_request(pool=pool), peer)
        assert err.value.code == "JOIN_TOKEN_INVALID"


# ---- real handshakes (in-process gRPC)

class Health(health_pb2_grpc.HealthServicer):
    async def Check(self, request, context):
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def served_serial(addr: str) -> int:
    """The serial of the certificate a new connection is served (no client cert: TLS
    1.3 lets our side finish before the server refuses us)."""
    import socket
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    host, port = addr.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock, \
            ctx.wrap_socket(sock) as s:
        return x509.load_der_x509_certificate(s.getpeercert(binary_form=True)).serial_number


def write(tmp_path, name, ca, role, ident="", ttl_s=3600):
    key, cert = ca.issue_new(role, ident, ttl_s=ttl_s)
    m = tls.Material(tmp_path / f"{name}.key", tmp_path / f"{name}.crt", tmp_path / "ca.crt")
    pki.write_private(m.key, key)
    pki.write_atomic(m.cert, cert)
    pki.write_atomic(m.ca, ca.cert_pem)
    return m


async def serve(m, extra_roots=b""):
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(Health(), server)
    port = server.add_secure_port("127.0.0.1:0", tls.server_credentials(m, extra_roots))
    await server.start()
    return server, f"127.0.0.1:{port}"


async def call(ch) -> str:
    try:
        await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return "ok"
    except grpc.aio.AioRpcError as exc:
        return exc.code().name


async def test_handshakes_refuse_no_certificate_another_ca_and_expired(ca, tmp_path):
    server, addr = await serve(write(tmp_path, "orch", ca, "orchestrator"), pki.enrolment_ca_pem())
    try:
        good = write(tmp_path, "gw", ca, "client", "gw")
        other = pki.CA.init(tmp_path / "other")[0]
        stranger = write(tmp_path / "other", "gw", other, "client", "gw")
        stranger = tls.Material(stranger.key, stranger.cert, good.ca)  # trusts our CA
        expired = write(tmp_path, "late", ca, "client", "late", ttl_s=-60)
        results = {}
        for name, m in [("good", good), ("stranger", stranger), ("expired", expired)]:
            async with tls.channel(addr, m, pki.ORCHESTRATOR_NAME) as ch:
                results[name] = await call(ch)
        no_cert = grpc.ssl_channel_credentials(ca.cert_pem)
        async with grpc.aio.secure_channel(addr, no_cert, options=[
                ("grpc.ssl_target_name_override", pki.ORCHESTRATOR_NAME)]) as ch:
            results["none"] = await call(ch)
        # The public enrolment certificate passes the handshake (Join must be reachable).
        ek, ec_ = pki.enrolment_identity()
        async with grpc.aio.secure_channel(addr, grpc.ssl_channel_credentials(ca.cert_pem, ek, ec_),
                                           options=[("grpc.ssl_target_name_override",
                                                     pki.ORCHESTRATOR_NAME)]) as ch:
            results["enrolment"] = await call(ch)
        assert results == {"good": "ok", "stranger": "UNAVAILABLE", "expired": "UNAVAILABLE",
                           "none": "UNAVAILABLE", "enrolment": "ok"}
    finally:
        await server.stop(0)


async def test_a_worker_must_show_the_certificate_of_the_pool_that_announced_it(ca, tmp_path):
    orch = write(tmp_path, "orch", ca, "orchestrator")
    server, addr = await serve(write(tmp_path, "b", ca, "pool", "pool-b"))
    try:
        async with tls.worker_channel(addr, "pool-a", orch) as ch:
            assert await call(ch) == "UNAVAILABLE"
        async with tls.worker_channel(addr, "pool-b", orch) as ch:
            assert await call(ch) == "ok"
        # A worker server trusts only our CA: the enrolment certificate gets nowhere.
        ek, ec_ = pki.enrolment_identity()
        async with grpc.aio.secure_channel(addr, grpc.ssl_channel_credentials(ca.cert_pem, ek, ec_),
                                           options=[("grpc.ssl_target_name_override",
                                                     pki.pool_dns("pool-b"))]) as ch:
            assert await call(ch) == "UNAVAILABLE"
    finally:
        await server.stop(0)


async def test_renewal_serves_new_connections_and_keeps_open_ones(ca, tmp_path):
    m = write(tmp_path, "orch", ca, "orchestrator")
    server, addr = await serve(m)
    client = write(tmp_path, "gw", ca, "client", "gw")
    try:
        old = tls.channel(addr, client, pki.ORCHESTRATOR_NAME)
        assert await call(old) == "ok"
        before = pki.load_cert(m.cert.read_bytes()).serial_number
        assert await asyncio.to_thread(served_serial, addr) == before
        renewed = write(tmp_path, "orch", ca, "orchestrator")  # what a renewal writes
        after = pki.load_cert(renewed.cert.read_bytes()).serial_number
        assert await call(old) == "ok"  # the open connection keeps its session
        assert await asyncio.to_thread(served_serial, addr) == after  # new ones: the new cert
        fresh = tls.channel(addr, client, pki.ORCHESTRATOR_NAME)
        assert await call(fresh) == "ok"
        await old.close()
        await fresh.close()
    finally:
        await server.stop(0)


# ---- the pool's side

def pool_identity(tmp_path, mode="lab", token=""):
    from pool_manager.enroll import PoolIdentity
    cfg = cfg_for(tmp_path, mode=mode)
    cfg.pool.id = "p1"
    return PoolIdentity(cfg, token)


def test_renewal_falls_due_at_two_thirds_of_the_lifetime(ca, tmp_path):
    ident = pool_identity(tmp_path)
    assert ident.renew_in() == 0.0  # no certificate yet
    key, cert = ca.issue_new("pool", "p1", ttl_s=3 * 3600)
    ident._store(key, cert, ca.cert_pem)
    c = pki.load_cert(cert)
    due = c.not_valid_before_utc.timestamp() + (c.not_valid_after_utc.timestamp()
                                                 - c.not_valid_before_utc.timestamp()) * 2 / 3
    assert abs(ident.renew_in() - (due - time.time())) < 5


async def test_a_pool_without_a_certificate_needs_a_token_except_at_home(tmp_path):
    with pytest.raises(OrchError) as err:
        await pool_identity(tmp_path).ensure(lambda: ("", common_pb2.Inventory()))
    assert err.value.code == "CONFIG_INVALID" and "--join-token" in err.value.message
    # Home mode trusts a pool that can read the CA's key (one machine, one data dir).
    ca = pki.CA.init(tmp_path / "pki")[0]
    home = pool_identity(tmp_path, mode="home")
    await home.ensure(lambda: ("", common_pb2.Inventory()))
    assert pki.identity_of(home.certificate()).name == "p1"
    home.certificate().verify_directly_issued_by(ca.cert)


async def test_a_gateway_or_cli_dials_with_the_certificate_named_in_its_environment(
        ca, tmp_path, monkeypatch):
    from common import grpc_server
    server, addr = await serve(write(tmp_path, "orch", ca, "orchestrator"))
    client = write(tmp_path, "gw", ca, "client", "gw")
    try:
        for var, path in zip(tls.ENV, (client.key, client.cert, client.ca)):
            monkeypatch.setenv(var, str(path))
        async with grpc_server.channel(addr) as ch:
            assert await call(ch) == "ok"
    finally:
        tls.install(None)
        await server.stop(0)
