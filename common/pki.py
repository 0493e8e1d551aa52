"""The orchestrator's PKI: one CA (ECDSA P-256), certificates that name an identity, a CRL.

An identity is written into every certificate three ways, each for a different reader:

    URI SAN   llama-orch://orchestrator | llama-orch://pool/<id> | llama-orch://client/<name>
              the role and name; servicers read it from the peer's certificate
    DNS SAN   orchestrator.llama-orch | <id>.pool.llama-orch
              what our dialers pin with ssl_target_name_override, so a worker serving
              another pool's certificate fails the TLS handshake
    EKU       orchestrator, pool: serverAuth + clientAuth; client: clientAuth only

The CA decides every SAN from the role and name it was asked to certify; SANs a CSR
asks for are ignored (a pool could otherwise ask to be called `orchestrator.llama-orch`).
gRPC Python cannot check a CRL during the handshake, so revocation is checked by the
servers per call (common/tls.py) against `ca.crl`, a CRL signed by the CA.

Files in pki_dir (orchestrator side): ca.key ca.crt ca.crl orchestrator.key
orchestrator.crt; keys are written 0600.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import re
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.errors import OrchError

ROLES = ("orchestrator", "pool", "client")
SCHEME = "llama-orch://"
ORCHESTRATOR_NAME = "orchestrator.llama-orch"
CA_TTL_S = 10 * 365 * 24 * 3600
# Certificates start a little in the past so a peer whose clock is behind accepts them.
BACKDATE_S = 300
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,62}")  # fullmatch only: `$` passes a final "\n"


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def check_name(role: str, name: str) -> None:
    """Pool ids become DNS labels and client names URI segments: letters, digits, '-'."""
    if role not in ROLES:
        raise OrchError("INVALID_ARGUMENT", f"unknown role {role!r} (one of {', '.join(ROLES)})",
                        param="role")
    if role != "orchestrator" and not _NAME.fullmatch(name or ""):
        # Quote at most a label's worth: a hostile name must not make the error huge.
        shown = repr(name[:64]) + ("..." if len(name) > 64 else "")
        raise OrchError("INVALID_ARGUMENT", f"{role} name {shown} must be 1-63 letters, digits "
                        "or '-' (it becomes a DNS name in the certificate)", param="pool_id")


def pool_dns(pool_id: str) -> str:
    return f"{pool_id.lower()}.pool.llama-orch"


def host_sans(listen: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """DNS and IP SANs for the orchestrator's certificate: its listen host, this
    machine's name and loopback (our own dialers pin orchestrator.llama-orch anyway;
    these are for other clients, e.g. grpcurl)."""
    host = listen.rpartition(":")[0].strip("[]")
    dns, ips = {"localhost", socket.gethostname()}, {"127.0.0.1", "::1"}
    try:
        if not ipaddress.ip_address(host).is_unspecified:
            ips.add(host)
    except ValueError:
        dns.add(host)
    return tuple(sorted(dns)), tuple(sorted(ips))


def uri_for(role: str, name: str = "") -> str:
    return SCHEME + ("orchestrator" if role == "orchestrator" else f"{role}/{name}")


@dataclass(frozen=True)
class Identity:
    """Who a certificate names."""
    role: str
    name: str
    serial: int
    not_after: dt.datetime

    @property
    def serial_hex(self) -> str:
        return format(self.serial, "x")

    def __str__(self) -> str:
        return uri_for(self.role, self.name)


def identity_of(cert: x509.Certificate) -> Identity | None:
    """The identity in a certificate's URI SAN, or None when it names none of ours."""
    try:
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
            .get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        return None
    for uri in uris:
        if not uri.startswith(SCHEME):
            continue
        role, _, name = uri.removeprefix(SCHEME).partition("/")
        if role in ROLES and (role == "orchestrator") == (name == ""):
            return Identity(role, name, cert.serial_number, cert.not_valid_after_utc)
    return None


# ---- keys, CSRs, files

def new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: gRPC's TLS stack refuses Ed25519 certificates (REFERENCE.md).
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def key_matches(key_pem_: bytes, cert_pem_: bytes) -> bool:
    """Whether the certificate (the first in the PEM) is for this private key."""
    try:
        key = serialization.load_pem_private_key(key_pem_, None)
        cert = load_cert(cert_pem_)
    except ValueError:
        return False
    return key.public_key().public_numbers() == cert.public_key().public_numbers()


def make_csr(key: ec.EllipticCurvePrivateKey, common_name: str) -> bytes:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def write_private(path: Path, data: bytes) -> None:
    """Atomically, created 0600 (never world-readable, not even for a moment)."""
    write_atomic(path, data, mode=0o600)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fingerprint(cert: x509.Certificate) -> str:
    """sha256 of the DER, hex: what a join token carries to pin the CA."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def remaining_fraction(cert: x509.Certificate, at: dt.datetime | None = None) -> float:
    """How much of the certificate's lifetime is left (1.0 new, 0.0 expired)."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    total = (end - start).total_seconds()
    return max(0.0, min(1.0, (end - (at or now())).total_seconds() / total)) if total > 0 else 0.0


