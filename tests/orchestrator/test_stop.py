"""Orchestrator.stop() ends every background task, even when a pool leaves in the same
instant (the optimizer's wake-up set as it is cancelled).

On Python 3.11, asyncio.wait_for swallowed a cancellation that arrived together with
the awaited event: the optimizer went back to sleep for its interval, and stop() (and
`llama-orch up`'s Ctrl-C) waited for the shutdown guard. The test runs that instant
over and over; a hang fails at the guard, not by a time measurement."""

from __future__ import annotations

import asyncio

import pytest

from common.config import Config
from orchestrator.core import Orchestrator

GUARD_S = 20  # far above any honest stop; only a hang reaches it


@pytest.mark.parametrize("yields", [0, 1, 2])
async def test_stop_ends_the_optimizer_even_as_a_pool_leaves(tmp_path, yields):
    cfg = Config()
    cfg.data_dir = tmp_path
    cfg.orchestrator.optimizer_interval_s = 3600.0  # a swallowed cancel sleeps this long
    cfg.validate()
    for _ in range(20):
        orch = Orchestrator(cfg)
        await orch.start()
        await asyncio.sleep(0)  # the optimizer is waiting now
        orch.optimize_now.set()  # a pool joined or left ...
        for _ in range(yields):
            await asyncio.sleep(0)
        await asyncio.wait_for(orch.stop(), GUARD_S)  # ... just as we stop
        assert all(t.done() for t in orch._tasks)
