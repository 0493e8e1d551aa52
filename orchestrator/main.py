"""`llama-orch orchestrator`: serve ClientService, AdminService and PoolLinkService."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading

from common import config as config_mod, log
from common.errors import ConfigError, OrchError
from common.grpc_server import Server
from llama_orch.v1 import admin_pb2, client_pb2, events_pb2, pool_link_pb2
from llama_orch.v1 import admin_pb2_grpc, client_pb2_grpc, pool_link_pb2_grpc
from orchestrator import metrics
from orchestrator.admin_api import AdminServicer
from orchestrator.client_api import ClientServicer
from orchestrator.core import Orchestrator
from orchestrator.pool_link import PoolLinkServicer
from orchestrator.store import Store, url_for_data_dir

SERVICES = [client_pb2.DESCRIPTOR.services_by_name["ClientService"].full_name,
            admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
            pool_link_pb2.DESCRIPTOR.services_by_name["PoolLinkService"].full_name]


def build_server(orch: Orchestrator) -> Server:
    server = Server(SERVICES)
    client_pb2_grpc.add_ClientServiceServicer_to_server(ClientServicer(orch), server.grpc)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(orch), server.grpc)
    pool_link_pb2_grpc.add_PoolLinkServiceServicer_to_server(PoolLinkServicer(orch), server.grpc)
    return server


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


async def serve(cfg: config_mod.Config) -> None:
    url = cfg.orchestrator.database or url_for_data_dir(cfg.data_dir)
    try:
        store = await Store.open(url)
    except Exception as exc:  # a bad URL, an unreachable database, a failed migration
        raise ConfigError(f"cannot open the state store {url}: {exc}", param="orchestrator.database") from None
    orch = Orchestrator(cfg, store=store)
    server = build_server(orch)
    server.bind(cfg.orchestrator.listen)
    try:
        metrics.serve(cfg.orchestrator.metrics_listen)
    except OSError as exc:
        raise ConfigError(f"cannot bind {cfg.orchestrator.metrics_listen}: {exc.strerror}",
                          param="orchestrator.metrics_listen") from None
    await orch.start()
    await server.start()
    catalog_fetch = asyncio.create_task(fetch_catalog(orch, cfg))
    orch.facts.publish(events_pb2.FACT_KIND_COMPONENT_STARTED, f"listening on {cfg.orchestrator.listen}",
                       mode=cfg.mode, models=sorted(orch.catalog.models))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    orch.facts.publish(events_pb2.FACT_KIND_COMPONENT_STOPPED, "shutting down")
    catalog_fetch.cancel()
    # A stop must end the process: if some part of the shutdown hangs, exit anyway after
    # SHUTDOWN_LIMIT_S (everything admitted is already in the store; restart recovers it).
    guard = threading.Timer(SHUTDOWN_LIMIT_S, _force_exit)
    guard.daemon = True
    guard.start()
    await server.stop(1.0)
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
