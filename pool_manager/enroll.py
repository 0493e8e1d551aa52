"""A pool's certificate: enrol (Join) on first start, renew at two thirds of its life.

    <pki_dir>/pool-<id>/key.pem cert.pem ca.pem      the pool's identity (key 0600)

The same files serve the pool manager's callback server and its workers, and dial
the orchestrator; all of them re-read the files when they change, so renewal drops no
open stream (new connections get the new certificate).

First contact: a pool must trust the CA before it hands over its token. It takes
`pool-<id>/ca.pem`, else `<pki_dir>/ca.crt` (copied there by the operator, or shared
with the orchestrator on one machine), else the CA fingerprint at the end of the join
token: the orchestrator's handshake carries its CA, and only the one whose sha256
matches is pinned. In home mode a pool that can read the CA's key issues its own
certificate (pools are trusted there).

Platform mode: every Join and Connect carries a RegistrationPayload signed with the
provider's Ed25519 key (security.provider_key).
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import timestamp_pb2

from common import grpc_server, log, pki, tls
from common.config import Config, pki_dir, split_address
from common.errors import ConfigError, OrchError
from llama_orch.v1 import common_pb2, pool_link_pb2, pool_link_pb2_grpc

JOIN_TIMEOUT_S = 15.0
RENEW_AT = 2 / 3  # of the lifetime
RETRY_S = 60.0
Describe = Callable[[], tuple[str, common_pb2.Inventory]]  # (endpoint, inventory) to sign


def load_provider_key(path: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).expanduser().read_bytes(), None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load security.provider_key {path}: {exc}",
                          param="security.provider_key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("security.provider_key must be an Ed25519 private key (PEM)",
                          param="security.provider_key")
    return key


def signed_registration(key: Ed25519PrivateKey, pool_id: str, endpoint: str,
                        inventory: common_pb2.Inventory) -> pool_link_pb2.SignedRegistration:
    """Sign the payload's bytes as serialised here; the orchestrator verifies those
    exact bytes (protobuf serialisation is not canonical, so it never re-encodes)."""
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    payload = pool_link_pb2.RegistrationPayload(pool_id=pool_id, endpoint=endpoint,
                                                inventory=inventory, nonce=os.urandom(16),
                                                timestamp=ts).SerializeToString()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return pool_link_pb2.SignedRegistration(payload=payload, signature=key.sign(payload),
                                            provider_key_id=pki.provider_key_id(raw))


def fetch_ca(address: str, fingerprint: str) -> bytes:
    """The CA certificate in the orchestrator's handshake whose sha256 is `fingerprint`.

    Unverified on purpose (we do not know the CA yet): the fingerprint is the check.
    The orchestrator asks for a client certificate; under TLS 1.3 our side of the
    handshake completes before it refuses us, which is all we need."""
    host, port = split_address(address, "pool.orchestrator")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host, port), timeout=10) as sock, \
            ctx.wrap_socket(sock, server_hostname=pki.ORCHESTRATOR_NAME) as tls_sock:
        # Public in Python 3.13; the same method on the ssl object before that.
        chain = (getattr(tls_sock, "get_unverified_chain", None)
                 or tls_sock._sslobj.get_unverified_chain)()  # noqa: SLF001
    for item in chain or ():
        der = item if isinstance(item, bytes) else \
            item.public_bytes(ssl._ssl.ENCODING_DER)  # noqa: SLF001
        cert = x509.load_der_x509_certificate(der)
        if pki.fingerprint(cert) == fingerprint:
            return pki.cert_pem(cert)
    raise OrchError("JOIN_TOKEN_INVALID", f"the orchestrator at {address} does not show the CA "
                    "named in the join token (wrong address, or a token from another CA)",
                    param="join_token")


def _same_cert(a: bytes, b: bytes) -> bool:
    try:
        return pki.fingerprint(pki.load_cert(a)) == pki.fingerprint(pki.load_cert(b))
    except ValueError:
        return False


class PoolIdentity:
    """This pool's key and certificate, from the orchestrator's CA."""

    def __init__(self, cfg: Config, join_token: str = "",
                 provider_key: Ed25519PrivateKey | None = None):
        self.cfg = cfg
        self.pool_id = cfg.pool.id
        self.join_token = join_token
        self.provider_key = provider_key
        self.root = pki_dir(cfg)
        dir = self.root / f"pool-{self.pool_id}"
        self.material = tls.Material(dir / "key.pem", dir / "cert.pem", dir / "ca.pem")

    async def ensure_retrying(self, describe: Describe) -> None:
        """`ensure`, waiting out an orchestrator that is not up yet; refusals raise."""
        backoff = 0.5
        while True:
            try:
                return await self.ensure(describe)
            except OrchError as err:
                if err.code not in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                    raise
                log.emit("pool_manager", "pool.join_waiting", f"{err.code}: {err.message}",
                         level="warning", pool_id=self.pool_id)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    def sign(self, endpoint: str,
             inventory: common_pb2.Inventory) -> pool_link_pb2.SignedRegistration | None:
        if self.provider_key is None:
            return None
        return signed_registration(self.provider_key, self.pool_id, endpoint, inventory)

    def certificate(self) -> x509.Certificate | None:
        try:
            return pki.load_cert(self.material.cert.read_bytes())
        except (OSError, ValueError):
            return None

    def renew_in(self) -> float:
        """Seconds until renewal is due (two thirds into the lifetime); 0 when due now."""
        cert = self.certificate()
        if cert is None:
            return 0.0
        start, end = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
        return max(0.0, start + (end - start) * RENEW_AT - time.time())

    async def ensure(self, describe: Describe) -> None:
        """Have a valid certificate: none yet (or an expired one) means joining, with
        the join token."""
        cert = self.certificate() if self.material.exists() else None
        if cert is not None and cert.not_valid_after_utc > pki.now():
            return
        pki.check_name("pool", self.pool_id)
        if self.cfg.mode == "home" and (self.root / "ca.key").exists():
            self._self_issue()
            return
        if not self.join_token:
            raise ConfigError(f"pool {self.pool_id} has no valid certificate in "
                              f"{self.material.cert.parent}; start it once with --join-token "
                              "(or LLAMA_ORCH_JOIN_TOKEN) from `llama-orch ca join-token`",
                              param="join_token")
        anchor = await self._anchor()
        key_pem, cert_pem = pki.enrolment_identity()
        creds = grpc.ssl_channel_credentials(anchor, key_pem, cert_pem)
        await self._join(creds, self.join_token, anchor, describe)
        log.emit("pool_manager", "pool.enrolled", f"joined as {self.pool_id}; certificate in "
                 f"{self.material.cert.parent}", pool_id=self.pool_id)

    async def renew(self, describe: Describe) -> None:
        """A fresh key and certificate, asked for with the current one (no token)."""
        if self.cfg.mode == "home" and (self.root / "ca.key").exists():
            self._self_issue()
            return
        ca = self.material.ca.read_bytes()
        await self._join(tls.channel_credentials(self.material), "", ca, describe)
        log.emit("pool_manager", "pool.certificate_renewed", f"renewed; valid until "
                 f"{self.certificate().not_valid_after_utc.isoformat()}", pool_id=self.pool_id)

    async def renew_forever(self, describe: Describe) -> None:
        while True:
            await asyncio.sleep(self.renew_in())
            try:
                await self.renew(describe)
            except (OrchError, OSError) as exc:
                err = exc if isinstance(exc, OrchError) else OrchError("UNAVAILABLE", str(exc))
                log.emit("pool_manager", "pool.renew_failed", f"{err.code}: {err.message}",
                         level="warning", pool_id=self.pool_id)
                await asyncio.sleep(RETRY_S)

    async def _anchor(self) -> bytes:
        """The CA to trust for joining; a copy on disk must match the token's pin."""
        _, _, fingerprint = self.join_token.partition(".")
        for path in (self.material.ca, self.root / "ca.crt"):
            if path.exists() and (not fingerprint or pki.fingerprint(
                    pki.load_cert(path.read_bytes())) == fingerprint):
                return path.read_bytes()
        if not fingerprint:
            raise ConfigError(f"no CA to trust: copy the orchestrator's ca.crt to {self.root} "
                              "or use a join token that carries its fingerprint", param="join_token")
        try:
            return await asyncio.to_thread(fetch_ca, self.cfg.pool.orchestrator, fingerprint)
        except (OSError, ssl.SSLError) as exc:
            raise OrchError("UNAVAILABLE", f"cannot reach {self.cfg.pool.orchestrator} to "
                            f"fetch its CA: {exc}") from None

    async def _join(self, creds: grpc.ChannelCredentials, token: str, anchor: bytes,
                    describe: Describe) -> None:
        key = pki.new_key()
        request = pool_link_pb2.JoinRequest(
            pool_id=self.pool_id, join_token=token,
            csr_pem=pki.make_csr(key, pki.uri_for("pool", self.pool_id)).decode())
        if self.provider_key is not None:
            request.signed.CopyFrom(self.sign(*describe()))
        async with grpc_server.channel(self.cfg.pool.orchestrator, creds,
                                       target_name=pki.ORCHESTRATOR_NAME) as ch:
            try:
                resp = await pool_link_pb2_grpc.PoolLinkServiceStub(ch).Join(
                    request, timeout=JOIN_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                raise OrchError.from_rpc_error(exc) from None
        key_pem, cert_pem = pki.key_pem(key), resp.certificate_pem.encode()
        cert = pki.load_cert(cert_pem)
        ident = pki.identity_of(cert)
        if not pki.key_matches(key_pem, cert_pem) or ident is None or \
                (ident.role, ident.name) != ("pool", self.pool_id) or \
                not _same_cert(resp.ca_certificate_pem.encode(), anchor):
            raise OrchError("CERTIFICATE_REJECTED", "the orchestrator returned a certificate "
                            "for another key, identity or CA")
        self._store(key_pem, cert_pem, anchor)

    def _store(self, key_pem: bytes, cert_pem: bytes, ca_pem: bytes) -> None:
        # CA, key, then certificate: a reader between the last two sees a key that does
        # not match and reads again (tls.Material.read).
        pki.write_atomic(self.material.ca, ca_pem)
        pki.write_private(self.material.key, key_pem)
        pki.write_atomic(self.material.cert, cert_pem)

    def _self_issue(self) -> None:
        ca = pki.CA.load(self.root)
        key_pem, cert_pem = ca.issue_new("pool", self.pool_id, self.cfg.security.cert_ttl_s)
        self._store(key_pem, cert_pem, ca.cert_pem)
        log.emit("pool_manager", "pool.enrolled", "home mode: certificate issued by the local CA",
                 pool_id=self.pool_id)
