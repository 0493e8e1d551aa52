"""mTLS for every llama-orch link: credentials, the names dialers pin, and peer checks.

    server_credentials(m)         require a client certificate from our CA; the key and
                                  certificate are re-read when their files change, so a
                                  renewed certificate serves new connections while open
                                  streams keep theirs
    channel(addr, m, name)        dial with our certificate, pinning the peer's name
                                  (ssl_target_name_override): orchestrator.llama-orch, or
                                  <pool>.pool.llama-orch for a pool's workers
    PeerCheck / guard(...)        who is calling: the certificate's URI SAN role, checked
                                  against the CRL on every call (gRPC Python cannot check
                                  a CRL in the handshake, and interceptors cannot see the
                                  peer; so servicers are wrapped instead). The certificate
                                  comes from the handshake, or from the orchestrator's
                                  TLS gate when it terminates TLS (common/tls_gate.py)

Joining pools have no certificate yet, and gRPC Python can either require a verified
client certificate or not ask for one at all: nothing in between. So the orchestrator
also trusts the public *enrolment* CA (common/pki.py): a joining pool presents a
throwaway certificate from it, which proves nothing, and every servicer except Join
treats it as no certificate (UNAUTHENTICATED).
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from common import pki
from common.errors import OrchError


@dataclass(frozen=True)
class Material:
    """Where one identity's key, certificate and trusted CA live on disk."""
    key: Path
    cert: Path
    ca: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(key, cert, ca) PEMs. Renewal replaces the key, then the certificate (each
        atomically); a read between the two sees a pair that does not match and reads
        again, so nobody ever serves a key with the wrong certificate."""
        for _ in range(50):
            key, cert = self.key.read_bytes(), self.cert.read_bytes()
            if pki.key_matches(key, cert):
                return key, cert, self.ca.read_bytes()
            time.sleep(0.01)
        raise OrchError("CERTIFICATE_REJECTED", f"{self.key} does not match {self.cert}")

    def exists(self) -> bool:
        return self.key.exists() and self.cert.exists() and self.ca.exists()

    def args(self) -> list[str]:
        """The worker's command-line flags for this material (worker/main.py)."""
        return ["--tls-key", str(self.key), "--tls-cert", str(self.cert), "--tls-ca", str(self.ca)]


CHECK_S = 30.0


def check_interval_s() -> float:
    """How often a client certificate's files are looked at for a renewal (the gateway)
    and whether to renew it (`llama-orch up`): CHECK_S, or LLAMA_ORCH_TLS_CHECK_S."""
    try:
        seconds = float(os.environ.get("LLAMA_ORCH_TLS_CHECK_S", CHECK_S))
    except ValueError:
        return CHECK_S
    # Not a number, or "never": renewals would stop being noticed; keep the default.
    return max(0.05, seconds) if math.isfinite(seconds) else CHECK_S


