"""`llama-orch pool-manager`: inventory, worker processes, and the link to the orchestrator."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import signal
import sys

from common import config as config_mod, log
from common.errors import OrchError
from common.grpc_server import Server
from llama_orch.v1 import pool_link_pb2, worker_callback_pb2, worker_callback_pb2_grpc
from pool_manager import inventory, leftovers
from pool_manager.cache import ModelCache
from pool_manager.callbacks import CallbackServicer
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


async def serve(cfg: config_mod.Config) -> None:
    pc = cfg.pool
    server = Server([worker_callback_pb2.DESCRIPTOR.services_by_name["WorkerCallbackService"].full_name])
    server.bind(pc.listen)
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
    supervisor = Supervisor(callback_address, on_exit, cpu_threads=pc.cpu_threads,
                            grace_s=pc.stop_grace_s, sim_in_process=pc.sim_in_process,
                            ledger=ledger)
    nvml = inventory.Nvml.open()
    models = Models(ModelCache(config_mod.pool_cache_dir(cfg), pc.cache_budget_bytes),
                    Preloader(ram_budget(pc.ram_budget_bytes)),
                    lambda p: link.send(pool_link_pb2.ConnectRequest(model_progress=p)))
    link = PoolLink(pc, supervisor, nvml, available_engines(), callback_address, models)
    worker_callback_pb2_grpc.add_WorkerCallbackServiceServicer_to_server(
        CallbackServicer(supervisor, link.send), server.grpc)
    await server.start()
    log.emit("pool_manager", "component.started", f"pool {pc.id} on {callback_address}",
             nvml_status=nvml.status, orchestrator=pc.orchestrator)
    task = asyncio.create_task(link.run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.emit("pool_manager", "component.stopped", "stopping workers")
    await supervisor.stop_all()
    task.cancel()
    await server.stop(0.5)
    nvml.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llama-orch pool-manager")
    parser.add_argument("--config", help="TOML config file")
    parser.add_argument("--pool-id")
    parser.add_argument("--listen", help="host:port for worker callbacks (default 127.0.0.1:9200)")
    parser.add_argument("--orchestrator", help="orchestrator address (default 127.0.0.1:9100)")
    ns = parser.parse_args(argv)
    try:
        cfg = config_mod.load(ns.config)
        cfg.pool.id = ns.pool_id or cfg.pool.id
        cfg.pool.listen = ns.listen or cfg.pool.listen
        cfg.pool.orchestrator = ns.orchestrator or cfg.pool.orchestrator
        cfg.validate()
        asyncio.run(serve(cfg))
    except OrchError as err:
        print(f"pool-manager: {err.code}: {err.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0
