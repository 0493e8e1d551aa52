"""AsyncLlamaOrch against a live stack: the same resources as LlamaOrch, every method
awaited, streams iterated with `async for`."""

from __future__ import annotations

import asyncio
import gc

import pytest
from llama_orch_sdk import (
    AsyncLlamaOrch,
    AsyncStream,
    CancelledError,
    ChatCompletion,
    InvalidRequestError,
    NotFoundError,
)

pytestmark = pytest.mark.e2e

CHAT = [{"role": "user", "content": "tell me a story about a fox"}]
STORY = "The Lion and the Mouse."
# Greedy, the tiny model writes all 400 tokens of CHAT (no early end of text) whatever
# the sampler's random generator, so a cancel always lands mid-job.
LONG = {"max_tokens": 400, "temperature": 0}


@pytest.fixture
async def aclient(stack):
    async with AsyncLlamaOrch(stack.orchestrator) as c:
        yield c


async def test_chat_whole_and_streamed_agree(aclient):
    whole = await aclient.chat.completions.create(model="tiny", messages=CHAT, max_tokens=15,
                                                  seed=21)
    assert isinstance(whole, ChatCompletion) and whole.choices[0].message.content
    stream = await aclient.chat.completions.create(model="tiny", messages=CHAT, max_tokens=15,
                                                   seed=21, stream=True,
                                                   stream_options={"include_usage": True})
    assert isinstance(stream, AsyncStream)
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


async def test_completions_with_a_list_of_prompts(aclient):
    prompts = ["Once upon a time a hungry wolf", STORY]
    alone = [await aclient.completions.create(model="tiny", prompt=p, max_tokens=6, seed=22)
             for p in prompts]
    both = await aclient.completions.create(model="tiny", prompt=prompts, max_tokens=6, seed=22)
    assert [c.text for c in both.choices] == [a.choices[0].text for a in alone]


async def test_models(aclient):
    assert "tiny" in [m.id for m in await aclient.models.list()]
    with pytest.raises(NotFoundError) as err:
        await aclient.models.retrieve("nope")
    assert err.value.code == "MODEL_NOT_FOUND"


async def test_submit_stream_resume_get(aclient):
    job_id = await aclient.jobs.submit(model="tiny", prompt=STORY, max_tokens=30, seed=23)
    full = [e async for e in await aclient.jobs.stream(job_id)]
    assert [e.seq for e in full] == list(range(1, len(full) + 1)) and full[-1].type == "end"
    middle = len(full) // 2
    assert [e async for e in await aclient.jobs.stream(job_id, from_seq=middle)] == \
        full[middle - 1:]
    job = await aclient.jobs.get(job_id)
    assert job.status == "succeeded" and job.last_seq == len(full)


async def test_a_detached_generation_outlives_its_stream(aclient):
    stream = await aclient.jobs.generate(model="tiny", prompt=STORY, max_tokens=200, seed=24,
                                         detach=True)
    first = [await anext(stream) for _ in range(3)]
    await stream.close()
    rest = [e async for e in await aclient.jobs.stream(first[0].job_id,
                                                        from_seq=first[-1].seq + 1)]
    assert rest[-1].type == "end"
    assert [e.seq for e in first + rest] == list(range(1, len(first) + len(rest) + 1))


async def test_cancel_makes_a_streaming_chat_raise_cancelled(aclient):
    stream = await aclient.chat.completions.create(model="tiny", messages=CHAT, stream=True,
                                                   **LONG)
    first = await anext(stream)
    await aclient.jobs.cancel(first.id.removeprefix("chatcmpl-"))
    with pytest.raises(CancelledError) as err:
        async for _ in stream:
            pass
    assert err.value.code == "CANCELLED"


async def settled(aclient, job_id: str, timeout: float = 60.0):
    """The job's record once it is done (or after `timeout` seconds, as it is)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (job := await aclient.jobs.get(job_id)).done and loop.time() < deadline:
        await asyncio.sleep(0.1)
    return job


async def test_closing_a_stream_inside_its_loop_ends_the_loop_quietly(aclient):
    stream = await aclient.jobs.generate(model="tiny", messages=CHAT, **LONG)
    seen = []
    async for event in stream:  # must not raise asyncio.CancelledError
        seen.append(event)
        if len(seen) == 3:
            await stream.close()
    assert len(seen) == 3
    assert (await settled(aclient, seen[0].job_id)).status == "cancelled"


async def test_closing_a_stream_from_another_task_ends_its_reader_quietly(aclient):
    async def read_to_the_end(stream):
        async for _ in stream:
            pass

    # A watch no fact matches: its reader waits in a read until something ends it.
    stream = await aclient.facts.watch(job_id="job-doesnotexist")
    reader = asyncio.create_task(read_to_the_end(stream))
    await asyncio.sleep(0.2)
    await stream.close()  # cancels the call under the pending read
    await asyncio.wait_for(reader, 10)  # ends, neither raising nor hanging
    # Cancelling the reading task itself is still a cancellation, not an end.
    stream = await aclient.facts.watch(job_id="job-doesnotexist")
    reader = asyncio.create_task(read_to_the_end(stream))
    await asyncio.sleep(0.2)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    await stream.close()


async def test_dropping_a_stream_without_close_cancels_its_job_at_once(aclient):
    gc.disable()  # see test_native: reference counting alone must end the job
    try:
        stream = await aclient.chat.completions.create(model="tiny", messages=CHAT,
                                                       stream=True, **LONG)
        async for chunk in stream:
            break
        del stream
        job = await settled(aclient, chunk.id.removeprefix("chatcmpl-"))
    finally:
        gc.enable()
    assert job.status == "cancelled"


async def test_watch_facts(aclient):
    job_id = await aclient.jobs.submit(model="tiny", prompt=STORY, max_tokens=2, seed=26)
    codes = []
    async with await aclient.facts.watch(job_id=job_id) as facts:
        async for fact in facts:
            codes.append(fact.code)
            if fact.code == "job.finished":
                break
    assert codes[0] == "job.admitted" and codes[-1] == "job.finished"


async def test_typed_errors(aclient):
    with pytest.raises(InvalidRequestError) as err:
        await aclient.chat.completions.create(model="tiny", messages=CHAT, top_p=0, stream=True)
    assert (err.value.code, err.value.param) == ("INVALID_ARGUMENT", "top_p")
    with pytest.raises(InvalidRequestError) as err:  # home mode: no CA to sign with
        await aclient.admin.create_join_token("pool-x")
    assert (err.value.code, err.value.param) == ("CONFIG_INVALID", "security.pki_dir")


async def test_concurrent_chats_share_one_client(aclient):
    answers = await asyncio.gather(*(
        aclient.chat.completions.create(model="tiny", messages=CHAT, max_tokens=5, seed=s)
        for s in range(4)))
    assert len({a.id for a in answers}) == 4
