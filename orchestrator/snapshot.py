"""The frozen snapshot the scheduler decides over, and the decisions it returns.

Contract: a Snapshot is immutable and complete for one scheduling cycle; `decide`
reads nothing else. Decisions name ids that exist in the snapshot; the validator
(orchestrator.validator) checks every one before the loop carries it out.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.types import Priority, WorkerPhase


@dataclass(frozen=True)
class JobView:
    job_id: str
    model_ref: str
    priority: Priority
    order: int  # admission order; FIFO within a priority class
    memory_estimate: int
    device_count: int = 1


@dataclass(frozen=True)
class WorkerView:
    worker_id: str
    pool_id: str
    model_ref: str
    phase: WorkerPhase
    device_ids: tuple[str, ...]
    last_used: float = 0.0


@dataclass(frozen=True)
class DeviceView:
    device_id: str
    total_bytes: int
    # Free after subtracting memory held outside llama-orch and by our workers
    # (reported bytes, or the estimate while a worker is starting).
    free_bytes: int
    kind: str = "gpu"  # gpu | cpu | simulated


@dataclass(frozen=True)
class PoolView:
    pool_id: str
    available: bool
    devices: tuple[DeviceView, ...]
    engines: tuple[str, ...] = ("hf",)


@dataclass(frozen=True)
class Snapshot:
    jobs: tuple[JobView, ...]  # queued jobs, in scheduling order
    workers: tuple[WorkerView, ...]
    pools: tuple[PoolView, ...]
    now: float = 0.0
    # Models whose worker starts keep failing: no new start until this time.
    start_backoff_until: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Dispatch:
    job_id: str
    worker_id: str
    reason: str


@dataclass(frozen=True)
class StartWorker:
    model_ref: str
    pool_id: str
    device_ids: tuple[str, ...]
    memory_estimate: int
    reason: str


@dataclass(frozen=True)
class Wait:
    job_id: str
    reason: str


Decision = Dispatch | StartWorker | Wait
