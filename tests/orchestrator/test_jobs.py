import asyncio

import pytest

from common.config import OrchestratorConfig
from common.errors import OrchError
from llama_orch.v1 import common_pb2 as C, events_pb2 as E
from orchestrator.admission import admit
from orchestrator.catalog import Catalog
from orchestrator.jobs import JobRecord


def record() -> JobRecord:
    spec = C.JobSpec(model="tiny", prompt="the fox")
    return JobRecord("job-1", spec, admit(spec, Catalog.from_config({}), OrchestratorConfig()))


async def test_sequence_numbers_have_no_gaps_and_resume_gives_exactly_the_rest():
    job = record()
    job.append(queued=E.JobQueued())
    job.append(tokens=E.JobTokens(text=" a"))
    job.append(tokens=E.JobTokens(text=" b"))
    job.append(end=E.JobEnd(finish_reason="stop"), final=True)
    assert [e.seq for e in job.events] == [1, 2, 3, 4]
    assert [e.seq async for e in job.follow(2)] == [3, 4]
    assert [e.seq async for e in job.follow(4)] == []


async def test_followers_get_live_events_until_the_final_one():
    job = record()
    job.append(queued=E.JobQueued())
    got = []

    async def follow():
        async for e in job.follow(0):
            got.append(e.WhichOneof("kind"))
    task = asyncio.create_task(follow())
    await asyncio.sleep(0)
    job.append(tokens=E.JobTokens(text=" a"))
    await asyncio.sleep(0)
    job.append(error=OrchError("CANCELLED", "x").to_detail(), final=True)
    await asyncio.wait_for(task, 5)
    assert got == ["queued", "tokens", "error"]


async def test_resume_beyond_the_stream_is_a_clear_error():
    job = record()
    job.append(queued=E.JobQueued())
    with pytest.raises(OrchError) as err:
        [e async for e in job.follow(5)]
    assert err.value.code == "RESUME_OUT_OF_RANGE" and err.value.param == "after_seq"


def test_nothing_follows_the_final_event():
    job = record()
    job.append(end=E.JobEnd(), final=True)
    with pytest.raises(RuntimeError):
        job.append(tokens=E.JobTokens(text="late"))
