"""AdminService's enrolment RPCs: CreateJoinToken, EnrollProviderKey, RevokeCertificate.

Real gRPC over real mTLS against an in-process lab-mode Orchestrator (TLS, API keys and
the audit log on, a SQLite store), with the CA in tmp_path: callers present a client
certificate of that CA *and* an API key. Hostile and malformed input is refused with a
stable code and changes no file in pki_dir; a client-scoped key is refused outright.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common import config as config_mod, pki, tls
from common.config import Config
from common.errors import OrchError
from llama_orch.v1 import admin_pb2 as A, admin_pb2_grpc, client_pb2 as CL, client_pb2_grpc
from llama_orch.v1 import common_pb2 as C, events_pb2 as E, pool_link_pb2 as L
from llama_orch.v1 import pool_link_pb2_grpc
from orchestrator import auth, join
from orchestrator.core import Orchestrator
from orchestrator.main import build_server, setup_tls
from orchestrator.store import Store
from orchestrator.store.store import TenantRow
from pool_manager.enroll import signed_registration


@dataclass
class Secured:
    orch: Orchestrator
    store: Store
    dir: Path  # pki_dir
    address: str
    admin_key: str
    client_key: str
    channels: list

    def channel(self, key_pem: bytes, cert_pem: bytes) -> grpc.aio.Channel:
        creds = grpc.ssl_channel_credentials((self.dir / "ca.crt").read_bytes(), key_pem,
                                             cert_pem)
        ch = grpc.aio.secure_channel(self.address, creds, options=[
            ("grpc.ssl_target_name_override", pki.ORCHESTRATOR_NAME)])
        self.channels.append(ch)
        return ch

    def client_cert(self, name: str) -> tuple[bytes, bytes]:
        return pki.CA.load(self.dir).issue_new("client", name)

    def admin(self, name: str = "ops") -> admin_pb2_grpc.AdminServiceStub:
        return admin_pb2_grpc.AdminServiceStub(self.channel(*self.client_cert(name)))

    def files(self) -> dict[str, bytes]:
        """What a refused call must not change: every file in pki_dir."""
        return {p.name: p.read_bytes() for p in sorted(self.dir.iterdir()) if p.is_file()}

    async def audit(self):
        await self.store.settle()
        return await self.store.audit_entries(limit=10_000)


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def code_of(call) -> tuple[str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    e = OrchError.from_rpc_error(err.value)
    return e.code, e.param


@pytest.fixture
async def secured(tmp_path) -> AsyncIterator[Secured]:
    cfg = Config(mode="lab")
    cfg.data_dir = tmp_path
    cfg.validate()
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}")
    await store.create_tenant(TenantRow(id="t-ops", name="ops", created_at=1.0))
    keys = []
    for scope in ("admin", "client"):
        row, secret = auth.new_key("t-ops", scope)
        await store.insert_api_key(row)
        keys.append(secret)
    orch = Orchestrator(cfg, store=store)
    await orch.start()
    security, material = setup_tls(cfg)
    server = build_server(orch, security)
    port = server.bind("127.0.0.1:0", tls.server_credentials(material, pki.enrolment_ca_pem()))
    await server.start()
    s = Secured(orch, store, config_mod.pki_dir(cfg), f"127.0.0.1:{port}", *keys, [])
    try:
        yield s
    finally:
        tls.install(None)  # setup_tls installed the orchestrator's identity process-wide
        for ch in s.channels:
            await ch.close()
        await server.stop(0)
        await orch.stop()
        await store.close()


def audit_facts(orch: Orchestrator) -> list[E.Fact]:
    return list(orch.facts.recent([E.FACT_KIND_AUDIT]))


async def refused_and_unchanged(s: Secured, method: str, request, param: str) -> None:
    """The admin call is INVALID_ARGUMENT naming `param`, and nothing changed: no PKI
    file, no AUDIT fact."""
    before = s.files()
    assert await code_of(getattr(s.admin(), method)(request, metadata=bearer(s.admin_key))) == \
        ("INVALID_ARGUMENT", param)
    assert s.files() == before and not audit_facts(s.orch)


# ---- CreateJoinToken ----------------------------------------------------------------------

async def test_a_join_token_from_the_api_lets_its_pool_join_once(secured):
    s = secured
    resp = await s.admin().CreateJoinToken(A.CreateJoinTokenRequest(
        pool_id="pool-a", ttl_seconds=600), metadata=bearer(s.admin_key))
    secret, _, fingerprint = resp.token.partition(".")
    assert fingerprint == pki.fingerprint(pki.CA.load(s.dir).cert)
    assert resp.expires_at.ToDatetime(dt.timezone.utc) > pki.now()
    # Redeem it with a real Join, as a pool manager with no certificate yet does.
    creds = grpc.ssl_channel_credentials((s.dir / "ca.crt").read_bytes(),
                                         *pki.enrolment_identity())
    link = pool_link_pb2_grpc.PoolLinkServiceStub(grpc.aio.secure_channel(
        s.address, creds, options=[("grpc.ssl_target_name_override", pki.ORCHESTRATOR_NAME)]))

    def join_request(pool_id: str) -> L.JoinRequest:
        csr = pki.make_csr(pki.new_key(), pool_id).decode()
        return L.JoinRequest(pool_id=pool_id, join_token=resp.token, csr_pem=csr)

    assert await code_of(link.Join(join_request("pool-b"))) == ("JOIN_TOKEN_INVALID",
                                                                "join_token")
    joined = await link.Join(join_request("pool-a"))
    assert pki.identity_of(pki.load_cert(joined.certificate_pem.encode())).name == "pool-a"
    assert await code_of(link.Join(join_request("pool-a"))) == ("JOIN_TOKEN_INVALID",
                                                                "join_token")
    # The secret is in the response only: not in the files, the facts or the audit log.
    [fact] = [f for f in audit_facts(s.orch) if "join token" in f.message]
    assert fact.pool_id == "pool-a" and secret not in str(fact)
    assert secret not in "".join(v.decode(errors="replace") for v in s.files().values())
    [entry] = [e for e in await s.audit() if e.action == "AdminService/CreateJoinToken"]
    assert (entry.target, entry.outcome) == ("pool-a", "OK")
    assert secret not in f"{entry}"


@pytest.mark.parametrize("pool_id,ttl,param", [
    ("", 0, "pool_id"),
    ("pool_a", 0, "pool_id"),
    ("pool-a\n", 0, "pool_id"),
    ("pool-a.evil", 0, "pool_id"),
    ("../../etc", 0, "pool_id"),
    ("-pool", 0, "pool_id"),
    ("p" * 64, 0, "pool_id"),
    ("x" * 100_000, 0, "pool_id"),
    ("pööl", 0, "pool_id"),
    ("pool-a", 7 * 24 * 3600 + 1, "ttl_seconds"),
    ("pool-a", 2**32 - 1, "ttl_seconds"),
], ids=["empty", "underscore", "trailing-newline", "dot", "path", "leading-dash", "too-long",
        "huge", "non-ascii", "ttl-over-a-week", "ttl-max"])
async def test_malformed_join_token_requests_are_invalid_and_change_nothing(
        secured, pool_id, ttl, param):
    s = secured
    await refused_and_unchanged(s, "CreateJoinToken", A.CreateJoinTokenRequest(
        pool_id=pool_id, ttl_seconds=ttl), param)
    [entry] = [e for e in await s.audit() if e.action == "AdminService/CreateJoinToken"]
    assert entry.outcome == "INVALID_ARGUMENT"


# ---- EnrollProviderKey ----------------------------------------------------------------------

def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


async def test_an_enrolled_provider_key_verifies_that_providers_registrations(secured):
    s = secured
    key = Ed25519PrivateKey.generate()
    resp = await s.admin().EnrollProviderKey(A.EnrollProviderKeyRequest(
        provider_id="acme", public_key=raw_public(key)), metadata=bearer(s.admin_key))
    assert resp.provider_key_id == pki.provider_key_id(raw_public(key))
    # What the Join and Connect checks read: a registration signed with the key verifies.
    signed = signed_registration(key, "pool-a", "127.0.0.1:1", C.Inventory())
    payload = join.verify_registration(signed, "pool-a", join.ProviderKeys(s.dir),
                                       join.Nonces(s.dir), 300)
    assert payload.pool_id == "pool-a"
    # PEM works too (as for the CLI), and names the same key.
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    again = await s.admin().EnrollProviderKey(A.EnrollProviderKeyRequest(
        provider_id="acme", public_key=pem), metadata=bearer(s.admin_key))
    assert again.provider_key_id == resp.provider_key_id
    entries = [e for e in await s.audit() if e.action == "AdminService/EnrollProviderKey"]
    assert [(e.target, e.outcome) for e in entries] == [(resp.provider_key_id, "OK")] * 2
    assert [f.attributes["provider_key_id"] for f in audit_facts(s.orch)] == \
        [resp.provider_key_id] * 2


def _p256_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize("provider_id,public_key,param", [
    ("acme", b"", "public_key"),
    ("acme", b"\x01" * 31, "public_key"),
    ("acme", b"\x01" * 33, "public_key"),
    ("acme", b"-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n", "public_key"),
    ("acme", _p256_pem(), "public_key"),
    ("acme", b"\x30" * 1_000_000, "public_key"),
    ("acme\x00", b"\x01" * 32, "provider_id"),
    ("a" * 129, b"\x01" * 32, "provider_id"),
], ids=["empty", "31-bytes", "33-bytes", "bad-pem", "p256-not-ed25519", "a-megabyte",
        "nul-in-provider", "provider-too-long"])
async def test_bad_provider_keys_are_invalid_and_change_nothing(
        secured, provider_id, public_key, param):
    s = secured
    await refused_and_unchanged(s, "EnrollProviderKey", A.EnrollProviderKeyRequest(
        provider_id=provider_id, public_key=public_key), param)


# ---- RevokeCertificate ----------------------------------------------------------------------

async def test_a_revocation_through_the_api_refuses_the_certificate_on_its_next_call(secured):
    s = secured
    victim_key, victim_cert = s.client_cert("victim")
    victim = client_pb2_grpc.ClientServiceStub(s.channel(victim_key, victim_cert))
    await victim.ListModels(CL.ListModelsRequest(), metadata=bearer(s.client_key))
    serial = pki.load_cert(victim_cert).serial_number
    admin = s.admin()
    await admin.RevokeCertificate(A.RevokeCertificateRequest(
        serial_hex=f"0x{serial:X}", reason="laptop stolen"), metadata=bearer(s.admin_key))
    # The same open channel, the next call: refused (the servers re-read ca.crl).
    assert await code_of(victim.ListModels(CL.ListModelsRequest(),
                                           metadata=bearer(s.client_key))) == \
        ("CERTIFICATE_REJECTED", "")
    assert serial in pki.CA.load(s.dir).revoked()
    # Idempotent; the other admin certificate still works.
    await admin.RevokeCertificate(A.RevokeCertificateRequest(serial_hex=f"{serial:x}"),
                                  metadata=bearer(s.admin_key))
    assert len(pki.CA.load(s.dir).revoked()) == 1
    entries = [e for e in await s.audit() if e.action == "AdminService/RevokeCertificate"]
    assert [(e.target, e.outcome) for e in entries] == [(f"{serial:x}", "OK")] * 2
    assert [f.attributes["newly_revoked"] for f in audit_facts(s.orch)] == [True, False]
    assert audit_facts(s.orch)[0].attributes["reason"] == "laptop stolen"


@pytest.mark.parametrize("serial_hex,reason,param", [
    ("", "", "serial_hex"),
    ("   ", "", "serial_hex"),
    ("0x", "", "serial_hex"),
    ("zz", "", "serial_hex"),
    ("-1f", "", "serial_hex"),
    ("0", "", "serial_hex"),
    ("8" + "0" * 39, "", "serial_hex"),  # 2^159: one bit too many
    ("f" * 10_000, "", "serial_hex"),
    ("1f\x00", "", "serial_hex"),
    ("1f", "r" * 256, "reason"),
    ("1f", "line\nbreak", "reason"),
], ids=["empty", "blank", "bare-0x", "not-hex", "negative", "zero", "too-big", "huge",
        "nul", "reason-too-long", "reason-newline"])
async def test_malformed_serials_are_invalid_and_leave_the_crl_alone(
        secured, serial_hex, reason, param):
    s = secured
    await refused_and_unchanged(s, "RevokeCertificate", A.RevokeCertificateRequest(
        serial_hex=serial_hex, reason=reason), param)


# ---- who may call them ----------------------------------------------------------------------

async def test_a_client_scoped_key_is_refused_every_enrolment_call_and_changes_nothing(secured):
    s = secured
    before = s.files()
    admin = s.admin()
    calls = {"CreateJoinToken": lambda md: admin.CreateJoinToken(
                 A.CreateJoinTokenRequest(pool_id="pool-a"), metadata=md),
             "EnrollProviderKey": lambda md: admin.EnrollProviderKey(
                 A.EnrollProviderKeyRequest(public_key=b"\x01" * 32), metadata=md),
             "RevokeCertificate": lambda md: admin.RevokeCertificate(
                 A.RevokeCertificateRequest(serial_hex="1f"), metadata=md)}
    for name, call in calls.items():
        assert await code_of(call(bearer(s.client_key))) == ("PERMISSION_DENIED", ""), name
        assert (await code_of(call(())))[0] == "UNAUTHENTICATED", name
    assert s.files() == before and not audit_facts(s.orch)
    outcomes = [(e.action, e.outcome) for e in await s.audit()]
    assert outcomes == [(f"AdminService/{name}", outcome) for name in calls
                        for outcome in ("PERMISSION_DENIED", "UNAUTHENTICATED")]


async def test_without_a_ca_the_enrolment_calls_say_so(tmp_path):
    """TLS off and no `llama-orch ca init`: CONFIG_INVALID naming the setting, no CA made."""
    cfg = Config()
    cfg.data_dir = tmp_path
    cfg.validate()
    orch = Orchestrator(cfg)
    server = build_server(orch)
    port = server.bind("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = admin_pb2_grpc.AdminServiceStub(ch)
            assert await code_of(stub.CreateJoinToken(A.CreateJoinTokenRequest(
                pool_id="pool-a"))) == ("CONFIG_INVALID", "security.pki_dir")
            assert await code_of(stub.RevokeCertificate(A.RevokeCertificateRequest(
                serial_hex="1f"))) == ("CONFIG_INVALID", "security.pki_dir")
    finally:
        await server.stop(0)
    assert not (tmp_path / "pki").exists()  # nothing made, not even a lock file
