"""The Orchestrator's watchdog: job deadlines, pools that stopped sending heartbeats, and
workers that never became ready. Runs as one of the Orchestrator's tasks."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from common.errors import OrchError
from llama_orch.v1 import pool_link_pb2
from orchestrator.types import WorkerPhase

if TYPE_CHECKING:
    from orchestrator.core import Orchestrator


async def run(orch: Orchestrator) -> None:
    """Marks pools lost after missed heartbeats and gives up on stuck starts."""
    cfg = orch.cfg.orchestrator
    heartbeat_limit_s = cfg.missed_heartbeats * orch.cfg.pool.heartbeat_ms / 1000
    while True:
        await asyncio.sleep(0.5)
        orch.expire_deadlines()
        now = time.monotonic()
        for pool in list(orch.registry.pools.values()):
            if now - pool.last_heartbeat > heartbeat_limit_s:
                orch.pool_lost(pool, f"no heartbeat for {now - pool.last_heartbeat:.1f} s")
        for w in list(orch.registry.workers.values()):
            if (w.phase is WorkerPhase.STARTING
                    and time.time() - w.started_at > cfg.worker_start_timeout_s):
                pool = orch.registry.pools.get(w.pool_id)
                if pool is not None:
                    asyncio.create_task(pool.command(stop_worker=pool_link_pb2.StopWorkerCommand(
                        worker_id=w.worker_id, force=True)))
                orch.worker_gone(w.worker_id, OrchError(
                    "WORKER_START_FAILED", f"not ready after {cfg.worker_start_timeout_s:.0f} s"),
                    start_failed=True)
