"""Engines by name. Each is imported only when asked for, so a worker for one engine
never needs another engine's libraries installed."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from common.errors import OrchError
from worker.engines.base import Engine, Step

__all__ = ["ENGINES", "Engine", "Step", "create"]

# name -> "module:Class"; `trtllm` and `sim` slot in here.
ENGINES: dict[str, str] = {
    "hf": "worker.engines.hf:HfEngine",
    "trtllm": "worker.engines.trtllm:TrtllmEngine",
    "sim": "worker.engines.sim:SimEngine",  # simulated; only ever by explicit --engine sim
}


def create(name: str, model_path: Path, devices: Sequence[str], threads: int,
           options: Mapping[str, str]) -> Engine:
    """Construct (not load) the named engine; unknown names are ENGINE_UNAVAILABLE."""
    if name not in ENGINES:
        raise OrchError("ENGINE_UNAVAILABLE",
                        f"engine {name!r} is not available in this worker "
                        f"(available: {', '.join(sorted(ENGINES))})", param="engine")
    module, _, cls = ENGINES[name].partition(":")
    engine_cls = getattr(importlib.import_module(module), cls)
    return engine_cls(model_path, devices, threads, options)
