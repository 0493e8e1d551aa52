"""A pool for in-process orchestrator tests: a PoolRecord whose commands a task answers."""

from __future__ import annotations

import asyncio

from llama_orch.v1 import common_pb2 as C, pool_link_pb2 as L
from orchestrator.core import Orchestrator
from orchestrator.registry import PoolRecord

GIB = 1 << 30


class ScriptedPool:
    """Joins `orch` with simulated devices of `gib` GiB each and answers each command
    with `answer(command)`: an OrchError refuses it, None accepts it."""

    def __init__(self, orch: Orchestrator, pool_id: str, devices: list[str], answer=None,
                 gib: int = 8):
        inv = C.Inventory(engines=["sim"], devices=[
            C.Device(id=d, kind=C.DEVICE_KIND_SIMULATED, memory_total_bytes=gib * GIB,
                     memory_free_bytes=gib * GIB) for d in devices])
        self.record = PoolRecord(pool_id, inv)
        self.commands: list[L.PoolCommand] = []
        self.answer = answer or (lambda cmd: None)
        orch.pool_joined(self.record)
        self.task = asyncio.create_task(self._serve())

    async def _serve(self) -> None:
        while True:
            cmd = await self.record.outbox.get()
            self.commands.append(cmd)
            err = self.answer(cmd)
            result = L.CommandResult(command_id=cmd.command_id, ok=err is None)
            if err is not None:
                result.error.CopyFrom(err.to_detail())
            self.record.pending[cmd.command_id].set_result(result)
