"""The queue optimizer's loop: while the queue is deep, ask orchestrator/optimizer.py for
advice, publish it as facts for the scheduler (which decides), and hot-load model files
where it advises a preload. Runs as one of the Orchestrator's tasks."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

from llama_orch.v1 import events_pb2, pool_link_pb2
from orchestrator import metrics, optimizer
from orchestrator.snapshot import PreloadAdvice, UnservableAdvice

if TYPE_CHECKING:
    from orchestrator.core import Orchestrator

F = events_pb2


async def run(orch: Orchestrator) -> None:
    """The queue optimizer: while the queue is deep, advise; the scheduler decides."""
    o = orch.cfg.orchestrator
    cfg = optimizer.OptimizerConfig(threshold_queued=o.optimizer_threshold,
                                    interval_s=o.optimizer_interval_s,
                                    budget_s=o.optimizer_budget_s)
    while True:
        # A pool joining or leaving changes what can be served: look again at once.
        # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that
        # arrives as the event is set (a pool leaving at shutdown), and stop() hung.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(cfg.interval_s):
                await orch.optimize_now.wait()
        orch.optimize_now.clear()
        if len(orch.index) <= cfg.threshold_queued:
            if orch.advice:
                orch.advice = ()
            continue
        t0 = time.perf_counter()
        snap = orch.snapshot()
        advice = await asyncio.to_thread(optimizer.advise, snap, cfg.budget_s, cfg)
        orch.advice = tuple(advice)
        metrics.OPTIMIZER_RUNS.labels(component="orchestrator").inc()
        for a in advice:
            metrics.OPTIMIZER_ADVICE.labels(component="orchestrator",
                                            kind=type(a).__name__).inc()
            orch.facts.publish(F.FACT_KIND_OPTIMIZER_ADVICE, repr(a),
                               model_ref=a.model_ref, pool_id=getattr(a, "pool_id", ""),
                               level=F.FACT_LEVEL_WARNING if isinstance(a, UnservableAdvice)
                               else F.FACT_LEVEL_INFO, advice=type(a).__name__)
            if isinstance(a, PreloadAdvice):
                preload(orch, a.pool_id, a.model_ref)
        orch.facts.publish(F.FACT_KIND_OPTIMIZER_RUN, f"{len(advice)} suggestions",
                           queued=len(orch.index), ms=round((time.perf_counter() - t0) * 1000, 2))
        orch.wake()

def preload(orch: Orchestrator, pool_id: str, model_ref: str) -> None:
    """Hot-load a model's files on a pool (the optimizer's advice): once per pool and
    model until the pool is lost or the preload fails."""
    key = (pool_id, model_ref)
    pool = orch.registry.pools.get(pool_id)
    if pool is None or key in orch.preloads:
        return
    orch.preloads.add(key)

    async def run() -> None:
        result = await pool.command(preload_model=pool_link_pb2.PreloadModelCommand(
            model_ref=model_ref))
        if not result.ok:
            orch.preloads.discard(key)
            orch.facts.publish(F.FACT_KIND_DECISION_REJECTED, f"preload of {model_ref} on "
                               f"{pool_id} failed: {result.error.message}",
                               level=F.FACT_LEVEL_WARNING, pool_id=pool_id, model_ref=model_ref)
    asyncio.create_task(run())