# ---- the CA

class CA:
    """The orchestrator's certificate authority, kept in `dir`."""

    def __init__(self, dir: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate):
        self.dir, self.key, self.cert = dir, key, cert

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    @classmethod
    def init(cls, dir: Path) -> tuple["CA", bool]:
        """Create the CA unless it exists; (ca, created). Never overwrites a CA: every
        certificate it issued would stop verifying."""
        dir = Path(dir)
        if (dir / "ca.key").exists() or (dir / "ca.crt").exists():
            return cls.load(dir), False
        key = new_key()
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "llama-orch"),
                          x509.NameAttribute(NameOID.COMMON_NAME, "llama-orch CA")])
        t = now()
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(t - dt.timedelta(seconds=BACKDATE_S))
                .not_valid_after(t + dt.timedelta(seconds=CA_TTL_S))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                             False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))
        write_private(dir / "ca.key", key_pem(key))
        write_atomic(dir / "ca.crt", cert_pem(cert))
        ca = cls(dir, key, cert)
        ca.write_crl(set())
        return ca, True

    @classmethod
    def load(cls, dir: Path) -> "CA":
        dir = Path(dir)
        try:
            key = serialization.load_pem_private_key((dir / "ca.key").read_bytes(), None)
            cert = load_cert((dir / "ca.crt").read_bytes())
        except OSError as exc:
            raise OrchError("CONFIG_INVALID", f"no CA in {dir} ({exc.strerror}); run "
                            "`llama-orch ca init`", param="security.pki_dir") from None
        return cls(dir, key, cert)

    def issue(self, csr_pem: bytes, role: str, name: str = "", ttl_s: int = 7 * 24 * 3600,
              dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()) -> x509.Certificate:
        """Certify the CSR's key as role/name. `dns`/`ips` add host names (orchestrator
        and clients only: a pool's name is its pool id, nothing else)."""
        check_name(role, name)
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise OrchError("CERTIFICATE_REJECTED", f"not a PEM CSR: {exc}",
                            param="csr_pem") from None
        if not csr.is_signature_valid:
            raise OrchError("CERTIFICATE_REJECTED", "the CSR's signature does not verify",
                            param="csr_pem")
        pub = csr.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name != "secp256r1":
            raise OrchError("CERTIFICATE_REJECTED", "the CSR must be for an ECDSA P-256 key",
                            param="csr_pem")
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri_for(role, name))]
        if role == "orchestrator":
            names.append(x509.DNSName(ORCHESTRATOR_NAME))
        elif role == "pool":
            names.append(x509.DNSName(pool_dns(name)))
            dns, ips = (), ()
        for host in dns:
            if host.lower().endswith(".llama-orch"):  # reserved for the names above
                raise OrchError("INVALID_ARGUMENT", f"{host} is a reserved name", param="dns")
            names.append(x509.DNSName(host))
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if role != "client":
            usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
        t = now()
        return (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                            uri_for(role, name))]))
                .issuer_name(self.cert.subject).public_key(pub)
                .serial_number(x509.random_serial_number())
                .not_valid_before(t - dt.timedelta(seconds=BACKDATE_S))
                .not_valid_after(min(t + dt.timedelta(seconds=ttl_s), self.cert.not_valid_after_utc))
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(True, False, False, False, True, False, False, False,
                                             False), critical=True)
                .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.key.public_key()), critical=False)
                .sign(self.key, hashes.SHA256()))

    def issue_new(self, role: str, name: str = "", ttl_s: int = 7 * 24 * 3600,
                  dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()) -> tuple[bytes, bytes]:
        """A fresh key and its certificate, as (key_pem, cert_pem)."""
        key = new_key()
        cert = self.issue(make_csr(key, uri_for(role, name)), role, name, ttl_s, dns, ips)
        return key_pem(key), cert_pem(cert)

    def ensure(self, key_path: Path, cert_path: Path, role: str, name: str = "",
               ttl_s: int = 7 * 24 * 3600, dns: tuple[str, ...] = (),
               ips: tuple[str, ...] = ()) -> bool:
        """(Re)issue key_path/cert_path unless they hold a certificate from this CA with
        more than a third of its lifetime left; True when it issued. The certificate
        file carries the CA after the leaf, so a joining pool can pin the CA from the
        handshake (join token fingerprint)."""
        try:
            current = load_cert(cert_path.read_bytes())
            current.verify_directly_issued_by(self.cert)
            if key_path.exists() and remaining_fraction(current) > 1 / 3:
                return False
        except (OSError, ValueError, TypeError, InvalidSignature):
            pass
        key, cert = self.issue_new(role, name, ttl_s, dns, ips)
        write_private(key_path, key)
        write_atomic(cert_path, cert + self.cert_pem)
        return True

    # -- revocation

    def revoked(self) -> dict[int, dt.datetime]:
        crl = load_crl(self.dir / "ca.crl", self.cert)
        return {r.serial_number: r.revocation_date_utc for r in crl} if crl is not None else {}

    def revoke(self, serial: int) -> bool:
        """Add a serial to the CRL; False when it was revoked already."""
        serials = self.revoked()
        if serial in serials:
            return False
        serials[serial] = now()
        self.write_crl(serials)
        return True

    def write_crl(self, serials: dict[int, dt.datetime] | set) -> None:
        t = now()
        b = (x509.CertificateRevocationListBuilder().issuer_name(self.cert.subject)
             .last_update(t).next_update(t + dt.timedelta(days=3650)))
        for serial in sorted(serials):
            when = serials[serial] if isinstance(serials, dict) else t
            b = b.add_revoked_certificate(x509.RevokedCertificateBuilder()
                                          .serial_number(serial).revocation_date(when).build())
        crl = b.sign(self.key, hashes.SHA256())
        write_atomic(self.dir / "ca.crl", crl.public_bytes(serialization.Encoding.PEM))