def file_stamp(paths) -> tuple:
    """(mtime, size) of each file, None for a missing one: changes when a file is replaced."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            out.append(None)
    return tuple(out)


def server_credentials(m: Material, extra_roots: bytes = b"") -> grpc.ServerCredentials:
    """Require a client certificate that chains to our CA (or to `extra_roots`).

    gRPC calls the fetcher before every handshake; it re-reads the files only when they
    changed (one stat each), so renewal needs no restart and drops no open stream."""
    paths = (m.key, m.cert, m.ca)
    state = {"stamp": file_stamp(paths)}

    def config() -> grpc.ServerCertificateConfiguration:
        key, cert, ca = m.read()
        return grpc.ssl_server_certificate_configuration([(key, cert)], ca + extra_roots)

    def fetch():
        stamp = file_stamp(paths)
        if stamp == state["stamp"]:
            return None
        try:
            cfg = config()
        except (OSError, ValueError, OrchError):
            return None  # mid-rename or unreadable: keep serving the previous certificate
        state["stamp"] = stamp
        return cfg

    return grpc.dynamic_ssl_server_credentials(config(), fetch, True)


def channel_credentials(m: Material) -> grpc.ChannelCredentials:
    key, cert, ca = m.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                        certificate_chain=cert)


def channel(address: str, m: Material, peer_name: str) -> grpc.aio.Channel:
    """A channel that presents `m` and accepts only a server certificate naming
    `peer_name`. Files are read now: a renewed certificate is used by new channels."""
    from common import grpc_server
    return grpc_server.channel(address, channel_credentials(m), target_name=peer_name)


# ---- the process's own identity, for channels built where no config is at hand

_installed: tuple[Material, Callable[[str], str]] | None = None
_worker_pools: dict[str, str] = {}  # worker endpoint -> the pool that announced it
ENV = ("LLAMA_ORCH_TLS_KEY", "LLAMA_ORCH_TLS_CERT", "LLAMA_ORCH_TLS_CA")


def install(m: Material | None,
            peer_name: str | Callable[[str], str] = pki.ORCHESTRATOR_NAME) -> None:
    """Make `grpc_server.channel(address)` dial with `m` (None: plaintext again).
    `peer_name` is the name to pin, or a function of the address."""
    global _installed
    _installed = None if m is None else (
        m, peer_name if callable(peer_name) else (lambda _address, n=peer_name: n))


def installed() -> tuple[Material, Callable[[str], str]] | None:
    """The installed identity; else one named by LLAMA_ORCH_TLS_KEY/CERT/CA (how a
    gateway or CLI gets a client certificate without a config of its own)."""
    if _installed is None and all(os.environ.get(k) for k in ENV):
        install(Material(*(Path(os.environ[k]) for k in ENV)))
    return _installed


def announce_worker(endpoint: str, pool_id: str) -> None:
    """Remember which pool announced a worker endpoint (the orchestrator's pool link);
    the latest announcement wins. Bounded: the oldest endpoints are forgotten first."""
    _worker_pools.pop(endpoint, None)
    _worker_pools[endpoint] = pool_id
    while len(_worker_pools) > 65536:
        del _worker_pools[next(iter(_worker_pools))]


def worker_pool_name(endpoint: str) -> str:
    # An endpoint no pool announced pins a name no certificate can carry ('_' is not
    # allowed in a pool id): fail closed.
    return pki.pool_dns(_worker_pools.get(endpoint, "unannounced_"))


def worker_channel(endpoint: str, pool_id: str, m: Material | None = None) -> grpc.aio.Channel:
    """The orchestrator's channel to a worker: the worker must serve a certificate that
    names `pool_id`, the pool that announced it; a worker holding another pool's
    certificate fails the handshake. Plaintext when TLS is off."""
    from common import grpc_server
    ident = m or (installed() or (None,))[0]
    if ident is None:
        return grpc_server.channel(endpoint)
    return channel(endpoint, ident, pki.pool_dns(pool_id))


# ---- who is calling

class PeerCheck:
    """Identify the peer of a call from its certificate and refuse revoked ones.

    The handshake already verified the chain and the validity dates; this adds the
    role (URI SAN), "issued by our CA, not the public enrolment CA", and the CRL."""

    def __init__(self, ca_cert: x509.Certificate, revocations: pki.Revocations | None = None,
                 on_refused: Callable[[str, str, OrchError], None] | None = None,
                 certificate_of: Callable[[object], bytes | None] | None = None):
        self.ca_cert = ca_cert
        self.revocations = revocations
        self.on_refused = on_refused  # (principal, what, error): the audit hook
        # Where a call's client certificate (PEM) is found: the TLS handshake's auth
        # context, or, behind the orchestrator's TLS gate, the gate's table of relayed
        # connections (common/gate_peers.py; None there: not a connection it relays).
        self.certificate_of = certificate_of or _handshake_certificate
        self._cache: dict[bytes, pki.Identity | None] = {}

    def identify(self, context) -> pki.Identity | None:
        """The peer's identity; None without a certificate of ours (none, or enrolment)."""
        pem = self.certificate_of(context)
        if not pem:
            return None
        key = hashlib.sha256(pem).digest()
        if key not in self._cache:
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = self._parse(pem)
        return self._cache[key]

    def _parse(self, pem: bytes) -> pki.Identity | None:
        cert = pki.load_cert(pem)
        try:
            cert.verify_directly_issued_by(self.ca_cert)
        except (InvalidSignature, ValueError, TypeError):  # e.g. the enrolment CA's
            return None
        return pki.identity_of(cert)

    def refuse(self, principal: str, what: str, err: OrchError) -> OrchError:
        if self.on_refused is not None:
            self.on_refused(principal, what, err)
        return err

    def check(self, context, roles: frozenset[str] | set[str], what: str) -> pki.Identity:
        """The peer, if it may call `what`: `roles` holds role names ("client") or whole
        identities ("llama-orch://pool/p1"). Else raises OrchError (UNAUTHENTICATED,
        CERTIFICATE_REJECTED or PERMISSION_DENIED)."""
        ident = self.identify(context)
        if ident is None:
            raise self.refuse("anonymous", what, OrchError(
                "UNAUTHENTICATED", f"{what} needs a client certificate issued by this "
                "orchestrator's CA (an enrolment certificate is good only for Join)"))
        if ident.not_after <= pki.now():
            raise self.refuse(str(ident), what, OrchError(
                "CERTIFICATE_REJECTED", f"certificate {ident.serial_hex} ({ident}) has expired"))
        if self.revocations is not None and self.revocations.is_revoked(ident.serial):
            raise self.refuse(str(ident), what, OrchError(
                "CERTIFICATE_REJECTED", f"certificate {ident.serial_hex} ({ident}) is revoked"))
        if ident.role not in roles and str(ident) not in roles:
            raise self.refuse(str(ident), what, OrchError(
                "PERMISSION_DENIED", f"a {ident.role} certificate ({ident}) cannot call {what}"))
        return ident


def _handshake_certificate(context) -> bytes:
    return (context.auth_context().get("x509_pem_cert") or [b""])[0]


def guard(servicer, check: PeerCheck, roles: set[str], service: str):
    """`servicer` with every RPC method checking the peer first. The generated
    add_*_to_server reads methods by name, so a proxy class is enough; each wrapper
    keeps its method's kind (coroutine or async generator), which grpc.aio inspects."""
    roles = frozenset(roles)

    def wrap(name: str, fn):
        what = f"{service}/{name}"  # as the audit log names calls
        if inspect.isasyncgenfunction(fn):
            async def stream(request, context):
                try:
                    check.check(context, roles, what)
                except OrchError as err:
                    await err.abort(context)
                async for item in fn(request, context):
                    yield item
            return stream

        async def unary(request, context):
            try:
                check.check(context, roles, what)
            except OrchError as err:
                await err.abort(context)
            result = fn(request, context)  # the generated base class's stubs are plain defs
            return await result if inspect.isawaitable(result) else result
        return unary

    class Guarded:
        def __getattr__(self, name: str):
            fn = getattr(servicer, name)
            if name[:1].isupper() and callable(fn):
                return wrap(name, fn)
            return fn

    return Guarded()
