"""Pool enrolment: join tokens, provider keys, signed registrations, and the Join RPC.

    create_join_token(cfg, pool_id)      -> (token, expires_at)   admin API / CLI
    enroll_provider_key(cfg, pubkey)     -> provider_key_id       admin API / CLI
    revoke_certificate(cfg, serial_hex)  -> bool                  admin API / CLI
    Enrolment(cfg, ca).join(request, peer) -> JoinResponse         PoolLinkService.Join

A join token is single-use, expires (security.join_token_ttl_s) and is bound to the
pool id it was made for. Only its sha256 is stored. The printed token is
`<secret>.<ca-sha256>`: the second half is public and lets a pool pin the CA on first
contact (kubeadm's discovery hash), before it trusts anything.

A signed registration is a RegistrationPayload's serialised bytes, signed with the
provider's Ed25519 key. It is refused (REGISTRATION_REJECTED) for an unknown key, a
bad signature, another pool id, a timestamp off by more than registration_max_skew_s,
or a nonce seen before. Platform mode requires one on every Join (and every Connect);
lab mode checks one when present.

Every check runs before any state changes: a refused Join burns no token and claims
no nonce. Each decision is audited (orchestrator/audit.py) as PoolLinkService/Join;
the admin API audits the tokens and keys it hands out itself.

State lives in JSON files in pki_dir, written atomically under a file lock (the CLI
writes tokens while the orchestrator runs; the database belongs to others).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf import message as pb_message, timestamp_pb2

from common import pki
from common.config import Config, pki_dir
from common.errors import OrchError
from llama_orch.v1 import pool_link_pb2

MIN_NONCE_BYTES = 16
JOIN = "PoolLinkService/Join"


# ---- JSON state files

@contextlib.contextmanager
def _locked(dir: Path):
    dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(dir / ".enrolment.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def _write(path: Path, data: dict) -> None:
    pki.write_private(path, json.dumps(data, indent=1, sort_keys=True).encode())


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class JoinTokens:
    """join_tokens.json: {sha256(secret): {pool_id, expires_at, created_at}}."""

    def __init__(self, dir: Path, ca_fingerprint: str):
        self.dir, self.path, self.ca_fingerprint = dir, dir / "join_tokens.json", ca_fingerprint

    def create(self, pool_id: str, ttl_s: int, now: float | None = None) -> tuple[str, float]:
        pki.check_name("pool", pool_id)
        now = time.time() if now is None else now
        secret = secrets.token_urlsafe(32)
        with _locked(self.dir):
            tokens = {h: t for h, t in _read(self.path).items() if t["expires_at"] > now}
            tokens[_hash(secret)] = {"pool_id": pool_id, "expires_at": now + ttl_s,
                                     "created_at": now}
            _write(self.path, tokens)
        return f"{secret}.{self.ca_fingerprint}", now + ttl_s

    def check(self, token: str, pool_id: str, now: float | None = None) -> str:
        """The token's key if it may join `pool_id` now; changes nothing."""
        now = time.time() if now is None else now
        secret, _, fp = token.partition(".")
        if fp and not hmac.compare_digest(fp, self.ca_fingerprint):
            raise OrchError("JOIN_TOKEN_INVALID", "the join token was made by another "
                            "orchestrator's CA", param="join_token")
        key = _hash(secret)
        entry = _read(self.path).get(key)
        if entry is None:
            raise OrchError("JOIN_TOKEN_INVALID", "unknown or already used join token",
                            param="join_token")
        if entry["expires_at"] <= now:
            raise OrchError("JOIN_TOKEN_INVALID", "the join token has expired", param="join_token")
        if entry["pool_id"] != pool_id:
            raise OrchError("JOIN_TOKEN_INVALID", f"the join token was made for another pool, "
                            f"not {pool_id!r}", param="join_token")
        return key

    def consume(self, key: str) -> None:
        """Single use: gone once redeemed. Raises if another Join redeemed it meanwhile."""
        with _locked(self.dir):
            tokens = _read(self.path)
            if tokens.pop(key, None) is None:
                raise OrchError("JOIN_TOKEN_INVALID", "unknown or already used join token",
                                param="join_token")
            _write(self.path, tokens)