def load_crl(path: Path, ca_cert: x509.Certificate) -> x509.CertificateRevocationList | None:
    """The CRL at `path`, or None when there is none. One that the CA did not sign is an
    error, never an empty list (that would un-revoke everything)."""
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except FileNotFoundError:
        return None
    try:
        ok = crl.is_signature_valid(ca_cert.public_key())
    except (InvalidSignature, TypeError):
        ok = False
    if not ok:
        raise OrchError("CERTIFICATE_REJECTED", f"{path} is not signed by this CA")
    return crl


class Revocations:
    """The serials in the CA's CRL, re-read when the file changes (`ca revoke` writes it
    while the orchestrator runs). One stat per check."""

    def __init__(self, path: Path, ca_cert: x509.Certificate):
        self.path, self.ca_cert = path, ca_cert
        self._stamp: tuple[int, int] | None = None
        self._serials: frozenset[int] = frozenset()

    def is_revoked(self, serial: int) -> bool:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            crl = load_crl(self.path, self.ca_cert) if stamp else None
            self._serials = frozenset(r.serial_number for r in crl or ())
            self._stamp = stamp
        return serial in self._serials


# ---- the public enrolment CA (see common/tls.py for why it exists)

# Its private key is derived from a published constant on purpose: anyone may mint an
# enrolment certificate, and one proves nothing. The orchestrator's servers accept it
# only to let a pool with no certificate yet reach Join, where the join token (and in
# platform mode the provider's signature) is what counts. Our own CA never signs one.
ENROLMENT_URI = SCHEME + "enrolment"
_ENROLMENT_SUBJECT = x509.Name([x509.NameAttribute(
    NameOID.COMMON_NAME, "llama-orch enrolment CA (public key; proves nothing)")])
_enrolment: dict[str, bytes] = {}


def _enrolment_key() -> ec.EllipticCurvePrivateKey:
    seed = hashlib.sha256(b"llama-orch public enrolment CA v1").digest()
    return ec.derive_private_key(int.from_bytes(seed, "big"), ec.SECP256R1())


def enrolment_ca_pem() -> bytes:
    """The enrolment CA certificate the orchestrator adds to its trusted roots."""
    if "ca" not in _enrolment:
        key, t = _enrolment_key(), now()
        cert = (x509.CertificateBuilder().subject_name(_ENROLMENT_SUBJECT)
                .issuer_name(_ENROLMENT_SUBJECT).public_key(key.public_key()).serial_number(1)
                .not_valid_before(t - dt.timedelta(days=1))
                .not_valid_after(t + dt.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, False,
                                             False, False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))
        _enrolment["ca"] = cert_pem(cert)
    return _enrolment["ca"]


def enrolment_identity() -> tuple[bytes, bytes]:
    """A throwaway (key_pem, cert_pem) for reaching Join before a pool has a certificate."""
    ca_key, key, t = _enrolment_key(), new_key(), now()
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ENROLMENT_URI)]))
            .issuer_name(_ENROLMENT_SUBJECT).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(t - dt.timedelta(seconds=BACKDATE_S))
            .not_valid_after(t + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(ENROLMENT_URI)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key_pem(key), cert_pem(cert)


def provider_key_id(public_key_raw: bytes) -> str:
    """A provider key's id: derived from the key, so a pool needs no setting to name it."""
    return "ed25519:" + hashlib.sha256(public_key_raw).hexdigest()[:32]


def parse_serial(text: str) -> int:
    """Serials are printed in hex (as `ca issue` shows them); 0x is optional."""
    try:
        return int(text.lower().removeprefix("0x").replace(":", ""), 16)
    except ValueError:
        raise OrchError("INVALID_ARGUMENT", f"{text!r} is not a hex serial",
                        param="serial") from None
