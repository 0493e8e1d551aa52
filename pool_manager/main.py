"""`llama-orch pool-manager`: inventory, worker processes, and the link to the orchestrator."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import signal
import sys

from common import config as config_mod, log, pki, tls
from common.errors import ConfigError, OrchError
from common.grpc_server import Server
from common.heap import freeze_startup_heap
from llama_orch.v1 import pool_link_pb2, worker_callback_pb2, worker_callback_pb2_grpc
from pool_manager import inventory, leftovers
from pool_manager.cache import ModelCache
from pool_manager.callbacks import CallbackServicer
from pool_manager.enroll import PoolIdentity, load_provider_key
from pool_manager.link import PoolLink
from pool_manager.models import Models
from pool_manager.preload import Preloader
from pool_manager.supervisor import Supervisor


def available_engines() -> list[str]:
    engines = []
    if importlib.util.find_spec("torch") and importlib.util.find_spec("transformers"):
        engines.append("hf")
    if importlib.util.find_spec("tensorrt_llm"):
        engines.append("trtllm")
    engines.append("sim")  # always offered; only runs for models configured with engine "sim"
    return engines


def ram_budget(configured: int) -> int:
    """-1 (the default): a quarter of physical RAM, so preloads never crowd out workers."""
    if configured >= 0:
        return configured
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def pool_identity(cfg: config_mod.Config, join_token: str) -> PoolIdentity | None:
    """TLS on: this pool's identity (joined in `serve`). Platform mode signs every
    registration, so it needs the provider's key."""
    if not cfg.security.tls:
        return None
    if cfg.mode == "platform" and not cfg.security.provider_key:
        raise ConfigError("platform mode needs security.provider_key (the provider's Ed25519 "
                          "private key) to sign registrations", param="security.provider_key")
    key = load_provider_key(cfg.security.provider_key) if cfg.security.provider_key else None
    return PoolIdentity(cfg, join_token, key)


async def serve(cfg: config_mod.Config, join_token: str = "") -> None:
    pc = cfg.pool
    identity = pool_identity(cfg, join_token)
    nvml = inventory.Nvml.open()
    if identity is not None:
        # Before anything serves: the callback server and the workers use this
        # certificate. What the signed registration vouches for is the configured
        # address and the devices as they are now.
        await identity.ensure_retrying(lambda: (pc.listen, inventory.take(
            nvml, pc.devices, available_engines(), inventory.held([], {}))))
    server = Server([worker_callback_pb2.DESCRIPTOR.services_by_name["WorkerCallbackService"].full_name])
    server.bind(pc.listen, tls.server_credentials(identity.material) if identity else None)
    host = pc.listen.rpartition(":")[0]
    callback_address = f"{host}:{server.port}"
    link: PoolLink | None = None

    def on_exit(report: pool_link_pb2.WorkerExited) -> None:
        if link is not None:
            link.worker_exited(report)

    # Workers a predecessor left behind (it was killed while one hung) are stopped
    # before anything new starts.
    ledger = leftovers.Ledger(leftovers.default_path(cfg.data_dir, pc.id))
    for left in await ledger.sweep(pc.stop_grace_s):
        log.emit("pool_manager", "pool.leftover", f"{left.worker_id} (pid {left.pid}): {left.how}",
                 worker_id=left.worker_id, pid=left.pid, how=left.how)
    # Workers serve with this pool's certificate and report back over mTLS too.
    worker_tls = [*identity.material.args(), "--pool-id", pc.id] if identity else None
    supervisor = Supervisor(callback_address, on_exit, cpu_threads=pc.cpu_threads,
                            grace_s=pc.stop_grace_s, sim_in_process=pc.sim_in_process,
                            ledger=ledger, worker_tls=worker_tls)
    models = Models(ModelCache(config_mod.pool_cache_dir(cfg), pc.cache_budget_bytes),
                    Preloader(ram_budget(pc.ram_budget_bytes)),
                    lambda p: link.send(pool_link_pb2.ConnectRequest(model_progress=p)))
    link = PoolLink(pc, supervisor, nvml, available_engines(), callback_address, models,
                    identity=identity)
    callbacks = CallbackServicer(supervisor, link.send)
    if identity is not None:  # only this pool's workers hold this pool's certificate
        ca = pki.load_cert(identity.material.ca.read_bytes())
        callbacks = tls.guard(callbacks, tls.PeerCheck(ca), {pki.uri_for("pool", pc.id)},
                              "WorkerCallbackService")
    worker_callback_pb2_grpc.add_WorkerCallbackServiceServicer_to_server(callbacks, server.grpc)
    await server.start()
    freeze_startup_heap("pool_manager")
    log.emit("pool_manager", "component.started", f"pool {pc.id} on {callback_address}",
             nvml_status=nvml.status, orchestrator=pc.orchestrator)
    task = asyncio.create_task(link.run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopping = asyncio.ensure_future(stop.wait())
    # The link ends on its own only when the orchestrator refused this pool for good
    # (revoked certificate, bad token or signature): stop, and say why.
    await asyncio.wait({stopping, task}, return_when=asyncio.FIRST_COMPLETED)
    log.emit("pool_manager", "component.stopped", "stopping workers")
    await supervisor.stop_all()
    task.cancel()
    stopping.cancel()
    await server.stop(0.5)
    nvml.close()
    if task.done() and not task.cancelled() and task.exception() is not None:
        raise task.exception()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llama-orch pool-manager")
    parser.add_argument("--config", help="TOML config file")
    parser.add_argument("--pool-id")
    parser.add_argument("--listen", help="host:port for worker callbacks (default 127.0.0.1:9200)")
    parser.add_argument("--orchestrator", help="orchestrator address (default 127.0.0.1:9100)")
    parser.add_argument("--join-token", default=os.environ.get("LLAMA_ORCH_JOIN_TOKEN", ""),
                        help="single-use token from `llama-orch ca join-token` (first start "
                             "with TLS on; or LLAMA_ORCH_JOIN_TOKEN, which `ps` does not show)")
    ns = parser.parse_args(argv)
    try:
        cfg = config_mod.load(ns.config)
        cfg.pool.id = ns.pool_id or cfg.pool.id
        cfg.pool.listen = ns.listen or cfg.pool.listen
        cfg.pool.orchestrator = ns.orchestrator or cfg.pool.orchestrator
        cfg.validate()
        asyncio.run(serve(cfg, ns.join_token))
    except OrchError as err:
        print(f"pool-manager: {err.code}: {err.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0