class ProviderKeys:
    """provider_keys.json: {key_id: {provider_id, public_key (base64 raw), enrolled_at}}."""

    def __init__(self, dir: Path):
        self.dir, self.path = dir, dir / "provider_keys.json"

    def enroll(self, public_key: bytes, provider_id: str = "") -> str:
        raw = parse_public_key(public_key)
        key_id = pki.provider_key_id(raw)
        with _locked(self.dir):
            keys = _read(self.path)
            keys[key_id] = {"provider_id": provider_id, "enrolled_at": time.time(),
                            "public_key": base64.b64encode(raw).decode()}
            _write(self.path, keys)
        return key_id

    def get(self, key_id: str) -> Ed25519PublicKey | None:
        entry = _read(self.path).get(key_id)
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(entry["public_key"])) \
            if entry else None


def parse_public_key(data: bytes) -> bytes:
    """Raw 32 bytes, or a PEM / DER SubjectPublicKeyInfo (`openssl pkey -pubout`)."""
    if len(data) == 32:
        return data
    try:
        key = (serialization.load_pem_public_key(data) if data.lstrip().startswith(b"-----")
               else serialization.load_der_public_key(data))
    except ValueError:
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise OrchError("INVALID_ARGUMENT", "a provider key must be an Ed25519 public key "
                        "(raw 32 bytes or PEM)", param="public_key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class Nonces:
    """nonces.json: {nonce hex: expires_at}. A nonce is remembered for as long as its
    timestamp would still be accepted; after that the skew check refuses it anyway."""

    def __init__(self, dir: Path):
        self.dir, self.path = dir, dir / "nonces.json"

    def seen(self, nonce: bytes) -> bool:
        return nonce.hex() in _read(self.path)

    def claim(self, nonce: bytes, until: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with _locked(self.dir):
            seen = {n: t for n, t in _read(self.path).items() if t > now}
            if nonce.hex() in seen:
                raise OrchError("REGISTRATION_REJECTED",
                                "replayed registration (nonce seen before)", param="signed")
            seen[nonce.hex()] = until
            _write(self.path, seen)


def verify_registration(signed: pool_link_pb2.SignedRegistration, pool_id: str,
                        keys: ProviderKeys, nonces: Nonces, max_skew_s: int,
                        now: float | None = None) -> pool_link_pb2.RegistrationPayload:
    """The verified payload; raises REGISTRATION_REJECTED. Changes nothing: the caller
    claims the nonce (Nonces.claim) once everything else has passed."""
    now = time.time() if now is None else now

    def reject(why: str) -> OrchError:
        return OrchError("REGISTRATION_REJECTED", why, param="signed")

    key = keys.get(signed.provider_key_id) if signed.provider_key_id else None
    if key is None:
        raise reject(f"unknown provider key {signed.provider_key_id!r} (enrol it with "
                     "`llama-orch ca enroll-provider`)")
    try:
        key.verify(signed.signature, signed.payload)
    except InvalidSignature:
        raise reject("the registration's signature does not verify") from None
    payload = pool_link_pb2.RegistrationPayload()
    try:
        payload.ParseFromString(signed.payload)
    except pb_message.DecodeError:
        raise reject("the signed payload is not a RegistrationPayload") from None
    if payload.pool_id != pool_id:
        raise reject(f"the registration was signed for pool {payload.pool_id!r}, not {pool_id!r}")
    skew = abs(now - payload.timestamp.ToMicroseconds() / 1e6)
    if not payload.HasField("timestamp") or skew > max_skew_s:
        raise reject(f"the registration's timestamp is {skew:.0f} s off (at most {max_skew_s} s)")
    if len(payload.nonce) < MIN_NONCE_BYTES:
        raise reject(f"the registration's nonce must be at least {MIN_NONCE_BYTES} bytes")
    if nonces.seen(payload.nonce):
        raise reject("replayed registration (nonce seen before)")
    return payload


# ---- the Join RPC

class Enrolment:
    """Everything Join needs; one per orchestrator (TLS on)."""

    def __init__(self, cfg: Config, ca: pki.CA):
        self.cfg, self.ca = cfg, ca
        dir = pki_dir(cfg)
        self.tokens = JoinTokens(dir, pki.fingerprint(ca.cert))
        self.keys = ProviderKeys(dir)
        self.nonces = Nonces(dir)

    def verify_signed(self, signed: pool_link_pb2.SignedRegistration | None,
                      pool_id: str) -> pool_link_pb2.RegistrationPayload | None:
        """Check a signed registration, read-only: required in platform mode, checked
        when present in lab. None when absent and not required."""
        if signed is None:
            if self.cfg.mode == "platform":
                raise OrchError("REGISTRATION_REJECTED", "platform mode needs a registration "
                                "signed with the provider's Ed25519 key (security.provider_key)",
                                param="signed")
            return None
        return verify_registration(signed, pool_id, self.keys, self.nonces,
                                   self.cfg.security.registration_max_skew_s)

    def claim(self, payload: pool_link_pb2.RegistrationPayload | None) -> None:
        """Commit a verified registration: its nonce is never accepted again."""
        if payload is not None:
            skew = self.cfg.security.registration_max_skew_s
            self.nonces.claim(payload.nonce, time.time() + 2 * skew)

    def join(self, request: pool_link_pb2.JoinRequest,
             peer: pki.Identity | None) -> pool_link_pb2.JoinResponse:
        """A certificate naming request.pool_id, or OrchError. A pool renewing its own
        certificate (the peer is that pool) needs no token."""
        from orchestrator.audit import audit  # here: the CLI makes tokens without the store
        pool_id = request.pool_id
        principal = str(peer) if peer else "anonymous"
        renewal = peer is not None and peer.role == "pool" and peer.name == pool_id
        try:
            pki.check_name("pool", pool_id)
            if not renewal and not request.join_token:
                raise OrchError("JOIN_TOKEN_INVALID", "a join token is required "
                                "(`llama-orch ca join-token --pool-id ...`)", param="join_token")
            # Every check first (token, signature, CSR), then the commits, so a refused
            # Join burns no token and claims no nonce.
            token_key = (self.tokens.check(request.join_token, pool_id)
                         if request.join_token else None)
            payload = self.verify_signed(request.signed if request.HasField("signed") else None,
                                         pool_id)
            cert = self.ca.issue(request.csr_pem.encode(), "pool", pool_id,
                                 self.cfg.security.cert_ttl_s)
            self.claim(payload)
            if token_key is not None:
                self.tokens.consume(token_key)
        except OrchError as err:
            audit(principal, JOIN, pool_id, err.code, detail=err.message)
            raise
        audit(principal, JOIN, pool_id, "OK", detail=f"{'renewed' if renewal else 'joined'}: "
              f"certificate {format(cert.serial_number, 'x')}")
        expires = timestamp_pb2.Timestamp()
        expires.FromDatetime(cert.not_valid_after_utc)
        return pool_link_pb2.JoinResponse(certificate_pem=pki.cert_pem(cert).decode(),
                                          ca_certificate_pem=self.ca.cert_pem.decode(),
                                          expires_at=expires)


# ---- for the admin API and the CLI

def create_join_token(cfg: Config, pool_id: str, ttl_s: int = 0) -> tuple[str, dt.datetime]:
    """AdminService.CreateJoinToken: a single-use token for `pool_id` (ttl_s 0 = the
    configured security.join_token_ttl_s). Needs the CA (`llama-orch ca init`)."""
    ca = pki.CA.load(pki_dir(cfg))
    token, expires = JoinTokens(pki_dir(cfg), pki.fingerprint(ca.cert)).create(
        pool_id, ttl_s or cfg.security.join_token_ttl_s)
    return token, dt.datetime.fromtimestamp(expires, dt.timezone.utc)


def enroll_provider_key(cfg: Config, public_key: bytes, provider_id: str = "") -> str:
    """AdminService.EnrollProviderKey: remember a provider's Ed25519 public key (raw 32
    bytes or PEM); returns its provider_key_id."""
    return ProviderKeys(pki_dir(cfg)).enroll(public_key, provider_id)


def revoke_certificate(cfg: Config, serial_hex: str) -> bool:
    """AdminService.RevokeCertificate: add the serial to the CRL (False: it was already).
    The orchestrator refuses it from its next call; an open pool link ends at its next
    heartbeat."""
    return pki.CA.load(pki_dir(cfg)).revoke(pki.parse_serial(serial_hex))
