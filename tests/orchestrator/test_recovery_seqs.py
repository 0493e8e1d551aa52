"""Recovery never gives a seq a client may have seen to another event.

Events are shown before they are durable (orchestrator/jobs.py), so after a crash a
client may have seen seqs beyond the stored log. A job recovery continues resumes
above its reservation; so must one it fails because its model is no longer admitted."""

import asyncio

from common.config import Config
from common.errors import OrchError
from llama_orch.v1 import common_pb2 as C, events_pb2 as E
from orchestrator import recovery
from orchestrator.core import Orchestrator
from orchestrator.store import Store


async def until(cond) -> None:
    async def wait():
        while not cond():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(wait(), 5)


async def test_a_job_failed_at_recovery_ends_above_what_clients_saw(tmp_path, monkeypatch):
    url = f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"
    store = await Store.open(url)
    orch = Orchestrator(Config(), store=store)
    await orch.start()
    job, _ = await orch.submit(C.JobSpec(model="tiny", prompt="the fox",
                                         sampling=C.SamplingParams(seed=1)))
    job.append(tokens=E.JobTokens(text="The fox", token_ids=[5, 6]))
    await store.flush()
    job.on_append = lambda *_: None  # shown to clients, then lost in the crash
    job.append(tokens=E.JobTokens(text=" ran", token_ids=[8]))
    seen = job.visible_seq
    assert seen == job.last_seq
    # The crash: no orderly stop; a second orchestrator opens the same store, and its
    # catalog no longer admits the job's model.
    store2 = await Store.open(url)

    def refuse(*_a, **_k):
        raise OrchError("MODEL_NOT_FOUND", "the catalog changed")
    monkeypatch.setattr(recovery.admission, "admit", refuse)
    orch2 = Orchestrator(Config(), store=store2)
    try:
        await orch2.start()
        back = orch2.jobs[job.job_id]
        await until(lambda: back._closed)
        kinds = [e.WhichOneof("kind") for e in back.events if e.seq > seen]
        assert kinds == ["divergence", "error"], kinds
        divergence = next(e.divergence for e in back.events if e.HasField("divergence"))
        assert (divergence.token_index, divergence.char_offset) == (2, len("The fox"))
        # A client resuming after the last seq it saw gets the realignment and the end.
        assert [e.WhichOneof("kind") async for e in back.follow(seen)] == kinds
    finally:
        await orch2.stop()
        await store2.close()
        await orch.stop()
        await store.close()
