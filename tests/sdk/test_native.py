"""The native API against a live stack: submit, stream, resume, detach, idempotency,
get, cancel, list, the fact stream and the admin wrappers."""

from __future__ import annotations

import gc

import pytest
from llama_orch_sdk import (
    ConflictError,
    InvalidRequestError,
    JobEvent,
    NotFoundError,
)

pytestmark = pytest.mark.e2e

STORY = "The Lion and the Mouse."
CHAT = [{"role": "user", "content": "tell me a story about a fox"}]
# Greedy, the tiny model writes all 400 tokens of CHAT (no early end of text) whatever
# the sampler's random generator, so a cancel always lands mid-job.
LONG = {"max_tokens": 400, "temperature": 0}


def test_submit_returns_an_id_and_the_stream_tells_the_whole_job(client):
    job_id = client.jobs.submit(model="tiny", prompt=STORY, max_tokens=20, seed=5,
                                keep_output=True, labels={"suite": "sdk"})
    assert job_id.startswith("job-")
    events = list(client.jobs.stream(job_id))
    assert all(isinstance(e, JobEvent) and e.job_id == job_id for e in events)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].type == "queued" and events[-1].type == "end"
    assert [e for e in events if e.terminal] == [events[-1]]
    job = client.jobs.get(job_id)
    assert (job.status, job.priority, job.seed, job.labels) == ("succeeded", "interactive", 5,
                                                                {"suite": "sdk"})
    assert job.last_seq == len(events) and job.done
    assert job.output == "".join(e.text for e in events if e.type == "tokens")
    assert job.usage == events[-1].usage and job.finish_reason == events[-1].finish_reason


