"""Token coalescing for a stream that fell behind (orchestrator/coalesce.py): the merge
rules as a table, and Generate over real gRPC with and without `coalesce`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from common.config import Config
from llama_orch.v1 import client_pb2 as CL, client_pb2_grpc, common_pb2 as C, events_pb2 as E
from orchestrator.coalesce import coalesce
from orchestrator.core import Orchestrator
from orchestrator.main import build_server
from orchestrator.store import Store


def tok(seq: int, text: str, choice: int = 0, lp: bool = False) -> E.JobEvent:
    logprobs = [E.TokenLogprobs(token=text, logprob=-float(seq))] if lp else []
    return E.JobEvent(job_id="j", seq=seq, tokens=E.JobTokens(
        text=text, token_ids=[seq], choice_index=choice, logprobs=logprobs))


def end(seq: int, choice: int = 0) -> E.JobEvent:
    return E.JobEvent(job_id="j", seq=seq, end=E.JobEnd(choice_index=choice))


def shape(events: list[E.JobEvent]) -> list[tuple]:
    out = []
    for e in events:
        if e.HasField("tokens"):
            out.append(("tokens", e.seq, e.tokens.choice_index, e.tokens.text,
                        list(e.tokens.token_ids), [lp.token for lp in e.tokens.logprobs]))
        else:
            out.append((e.WhichOneof("kind"), e.seq))
    return out


@pytest.mark.parametrize("events, expected", [
    ([], []),
    ([tok(1, "a")], [("tokens", 1, 0, "a", [1], [])]),
    ([tok(1, "a"), tok(2, "b"), tok(3, "c")], [("tokens", 3, 0, "abc", [1, 2, 3], [])]),
    # another choice, or any other event, ends a run
    ([tok(1, "a"), tok(2, "b", choice=1), tok(3, "c")],
     [("tokens", 1, 0, "a", [1], []), ("tokens", 2, 1, "b", [2], []),
      ("tokens", 3, 0, "c", [3], [])]),
    ([tok(1, "a"), tok(2, "b"), end(3), tok(4, "c", 1), tok(5, "d", 1), end(6, 1)],
     [("tokens", 2, 0, "ab", [1, 2], []), ("end", 3), ("tokens", 5, 1, "cd", [4, 5], []),
      ("end", 6)]),
    # logprobs ride along, in order
    ([tok(1, "a", lp=True), tok(2, "b", lp=True)], [("tokens", 2, 0, "ab", [1, 2], ["a", "b"])]),
], ids=["empty", "one", "run", "choices-alternate", "ends-split", "logprobs"])
def test_coalesce_merges_runs_of_one_choice_only(events, expected):
    assert shape(coalesce(events)) == expected


def test_a_merged_event_keeps_the_last_events_time():
    a, b = tok(1, "a"), tok(2, "b")
    a.time.FromSeconds(10)
    b.time.FromSeconds(20)
    assert coalesce([a, b])[0].time.seconds == 20


# ---- over gRPC ------------------------------------------------------------------------

@pytest.fixture
async def served(tmp_path) -> AsyncIterator[tuple[Orchestrator, client_pb2_grpc.ClientServiceStub]]:
    """An orchestrator with no pools (jobs stay queued) and a real store."""
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}")
    cfg = Config()
    cfg.data_dir = tmp_path
    cfg.validate()
    orch = Orchestrator(cfg, store=store)
    await orch.start()
    server = build_server(orch)
    port = server.bind("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield orch, client_pb2_grpc.ClientServiceStub(channel)
    await channel.close()
    await server.stop(0)
    await orch.stop()
    await store.close()


async def stream_with_burst(orch: Orchestrator, stub, coalesce_: bool) -> list[E.JobEvent]:
    """Generate a job, then append five token events at once (as a relay does when the
    stream's task has not run in between) and cancel it; the events the client got."""
    call = stub.Generate(CL.GenerateRequest(spec=C.JobSpec(model="tiny", prompt="the fox"),
                                            coalesce=coalesce_))
    first = await call.read()
    job = orch.jobs[first.event.job_id]
    for i in range(5):  # no await in between: all five are ready together
        job.append(tokens=E.JobTokens(text=f"t{i}", token_ids=[100 + i]))
    await orch.cancel(job.job_id)
    events = [first.event]
    while (msg := await call.read()) is not grpc.aio.EOF:
        events.append(msg.event)
    return events


async def test_generate_with_coalesce_sends_a_burst_as_one_event(served):
    orch, stub = served
    events = await stream_with_burst(orch, stub, True)
    tokens = [e for e in events if e.HasField("tokens")]
    assert len(tokens) == 1
    assert tokens[0].tokens.text == "t0t1t2t3t4"
    assert list(tokens[0].tokens.token_ids) == [100, 101, 102, 103, 104]
    assert tokens[0].seq == 6  # the last it covers: queued was 1, tokens 2..6
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    # the job's own log keeps every event: StreamJob and resume see no merge
    stored = await anext_all(stub.StreamJob(CL.StreamJobRequest(job_id=events[0].job_id)))
    assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
    assert sum(e.HasField("tokens") for e in stored) == 5


async def test_generate_without_coalesce_sends_every_seq(served):
    orch, stub = served
    events = await stream_with_burst(orch, stub, False)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.tokens.text for e in events if e.HasField("tokens")] == [f"t{i}" for i in range(5)]


async def anext_all(call) -> list[E.JobEvent]:
    return [msg.event async for msg in call]
