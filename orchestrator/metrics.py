"""Orchestrator metrics (Prometheus), served on their own loopback port.

Names carry units and every metric has `component`; no job or tenant ids as labels.
Only the decision loop and the admission path record into these: policy code stays
pure.
"""

from __future__ import annotations

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
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250))
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


def serve(address: str) -> None:
    host, _, port = address.rpartition(":")
    start_http_server(int(port), addr=host, registry=REGISTRY)