@pytest.mark.parametrize("where", ["second", "middle", "last"])
def test_a_stream_resumed_from_a_seq_is_the_tail_of_the_full_stream(client, where):
    job_id = client.jobs.submit(model="tiny", prompt=STORY, max_tokens=40, seed=6)
    full = list(client.jobs.stream(job_id))
    seq = {"second": 2, "middle": len(full) // 2, "last": len(full)}[where]
    assert list(client.jobs.stream(job_id, from_seq=seq)) == full[seq - 1:]


def test_resuming_past_the_end(client):
    job_id = client.jobs.submit(model="tiny", prompt=STORY, max_tokens=5, seed=6)
    full = list(client.jobs.stream(job_id))
    assert list(client.jobs.stream(job_id, from_seq=len(full) + 1)) == []
    with pytest.raises(InvalidRequestError) as err:
        list(client.jobs.stream(job_id, from_seq=len(full) + 2))
    assert err.value.code == "RESUME_OUT_OF_RANGE"


def test_a_detached_generation_resumes_after_a_disconnect(client, settled):
    stream = client.jobs.generate(model="tiny", prompt=STORY, max_tokens=200, seed=7, detach=True)
    first = [next(stream) for _ in range(4)]
    stream.close()  # the client goes away mid-job; a detached job runs on
    job_id = first[0].job_id
    rest = list(client.jobs.stream(job_id, from_seq=first[-1].seq + 1))
    assert rest and rest[-1].type == "end"
    assert first + rest == list(client.jobs.stream(job_id))
    assert settled(job_id).status == "succeeded"


def test_closing_an_attached_generation_cancels_its_job(client, settled):
    stream = client.jobs.generate(model="tiny", messages=CHAT, **LONG)
    job_id = next(stream).job_id
    stream.close()
    assert settled(job_id).status == "cancelled"


def test_dropping_a_stream_without_close_cancels_its_job_at_once(client, settled):
    # gc off: only reference counting frees the stream, as when no collection happens
    # to run; a stream that held itself in a reference cycle would leave the job running.
    gc.disable()
    try:
        stream = client.jobs.generate(model="tiny", messages=CHAT, **LONG)
        for event in stream:
            break
        del stream
        job = settled(event.job_id)
    finally:
        gc.enable()
    assert job.status == "cancelled"


def test_an_idempotency_key_returns_the_same_job(client):
    spec = dict(model="tiny", prompt=STORY, max_tokens=3, seed=9, priority="batch")
    first = client.jobs.submit(**spec, idempotency_key="sdk-idem-1")
    assert client.jobs.submit(**spec, idempotency_key="sdk-idem-1") == first
    assert client.jobs.get(first).priority == "batch"
    with pytest.raises(ConflictError) as err:
        client.jobs.submit(**{**spec, "prompt": "another"}, idempotency_key="sdk-idem-1")
    assert err.value.code == "IDEMPOTENCY_CONFLICT"


def test_cancel_ends_a_running_job_and_keeps_a_finished_ones_outcome(client, settled):
    job_id = client.jobs.submit(model="tiny", messages=CHAT, **LONG)
    assert client.jobs.cancel(job_id).id == job_id
    job = settled(job_id)
    assert job.status == "cancelled" and job.error.code == "CANCELLED"
    last = list(client.jobs.stream(job_id))[-1]
    assert last.type == "error" and last.error.code == "CANCELLED"
    assert last.error.exception().__class__.__name__ == "CancelledError"
    done = client.jobs.submit(model="tiny", prompt=STORY, max_tokens=2, seed=10)
    list(client.jobs.stream(done))
    assert client.jobs.cancel(done).status == "succeeded"


def test_unknown_jobs_are_not_found(client):
    for call in (client.jobs.get, client.jobs.cancel):
        with pytest.raises(NotFoundError) as err:
            call("job-doesnotexist")
        assert (err.value.code, err.value.param) == ("NOT_FOUND", "job_id")
    with pytest.raises(NotFoundError):
        list(client.jobs.stream("job-doesnotexist"))


def test_list_filters_by_status(client):
    job_id = client.jobs.submit(model="tiny", prompt=STORY, max_tokens=2, seed=11)
    list(client.jobs.stream(job_id))
    succeeded = client.jobs.list(status="succeeded", page_size=1000)
    assert job_id in [j.id for j in succeeded]
    assert {j.status for j in succeeded} == {"succeeded"}
    assert job_id not in [j.id for j in client.jobs.list(status=["failed", "cancelled"])]
    with pytest.raises(InvalidRequestError):
        client.jobs.list(status="sleeping")


def test_watch_sees_the_jobs_facts_in_order(client):
    job_id = client.jobs.submit(model="tiny", prompt=STORY, max_tokens=3, seed=12)
    codes = []
    with client.facts.watch(job_id=job_id) as facts:
        for fact in facts:
            assert fact.job_id == job_id and fact.id > 0
            codes.append(fact.code)
            if fact.code == "job.finished":
                break
    assert codes[0] == "job.admitted" and codes[-1] == "job.finished"
    assert codes.index("job.dispatched") < codes.index("job.started")


def test_watch_filters_by_kind(client):
    job_id = client.jobs.submit(model="tiny", prompt=STORY, max_tokens=2, seed=13)
    with client.facts.watch(kinds=["job.finished"]) as facts:
        for fact in facts:
            assert fact.code == "job.finished"
            if fact.job_id == job_id:
                break


def test_admin_starts_and_stops_a_worker(client):
    worker = client.admin.start_worker("tiny")
    assert worker.id and worker.model_ref.endswith("tiny") and worker.pool_id
    client.admin.stop_worker(worker.id)
    with pytest.raises(NotFoundError) as err:
        client.admin.stop_worker("w-doesnotexist")
    assert err.value.param == "worker_id"
    with pytest.raises(NotFoundError):
        client.admin.start_worker("nope")


def test_an_admin_call_the_orchestrator_cannot_serve_raises_a_typed_error(client):
    # Home mode without TLS has no CA, so there is nothing to sign a join token with.
    with pytest.raises(InvalidRequestError) as err:
        client.admin.create_join_token("pool-x")
    assert (err.value.code, err.value.param) == ("CONFIG_INVALID", "security.pki_dir")
