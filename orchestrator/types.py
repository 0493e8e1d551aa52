"""The orchestrator's vocabulary: ids and small enums every module speaks."""

from __future__ import annotations

import enum
from typing import NewType

JobId = NewType("JobId", str)
WorkerId = NewType("WorkerId", str)
PoolId = NewType("PoolId", str)
ModelRef = NewType("ModelRef", str)  # canonical: "file:/abs" or "hf:org/repo@rev::file=p"
DeviceId = NewType("DeviceId", str)


class JobState(enum.Enum):
    QUEUED = "queued"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class WorkerPhase(enum.Enum):
    """A worker runs up to `slots` jobs at once: READY while at least one slot is free
    (it may already run jobs; *idle* means READY with none running), BUSY when every
    slot is taken."""
    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    STOPPING = "stopping"
    GONE = "gone"


class Priority(enum.IntEnum):
    """Lower value runs first."""
    INTERACTIVE = 0
    BATCH = 1
