"""SSE on /v2: a job's events (StreamJob) and the fact stream (WatchFacts): framing,
Last-Event-ID / ?after= resume, refusals before the stream starts, heartbeats, and
that a client going away ends only the gRPC stream, never the job."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from llama_orch.v1 import events_pb2

from common.errors import OrchError
from gateway.app import create_app
from tests.gateway.conftest import in_process, served, sse_blocks
from tests.gateway.scripted_orchestrator import (
    HOLD,
    JOB_ID,
    PAUSE,
    end,
    error,
    logprob,
    queued,
    started,
    tokens,
)

EVENTS = f"/v2/tasks/{JOB_ID}/events"
K = events_pb2


def blocks_of(r: httpx.Response) -> list[dict]:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    return sse_blocks(r.text)


# ---- a job's events ------------------------------------------------------------------


async def test_every_event_is_an_id_event_data_block(client, orchestrator):
    r = await client.get(EVENTS)
    assert r.headers["cache-control"] == "no-cache"
    blocks = blocks_of(r)
    assert [(b["id"], b["event"]) for b in blocks] == [
        ("1", "queued"), ("2", "started"), ("3", "tokens"), ("4", "tokens"), ("5", "end")]
    assert blocks[0]["data"] == {"job_id": JOB_ID, "seq": 1, "time": "2023-11-14T22:13:20Z",
                                 "priority": "interactive", "reason": None}
    assert blocks[2]["data"] == {"job_id": JOB_ID, "seq": 3, "time": "2023-11-14T22:13:20Z",
                                 "choice_index": 0, "text": "Hello", "token_ids": [0],
                                 "logprobs": None}
    assert blocks[4]["data"]["usage"] == {"prompt_tokens": 5, "completion_tokens": 2,
                                          "total_tokens": 7}
    assert orchestrator.stream_requests[-1].job_id == JOB_ID
    assert orchestrator.stream_requests[-1].after_seq == 0


def _retrying() -> events_pb2.JobEvent:
    return events_pb2.JobEvent(retrying=events_pb2.JobRetrying(
        attempt=2, backoff_ms=500, cause=OrchError("WORKER_CRASHED", "died").to_detail()))


def _end_with_proof() -> events_pb2.JobEvent:
    ev = end("length", 5, 1)
    ev.end.proof.token_hash, ev.end.proof.token_count = "ff", 1
    return ev


# (event, SSE event name, its data beyond job_id/seq/time)
KINDS = {
    "dispatched": (events_pb2.JobEvent(dispatched=events_pb2.JobDispatched(
        worker_id="w-1", pool_id="local", attempt=1)), "dispatched",
        {"worker_id": "w-1", "pool_id": "local", "attempt": 1}),
    "started": (started(5), "started",
                {"prompt_tokens": 5, "model_ref": "file:/m/tiny", "attempt": 0, "seed": 0}),
    "tokens-with-logprobs": (tokens("Hi", index=1, ids=1, logprobs=[
        logprob("Hi", -0.5, {"Hi": -0.5})]), "tokens", {
            "choice_index": 1, "text": "Hi", "token_ids": [0],
            "logprobs": [{"token": "Hi", "logprob": -0.5,
                          "top": [{"token": "Hi", "logprob": -0.5}]}]}),
    "metrics": (events_pb2.JobEvent(metrics=events_pb2.JobMetrics(
        time_to_first_token_ms=12.5, tokens_per_second=40.0, generated_tokens=8,
        queue_ms=1.5)), "metrics", {"time_to_first_token_ms": 12.5, "tokens_per_second": 40.0,
                                    "generated_tokens": 8, "queue_ms": 1.5}),
    "divergence": (events_pb2.JobEvent(divergence=events_pb2.JobDivergence(
        choice_index=1, token_index=3, char_offset=11, message="retry differs")), "divergence",
        {"choice_index": 1, "token_index": 3, "char_offset": 11, "message": "retry differs"}),
    "retrying": (_retrying(), "retrying", {"attempt": 2, "backoff_ms": 500, "cause": {
        "message": "died", "type": "server_error", "param": None, "code": "worker_crashed"}}),
    "end": (_end_with_proof(), "end", {
        "choice_index": 0, "finish_reason": "length",
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        "proof": {"seed": 0, "model_ref": "", "model_digest": "abc", "engine": "sim",
                  "engine_version": "1.0", "device": "", "token_hash": "ff",
                  "token_count": 1}}),
}


@pytest.mark.parametrize("event,name,fields", KINDS.values(), ids=KINDS.keys())
async def test_each_kind_has_its_name_and_fields(client, orchestrator, event, name, fields):
    orchestrator.script = [queued(), event, end()]
    block = blocks_of(await client.get(EVENTS))[1]
    assert (block["id"], block["event"]) == ("2", name)
    assert block["data"] == {"job_id": JOB_ID, "seq": 2, "time": "2023-11-14T22:13:20Z",
                             **fields}


async def test_events_after_the_first_end_still_come(client, orchestrator):
    # n=2: one end per choice; the orchestrator ends the stream after the last.
    orchestrator.script = [queued(), tokens("a"), tokens("b", index=1), end(index=1), end()]
    blocks = blocks_of(await client.get(EVENTS))
    assert [(b["event"], b["data"].get("choice_index")) for b in blocks][-2:] == [
        ("end", 1), ("end", 0)]


async def test_the_jobs_error_is_its_last_event(client, orchestrator):
    orchestrator.script = [queued(), tokens("Hel"), error("WORKER_CRASHED", "worker died")]
    blocks = blocks_of(await client.get(EVENTS))
    assert blocks[-1] == {"id": "3", "event": "error", "data": {
        "job_id": JOB_ID, "seq": 3, "time": "2023-11-14T22:13:20Z",
        "error": {"message": "worker died", "type": "server_error", "param": None,
                  "code": "worker_crashed"}}}


async def test_a_broken_stream_ends_with_an_error_event_without_id(client, orchestrator):
    orchestrator.script = [queued(), tokens("Hel"), OrchError("UNAVAILABLE", "orchestrator gone")]
    blocks = blocks_of(await client.get(EVENTS))
    assert [b["id"] for b in blocks] == ["1", "2", None]  # Last-Event-ID stays at 2
    assert blocks[-1]["event"] == "error"
    assert blocks[-1]["data"]["error"]["code"] == "unavailable"
    text = (await client.get("/metrics")).text
    assert 'code="UNAVAILABLE",component="gateway",route="/v2/tasks/{job_id}/events"' in text


# Last-Event-ID values the gateway accepts, and the after_seq each becomes. Spaces and
# tabs around a header value are not part of it (RFC 9110 §5.5); empty means absent.
VALID_IDS = {
    "zero": ("0", 0),
    "plain": ("3", 3),
    "spaces": (" 3 ", 3),
    "tab": ("\t2", 2),
    "leading-zeros": ("004", 4),
    "empty": ("", 0),
    "blank": ("  ", 0),
}


@pytest.mark.parametrize("value,after", VALID_IDS.values(), ids=VALID_IDS.keys())
async def test_last_event_id_resumes_after_that_seq(client, orchestrator, value, after):
    blocks = blocks_of(await client.get(EVENTS, headers={"Last-Event-ID": value}))
    assert orchestrator.stream_requests[-1].after_seq == after
    assert [int(b["id"]) for b in blocks] == list(range(after + 1, 6))


async def test_after_query_param_resumes_too(client, orchestrator):
    blocks = blocks_of(await client.get(EVENTS, params={"after": "2"}))
    assert orchestrator.stream_requests[-1].after_seq == 2
    assert blocks[0]["id"] == "3"


async def test_last_event_id_wins_over_after(client, orchestrator):
    # An EventSource reconnects to its original URL and adds the header.
    await client.get(EVENTS, params={"after": "1"}, headers={"Last-Event-ID": "4"})
    assert orchestrator.stream_requests[-1].after_seq == 4


async def test_resuming_at_the_end_of_a_finished_job_is_an_empty_stream(client):
    assert blocks_of(await client.get(EVENTS, headers={"Last-Event-ID": "5"})) == []


# Refused before any RPC: not a non-negative decimal integer that fits a uint64.
MALFORMED_IDS = {
    "letters": "abc",
    "negative": "-1",
    "plus-sign": "+3",
    "fraction": "1.5",
    "exponent": "1e3",
    "hex": "0x10",
    "two-numbers": "3 4",
    "thirty-digits": "1" * 30,
    "two-to-the-64": str(2**64),
}


@pytest.mark.parametrize("value", MALFORMED_IDS.values(), ids=MALFORMED_IDS.keys())
async def test_malformed_last_event_id_is_400(client, orchestrator, value):
    r = await client.get(EVENTS, headers={"Last-Event-ID": value})
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert (err["param"], err["code"], err["type"]) == ("Last-Event-ID", "invalid_argument",
                                                        "invalid_request_error")
    assert orchestrator.stream_requests == []


@pytest.mark.parametrize("value", ["abc", "-1", "1" * 30])
async def test_malformed_after_is_400(client, orchestrator, value):
    r = await client.get(EVENTS, params={"after": value})
    assert (r.status_code, r.json()["error"]["param"]) == (400, "after")
    assert orchestrator.stream_requests == []


async def test_largest_uint64_is_a_valid_id_but_out_of_range(client, orchestrator):
    r = await client.get(EVENTS, headers={"Last-Event-ID": str(2**64 - 1)})
    assert orchestrator.stream_requests[-1].after_seq == 2**64 - 1
    assert r.json()["error"]["code"] == "resume_out_of_range"


@pytest.mark.parametrize("how,param", [({"headers": {"Last-Event-ID": "9"}}, "Last-Event-ID"),
                                       ({"params": {"after": "9"}}, "after")],
                         ids=["header", "query"])
async def test_beyond_the_stream_is_400_resume_out_of_range(client, orchestrator, how, param):
    r = await client.get(EVENTS, **how)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/json"  # refused before the stream
    err = r.json()["error"]
    assert (err["code"], err["param"], err["type"]) == ("resume_out_of_range", param,
                                                        "invalid_request_error")
    assert orchestrator.stream_requests[-1].after_seq == 9


async def test_events_of_an_unknown_job_are_404(client):
    r = await client.get("/v2/tasks/nope/events")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")


async def test_correlation_id_reaches_stream_job(client, orchestrator):
    r = await client.get(EVENTS, headers={"X-Correlation-Id": "sse-1"})
    assert r.headers["x-correlation-id"] == "sse-1"
    assert orchestrator.metadata[-1]["x-correlation-id"] == "sse-1"


@pytest.fixture
async def quick_url(orchestrator):
    """The gateway over HTTP with heartbeats and the open wait shortened, so an idle
    stream commits and beats at once."""
    app = create_app(orchestrator.address, heartbeat_s=0.01, stream_open_wait_s=0.01)
    async with served(app) as url:
        yield url


class Reader:
    """Reads a streamed response up to some text, as many times as needed."""

    def __init__(self, r: httpx.Response):
        self.chunks = r.aiter_text()
        self.seen = ""

    async def until(self, needle: str) -> str:
        while needle not in self.seen:
            try:
                self.seen += await anext(self.chunks)
            except StopAsyncIteration:
                raise AssertionError(f"stream ended without {needle!r}: {self.seen!r}") from None
        return self.seen


async def read_until(r: httpx.Response, needle: str) -> str:
    return await Reader(r).until(needle)


async def test_disconnect_ends_the_grpc_stream_but_not_the_job(http_url, orchestrator):
    orchestrator.script = [queued(), tokens("Hel"), HOLD]
    async with httpx.AsyncClient(base_url=http_url) as c, c.stream("GET", EVENTS) as r:
        assert r.status_code == 200
        await asyncio.wait_for(read_until(r, "event: tokens"), 10)
        await asyncio.wait_for(orchestrator.holding.wait(), 10)
    await asyncio.wait_for(orchestrator.cancelled.wait(), 10)
    assert orchestrator.cancel_requests == []  # StreamJob ended; no CancelJob


async def test_an_idle_stream_commits_and_sends_keep_alives(quick_url, orchestrator):
    orchestrator.script = [HOLD]  # a job with nothing to say yet
    async with httpx.AsyncClient(base_url=quick_url) as c, c.stream("GET", EVENTS) as r:
        assert r.status_code == 200
        seen = await asyncio.wait_for(read_until(r, ": keep-alive\n\n: keep-alive\n\n"), 10)
    assert sse_blocks(seen)[:2] == [{"comment": "keep-alive"}] * 2
    await asyncio.wait_for(orchestrator.cancelled.wait(), 10)
    assert orchestrator.cancel_requests == []


async def test_a_failure_after_commit_is_an_error_event(quick_url, orchestrator):
    # The open wait runs out before the orchestrator fails: the 200 is already sent.
    orchestrator.script = [PAUSE, OrchError("UNAVAILABLE", "orchestrator going away")]
    async with httpx.AsyncClient(base_url=quick_url) as c, c.stream("GET", EVENTS) as r:
        assert r.status_code == 200
        reader = Reader(r)
        await asyncio.wait_for(reader.until(": keep-alive"), 10)
        orchestrator.resume.set()
        seen = await asyncio.wait_for(reader.until("event: error"), 10)
    error_block = sse_blocks(seen)[-1]
    assert (error_block["id"], error_block["data"]["error"]["code"]) == (None, "unavailable")


# ---- the fact stream -----------------------------------------------------------------


async def test_facts_are_id_code_json_blocks(client, orchestrator):
    r = await client.get("/v2/events")
    assert '"attributes":{"exit_code":137}' in r.text  # a Struct's 137.0 shown whole
    blocks = blocks_of(r)
    assert [(b["id"], b["event"]) for b in blocks] == [
        ("1", "job.admitted"), ("2", "worker.failed"), ("3", "job.finished")]
    assert blocks[1]["data"] == {
        "id": 2, "time": "2023-11-14T22:13:22Z", "kind": "worker_failed",
        "code": "worker.failed", "level": "info", "component": "orchestrator",
        "correlation_id": None, "message": "worker exited", "job_id": None,
        "pool_id": "local", "worker_id": "w-1", "model_ref": None,
        "attributes": {"exit_code": 137}}
    request = orchestrator.watch_requests[-1]
    assert (list(request.kinds), request.job_id, request.after_id) == ([], "", 0)


# Every spelling of a kind the filter accepts.
KIND_QUERIES = {
    "code": (["worker.failed"], [K.FACT_KIND_WORKER_FAILED]),
    "short-name": (["WORKER_FAILED"], [K.FACT_KIND_WORKER_FAILED]),
    "full-name": (["FACT_KIND_WORKER_FAILED"], [K.FACT_KIND_WORKER_FAILED]),
    "lower-name": (["worker_failed"], [K.FACT_KIND_WORKER_FAILED]),
    "mixed-case": (["Worker.Failed"], [K.FACT_KIND_WORKER_FAILED]),
    "repeated": (["worker.failed", "job.finished"],
                 [K.FACT_KIND_WORKER_FAILED, K.FACT_KIND_JOB_FINISHED]),
    "comma-separated": (["worker.failed, job.finished"],
                        [K.FACT_KIND_WORKER_FAILED, K.FACT_KIND_JOB_FINISHED]),
    "duplicate": (["worker.failed", "WORKER_FAILED"], [K.FACT_KIND_WORKER_FAILED]),
    "empty": ([""], []),
}


@pytest.mark.parametrize("values,kinds", KIND_QUERIES.values(), ids=KIND_QUERIES.keys())
async def test_kind_filter_reaches_watch_facts(client, orchestrator, values, kinds):
    blocks = blocks_of(await client.get("/v2/events", params=[("kind", v) for v in values]))
    assert list(orchestrator.watch_requests[-1].kinds) == kinds
    assert {b["data"]["kind"] for b in blocks} <= (
        {K.FactKind.Name(k).removeprefix("FACT_KIND_").lower() for k in kinds} or
        {"job_admitted", "worker_failed", "job_finished"})


@pytest.mark.parametrize("value", ["worker.exploded", "unspecified", "FACT_KIND_UNSPECIFIED",
                                   "worker.failed,nope"])
async def test_unknown_kind_is_400(client, orchestrator, value):
    r = await client.get("/v2/events", params={"kind": value})
    assert r.status_code == 400
    assert (r.json()["error"]["param"], r.json()["error"]["code"]) == ("kind", "invalid_argument")
    assert orchestrator.watch_requests == []


async def test_job_id_filter(client, orchestrator):
    blocks = blocks_of(await client.get("/v2/events", params={"job_id": JOB_ID}))
    assert orchestrator.watch_requests[-1].job_id == JOB_ID
    assert [b["id"] for b in blocks] == ["1", "3"]


@pytest.mark.parametrize("how", [{"headers": {"Last-Event-ID": "2"}}, {"params": {"after": "2"}}],
                         ids=["header", "query"])
async def test_facts_resume_after_an_id(client, orchestrator, how):
    blocks = blocks_of(await client.get("/v2/events", **how))
    assert orchestrator.watch_requests[-1].after_id == 2
    assert [b["id"] for b in blocks] == ["3"]


@pytest.mark.parametrize("how,param", [({"headers": {"Last-Event-ID": "1.5"}}, "Last-Event-ID"),
                                       ({"params": {"after": "-3"}}, "after")],
                         ids=["header", "query"])
async def test_malformed_fact_position_is_400(client, orchestrator, how, param):
    r = await client.get("/v2/events", **how)
    assert (r.status_code, r.json()["error"]["param"]) == (400, param)
    assert orchestrator.watch_requests == []


async def test_unsafe_fact_code_is_not_an_event_name(client, orchestrator):
    bad = events_pb2.Fact(id=7, kind=K.FACT_KIND_AUDIT, code="audit\nevent: forged")
    orchestrator.facts = [bad]
    blocks = blocks_of(await client.get("/v2/events"))
    assert [(b["id"], b["event"], b["data"]["code"]) for b in blocks] == [
        ("7", "fact", "audit\nevent: forged")]


async def test_an_idle_fact_stream_beats_and_disconnect_ends_the_watch(quick_url, orchestrator):
    orchestrator.facts = [HOLD]
    async with httpx.AsyncClient(base_url=quick_url) as c, c.stream("GET", "/v2/events") as r:
        assert r.status_code == 200
        await asyncio.wait_for(read_until(r, ": keep-alive\n\n"), 10)
    await asyncio.wait_for(orchestrator.cancelled.wait(), 10)


async def test_fact_stream_with_orchestrator_down_is_503():
    async with in_process(create_app("127.0.0.1:1")) as c:
        r = await c.get("/v2/events")
    assert (r.status_code, r.json()["error"]["code"]) == (503, "unavailable")
