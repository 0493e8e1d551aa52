"""`llama-orch orchestrator`: serve ClientService, AdminService and PoolLinkService."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading

from common import config as config_mod, log, pki, tls
from common.errors import ConfigError, OrchError
from common.heap import freeze_startup_heap
from common.gate_peers import InternalOnly, PeerTable
from common.grpc_server import Server
from common.refusals import RefusalLog
from common.tls_gate import Gate
from llama_orch.v1 import admin_pb2, client_pb2, events_pb2, pool_link_pb2
from llama_orch.v1 import admin_pb2_grpc, client_pb2_grpc, pool_link_pb2_grpc
from orchestrator import metrics
from orchestrator.admin_api import AdminServicer
from orchestrator.client_api import ClientServicer
from orchestrator.core import Orchestrator
from orchestrator.audit import audit, audit_log
from orchestrator.join import Enrolment
from orchestrator.pool_link import LinkSecurity, PoolLinkServicer
from orchestrator.store import Store, url_for_data_dir

SERVICES = [client_pb2.DESCRIPTOR.services_by_name["ClientService"].full_name,
            admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
            pool_link_pb2.DESCRIPTOR.services_by_name["PoolLinkService"].full_name]


def build_server(orch: Orchestrator, security: LinkSecurity | None = None,
                 interceptors=()) -> Server:
    """With `security` (TLS on), ClientService and AdminService take only client
    certificates of this CA that are not revoked; the pool link checks its own."""
    server = Server(SERVICES, interceptors)
    client, admin = ClientServicer(orch), AdminServicer(orch)
    if security is not None:
        client = tls.guard(client, security.peers, {"client"}, "ClientService")
        admin = tls.guard(admin, security.peers, {"client"}, "AdminService")
    client_pb2_grpc.add_ClientServiceServicer_to_server(client, server.grpc)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, server.grpc)
    pool_link_pb2_grpc.add_PoolLinkServiceServicer_to_server(PoolLinkServicer(orch, security),
                                                             server.grpc)
    return server


def setup_tls(cfg: config_mod.Config, certificate_of=None) -> tuple[LinkSecurity, tls.Material] | None:
    """TLS on: the CA (created on first start), the orchestrator's certificate (issued
    or renewed now), peer checks, enrolment. Workers are dialled with this identity.
    `certificate_of`: where peer checks find a call's certificate (behind the TLS gate,
    its table), else the handshake's."""
    if not cfg.security.tls:
        return None
    dir = config_mod.pki_dir(cfg)
    ca, created = pki.CA.init(dir)
    if created:
        log.emit("orchestrator", "pki.ca_created", f"created a CA in {dir}")
    material = tls.Material(dir / "orchestrator.key", dir / "orchestrator.crt", dir / "ca.crt")
    renew_orchestrator_cert(cfg, ca, material)
    peers = tls.PeerCheck(ca.cert, pki.Revocations(dir / "ca.crl", ca.cert),
                          on_refused=lambda who, what, err: audit(who, what, "", err.code,
                                                                  detail=err.message),
                          certificate_of=certificate_of)
    # The orchestrator dials only workers: each must show its announcing pool's name.
    tls.install(material, tls.worker_pool_name)
    return LinkSecurity(peers, Enrolment(cfg, ca)), material


def renew_orchestrator_cert(cfg: config_mod.Config, ca: pki.CA, m: tls.Material) -> None:
    dns, ips = pki.host_sans(cfg.orchestrator.listen)
    if ca.ensure(m.key, m.cert, "orchestrator", ttl_s=cfg.security.cert_ttl_s, dns=dns, ips=ips):
        log.emit("orchestrator", "pki.certificate_issued", f"orchestrator certificate {m.cert}")


async def _renew_forever(cfg: config_mod.Config, security: LinkSecurity, m: tls.Material) -> None:
    # Renewal at two thirds of the lifetime; the server re-reads the files on the next
    # handshake, open connections keep their session.
    while True:
        await asyncio.sleep(min(3600, cfg.security.cert_ttl_s / 10))
        try:
            renew_orchestrator_cert(cfg, security.enrolment.ca, m)
        except (OSError, OrchError) as exc:
            log.emit("orchestrator", "pki.renew_failed", str(exc), level="error")


async def fetch_catalog(orch: Orchestrator, cfg: config_mod.Config) -> None:
    """hf: models need their tokenizer here before admission can count tokens."""
    from pool_manager.cache import ModelCache  # huggingface_hub only when it is needed
    if not any(m.ref.startswith("hf:") for m in orch.catalog.models.values()):
        return
    cache = ModelCache(cfg.data_dir / "catalog")
    for name, err in await orch.catalog.fetch_prompting(cache):
        orch.facts.publish(events_pb2.FACT_KIND_MODEL_DOWNLOADING,
                           f"{name}: cannot fetch its tokenizer: {err.code}: {err.message}",
                           level=events_pb2.FACT_LEVEL_ERROR, model=name, error_code=err.code)
    freeze_startup_heap("orchestrator")  # the tokenizers are start-up state too


