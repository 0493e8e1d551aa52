"""Orchestrator metrics (Prometheus), served on their own loopback port (plain HTTP;
platform mode refuses another bind unless orchestrator.metrics_allow_non_loopback).

Names carry units and every metric has `component`; no job or tenant ids as labels.
Only the decision loop and the admission path record into these: policy code stays
pure. The state gauges (queue depth, pools, workers by phase) are read when scraped,
from counts the orchestrator keeps as it goes (`watch`), never recomputed per cycle.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)
C = {"component": "orchestrator"}

QUEUE_DEPTH = Gauge("orchd_queue_depth", "Queued jobs by priority.", ["component", "priority"],
                    registry=REGISTRY)
ADMISSIONS = Counter("orchd_admissions_total", "Submissions by outcome (admitted or error code).",
                     ["component", "outcome"], registry=REGISTRY)
DISPATCHES = Counter("orchd_dispatches_total", "Dispatch attempts by outcome.",
                     ["component", "outcome"], registry=REGISTRY)
SCHEDULING_LATENCY = Histogram(
    "orchd_scheduling_latency_ms", "Time of one decide() cycle (snapshot, policy, validation).",
    ["component"], registry=REGISTRY,
    buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.35, 0.5, 0.75, 1, 2.5, 5, 10, 25, 50,
             100, 250))
DECISIONS = Counter("orchd_decisions_total", "Decisions by action and whether the validator refused.",
                    ["component", "action", "outcome"], registry=REGISTRY)
RETRIES = Counter("orchd_retries_total", "Jobs requeued for another attempt, by cause code.",
                  ["component", "code"], registry=REGISTRY)
FINISHED = Counter("orchd_jobs_finished_total", "Jobs reaching a terminal state.",
                   ["component", "status"], registry=REGISTRY)
OPTIMIZER_RUNS = Counter("orchd_optimizer_runs_total", "Queue optimizer cycles.", ["component"],
                         registry=REGISTRY)
OPTIMIZER_ADVICE = Counter("orchd_optimizer_advice_total", "Optimizer suggestions by kind.",
                           ["component", "kind"], registry=REGISTRY)
POOLS = Gauge("orchd_pools", "Connected pools.", ["component"], registry=REGISTRY)
WORKERS = Gauge("orchd_workers", "Workers by phase.", ["component", "phase"], registry=REGISTRY)

if TYPE_CHECKING:
    from orchestrator.core import Orchestrator


def watch(orch: "Orchestrator") -> None:
    """Report this orchestrator's queue depth, pools and workers by phase whenever the
    gauges are scraped (the last one started wins; a collected one reads 0). The scrape
    runs on the metrics server's thread: it only reads counts the loop keeps up to date
    (QueueIndex depths, Registry.phase_counts), never iterates live records."""
    from orchestrator.types import Priority, WorkerPhase
    ref = weakref.ref(orch)

    def reading(read: Callable[["Orchestrator"], float]) -> Callable[[], float]:
        def value() -> float:
            o = ref()
            return 0.0 if o is None else float(read(o))
        return value

    for prio in Priority:
        QUEUE_DEPTH.labels(priority=prio.name.lower(), **C).set_function(
            reading(lambda o, p=prio: o.index.depth_by_priority().get(p, 0)))
    POOLS.labels(**C).set_function(reading(lambda o: len(o.registry.pools)))
    for phase in WorkerPhase:
        WORKERS.labels(phase=phase.value, **C).set_function(
            reading(lambda o, p=phase: o.registry.phase_counts[p]))


def serve(address: str) -> None:
    """Serve /metrics over plain HTTP at `address` (a daemon thread). The endpoint has no
    authentication: common/config.py keeps it on loopback in platform mode unless
    orchestrator.metrics_allow_non_loopback says otherwise; any other bind is logged."""
    from common import config, log
    host, _, port = address.rpartition(":")
    if not config.is_loopback(host.strip("[]")):
        log.emit("orchestrator", "metrics.non_loopback", f"metrics served in plaintext, "
                 f"without authentication, on {address}", level="warning")
    start_http_server(int(port), addr=host, registry=REGISTRY)
