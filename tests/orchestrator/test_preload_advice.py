"""The optimizer's preload advice becomes one PreloadModel command per pool and model."""

import asyncio

from common.config import Config
from common.errors import OrchError
from orchestrator import advisor
from orchestrator.core import Orchestrator
from tests.orchestrator.scripted_pool import ScriptedPool


async def settle():
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_preload_is_commanded_once_and_again_only_after_a_failure():
    orch = Orchestrator(Config())
    await orch.start()
    try:
        refuse = {"on": True}
        pool = ScriptedPool(orch, "pool-a", ["sim-0"], answer=lambda cmd: OrchError(
            "RAM_BUDGET_EXCEEDED", "too big") if refuse["on"] else None)
        advisor.preload(orch, "pool-a", "file:/models/m")
        advisor.preload(orch, "pool-a", "file:/models/m")  # already on its way: not sent twice
        await settle()
        preloads = [c for c in pool.commands if c.WhichOneof("command") == "preload_model"]
        assert [c.preload_model.model_ref for c in preloads] == ["file:/models/m"]
        refuse["on"] = False  # it failed, so the next advice may try again
        advisor.preload(orch, "pool-a", "file:/models/m")
        advisor.preload(orch, "pool-a", "file:/models/m")
        await settle()
        preloads = [c for c in pool.commands if c.WhichOneof("command") == "preload_model"]
        assert len(preloads) == 2
        advisor.preload(orch, "pool-gone", "file:/models/m")  # unknown pool: nothing to send
        await settle()
        assert len(pool.commands) == 2
    finally:
        await orch.stop()
