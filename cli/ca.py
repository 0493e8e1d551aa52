"""`llama-orch ca ...`: the orchestrator's PKI, run on the orchestrator's machine.

    llama-orch ca init                              create the CA in <data_dir>/pki
    llama-orch ca issue --orchestrator [--dns H] [--ip A]   (re)issue the server certificate
    llama-orch ca issue --client NAME [--out DIR] [--csr F] a client certificate (gateway, CLI)
    llama-orch ca revoke SERIAL                     add a serial (hex) to the CRL
    llama-orch ca join-token --pool-id P [--ttl S]  a single-use token for one pool
    llama-orch ca enroll-provider [--provider-id ID] PUBKEY_FILE   platform mode
    llama-orch ca provider-keygen --out FILE        a provider's Ed25519 key (FILE, FILE.pub)

Every subcommand takes --config FILE (where pki_dir and the TTLs come from). Output
meant for scripts (a token, a key id) is the only thing on stdout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common import config as config_mod, pki
from common.errors import OrchError


def _say(text: str) -> None:
    print(text, file=sys.stderr)


def _init(cfg, ns) -> int:
    dir = config_mod.pki_dir(cfg)
    ca, created = pki.CA.init(dir)
    if created:
        _say(f"created a CA in {dir} (ca.key is 0600: keep it on this machine)")
    else:
        _say(f"a CA already exists in {dir}; left as it is")
    _say(f"CA fingerprint (sha256): {pki.fingerprint(ca.cert)}")
    return 0


def _issue(cfg, ns) -> int:
    dir = config_mod.pki_dir(cfg)
    ca = pki.CA.load(dir)
    ttl = ns.ttl or cfg.security.cert_ttl_s
    if ns.orchestrator:
        dns, ips = pki.host_sans(cfg.orchestrator.listen)
        key_pem, cert_pem = ca.issue_new("orchestrator", "", ttl, tuple(sorted({*dns, *ns.dns})),
                                         tuple(sorted({*ips, *ns.ip})))
        key_path, cert_path = dir / "orchestrator.key", dir / "orchestrator.crt"
        cert_pem += ca.cert_pem  # the chain lets a joining pool pin the CA
    else:
        out = Path(ns.out or dir)
        if ns.csr:  # the client keeps its key; we only sign
            cert = ca.issue(Path(ns.csr).read_bytes(), "client", ns.client, ttl,
                            tuple(ns.dns), tuple(ns.ip))
            key_pem, cert_pem = None, pki.cert_pem(cert)
        else:
            key_pem, cert_pem = ca.issue_new("client", ns.client, ttl, tuple(ns.dns), tuple(ns.ip))
        key_path, cert_path = out / f"client-{ns.client}.key", out / f"client-{ns.client}.crt"
        pki.write_atomic(out / "ca.crt", ca.cert_pem)
    if key_pem is not None:
        pki.write_private(key_path, key_pem)
    pki.write_atomic(cert_path, cert_pem)
    cert = pki.load_cert(cert_pem)
    _say(f"issued {pki.identity_of(cert)} serial {format(cert.serial_number, 'x')}, valid until "
         f"{cert.not_valid_after_utc.isoformat()}: {cert_path}")
    return 0


def _revoke(cfg, ns) -> int:
    from orchestrator.join import _locked, revoke_certificate
    serial = pki.parse_serial(ns.serial)
    # The lock AdminService.RevokeCertificate takes too: the CRL is read, changed and
    # rewritten, and two revocations at once must not lose one.
    pki.CA.load(config_mod.pki_dir(cfg))  # no CA: say so before the lock makes pki_dir
    with _locked(config_mod.pki_dir(cfg)):
        newly = revoke_certificate(cfg, ns.serial)
    if newly:
        _say(f"revoked {format(serial, 'x')}; the orchestrator refuses it from its next call")
    else:
        _say(f"{format(serial, 'x')} was revoked already")
    return 0


def _join_token(cfg, ns) -> int:
    from orchestrator.join import create_join_token
    token, expires = create_join_token(cfg, ns.pool_id, ns.ttl)
    print(token)
    _say(f"single-use token for pool {ns.pool_id}, valid until {expires.isoformat()}; start the "
         f"pool manager once with LLAMA_ORCH_JOIN_TOKEN=<token> (or --join-token)")
    return 0


def _enroll_provider(cfg, ns) -> int:
    from orchestrator.join import enroll_provider_key
    key_id = enroll_provider_key(cfg, Path(ns.pubkey_file).read_bytes(), ns.provider_id)
    print(key_id)
    _say(f"enrolled provider key {key_id}" + (f" for {ns.provider_id}" if ns.provider_id else ""))
    return 0


def _provider_keygen(cfg, ns) -> int:
    out = Path(ns.out)
    if out.exists():
        raise OrchError("INVALID_ARGUMENT", f"{out} exists; not overwriting a key", param="out")
    key = Ed25519PrivateKey.generate()
    pki.write_private(out, key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    pki.write_atomic(out.with_name(out.name + ".pub"), pub)
    _say(f"wrote {out} (private: set security.provider_key to it) and {out}.pub (give it to "
         "the platform operator for `llama-orch ca enroll-provider`)")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llama-orch ca", description="the orchestrator's PKI")
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name: str, fn, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        sp.add_argument("--config", help="TOML config file")
        sp.set_defaults(fn=fn)
        return sp

    add("init", _init, "create the CA (idempotent)")
    sp = add("issue", _issue, "issue the orchestrator's or a client's certificate")
    who = sp.add_mutually_exclusive_group(required=True)
    who.add_argument("--orchestrator", action="store_true")
    who.add_argument("--client", metavar="NAME")
    sp.add_argument("--out", help="folder for a client's files (default: pki_dir)")
    sp.add_argument("--csr", help="sign this CSR (PEM) instead of making a key")
    sp.add_argument("--dns", action="append", default=[], help="extra DNS name (repeatable)")
    sp.add_argument("--ip", action="append", default=[], help="extra IP address (repeatable)")
    sp.add_argument("--ttl", type=int, default=0, help="seconds (default security.cert_ttl_s)")
    sp = add("revoke", _revoke, "revoke a certificate by serial (hex)")
    sp.add_argument("serial")
    sp = add("join-token", _join_token, "a single-use join token for one pool")
    sp.add_argument("--pool-id", required=True)
    sp.add_argument("--ttl", type=int, default=0, help="seconds (default security.join_token_ttl_s)")
    sp = add("enroll-provider", _enroll_provider, "enrol a provider's Ed25519 public key")
    sp.add_argument("--provider-id", default="", help="who the key belongs to (recorded)")
    sp.add_argument("pubkey_file", help="PEM (openssl pkey -pubout) or raw 32 bytes")
    sp = add("provider-keygen", _provider_keygen, "make a provider's Ed25519 key pair")
    sp.add_argument("--out", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    cfg = config_mod.load(ns.config)
    try:
        return ns.fn(cfg, ns)
    except OSError as exc:
        raise OrchError("INVALID_ARGUMENT", f"{exc.filename}: {exc.strerror}") from None