async def bind_server(cfg: config_mod.Config, orch: Orchestrator
                      ) -> tuple[Server, Gate | None, tuple[LinkSecurity, tls.Material] | None]:
    """The gRPC server, bound to cfg.orchestrator.listen (not started), and the TLS
    setup. With TLS and the audit log on, a TLS gate (also bound, not accepting yet)
    terminates TLS so that a refused handshake is audited too (common/tls_gate.py);
    gRPC then serves plaintext on loopback, to the gate only. With the audit log off,
    gRPC serves TLS itself; home mode without TLS, plaintext."""
    audit_ = audit_log(orch)
    listen = cfg.orchestrator.listen
    if not (cfg.security.tls and audit_.enabled and not listen.startswith("unix:")):
        secured = setup_tls(cfg)
        server = build_server(orch, secured[0] if secured else None)
        # Trusting the public enrolment CA too lets a pool without a certificate reach
        # Join; every other RPC refuses such a peer (common/tls.py).
        server.bind(listen, tls.server_credentials(secured[1], pki.enrolment_ca_pem())
                    if secured else None)
        return server, None, secured
    table, refusals = PeerTable(), RefusalLog(audit_.audit)
    secured = setup_tls(cfg, table.pem_for)
    internal_only = InternalOnly(table, "orchestrator (internal port)",
                                 lambda who, what, target, outcome, corr, host:
                                 refusals.refuse(host, who, what, target, outcome, corr))
    server = build_server(orch, secured[0], [internal_only])
    internal = server.bind("127.0.0.1:0")
    gate = Gate(secured[1], listen, ("127.0.0.1", internal), table, refusals,
                extra_roots=pki.enrolment_ca_pem())  # the enrolment CA: as above
    try:
        await gate.bind()
    except (OSError, ValueError) as exc:  # busy, not an address of this host, no port
        raise ConfigError(f"cannot bind {listen}: {getattr(exc, 'strerror', None) or exc}",
                          param="orchestrator.listen") from None
    log.emit("orchestrator", "tls.gate", f"TLS gate on {listen}; gRPC behind it on "
             f"127.0.0.1:{internal}, for the gate only", internal_port=internal)
    return server, gate, secured


async def serve(cfg: config_mod.Config) -> None:
    url = cfg.orchestrator.database or url_for_data_dir(cfg.data_dir)
    try:
        store = await Store.open(url)
    except Exception as exc:  # a bad URL, an unreachable database, a failed migration
        raise ConfigError(f"cannot open the state store {url}: {exc}", param="orchestrator.database") from None
    orch = Orchestrator(cfg, store=store)
    server, gate, secured = await bind_server(cfg, orch)
    try:
        metrics.serve(cfg.orchestrator.metrics_listen)
    except OSError as exc:
        raise ConfigError(f"cannot bind {cfg.orchestrator.metrics_listen}: {exc.strerror}",
                          param="orchestrator.metrics_listen") from None
    await orch.start()
    await server.start()
    if gate is not None:
        await gate.start()
    freeze_startup_heap("orchestrator")
    catalog_fetch = asyncio.create_task(fetch_catalog(orch, cfg))
    renewal = asyncio.create_task(_renew_forever(cfg, *secured)) if secured else None
    orch.facts.publish(events_pb2.FACT_KIND_COMPONENT_STARTED, f"listening on {cfg.orchestrator.listen}",
                       mode=cfg.mode, models=sorted(orch.catalog.models), tls=bool(secured))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    orch.facts.publish(events_pb2.FACT_KIND_COMPONENT_STOPPED, "shutting down")
    catalog_fetch.cancel()
    if renewal is not None:
        renewal.cancel()
    # A stop must end the process: if some part of the shutdown hangs, exit anyway after
    # SHUTDOWN_LIMIT_S (everything admitted is already in the store; restart recovers it).
    guard = threading.Timer(SHUTDOWN_LIMIT_S, _force_exit)
    guard.daemon = True
    guard.start()
    if gate is not None:
        gate.stop_accepting()
    await server.stop(1.0)
    if gate is not None:
        await gate.close()
    try:
        await asyncio.wait_for(orch.stop(), SHUTDOWN_LIMIT_S / 2)
    except asyncio.TimeoutError:
        log.emit("orchestrator", "shutdown.slow", "background tasks did not stop in time",
                 level="warning")
    await store.close()


SHUTDOWN_LIMIT_S = 15.0


def _force_exit() -> None:
    log.emit("orchestrator", "shutdown.forced", f"shutdown took over {SHUTDOWN_LIMIT_S:.0f} s; exiting",
             level="error")
    os._exit(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llama-orch orchestrator")
    parser.add_argument("--config", help="TOML config file")
    parser.add_argument("--listen", help="host:port for gRPC (default 127.0.0.1:9100)")
    ns = parser.parse_args(argv)
    try:
        cfg = config_mod.load(ns.config)
        if ns.listen:
            cfg.orchestrator.listen = ns.listen
        cfg.validate()
        asyncio.run(serve(cfg))
    except OrchError as err:
        print(f"orchestrator: {err.code}: {err.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0
