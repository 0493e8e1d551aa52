import asyncio

import pytest

from orchestrator.facts import FactBus, code_of
from llama_orch.v1 import events_pb2 as E


def test_codes_are_dotted_and_stable():
    assert code_of(E.FACT_KIND_WORKER_FAILED) == "worker.failed"
    assert code_of(E.FACT_KIND_JOB_ADMITTED) == "job.admitted"
    for name, number in E.FactKind.items():  # every kind, from the table made at import
        head, _, tail = name.removeprefix("FACT_KIND_").lower().partition("_")
        assert code_of(number) == (f"{head}.{tail}" if tail else head)


@pytest.mark.parametrize("bad", [-1, 10_000, 2**31 - 1])
def test_a_kind_the_enum_lacks_is_refused(bad):
    with pytest.raises(ValueError):
        code_of(bad)


def test_publish_logs_the_same_record(capsys):
    bus = FactBus()
    fact = bus.publish(E.FACT_KIND_POOL_JOINED, "2 devices", pool_id="p1", devices=["a", "b"])
    line = capsys.readouterr().err.strip()
    assert '"code":"pool.joined"' in line and '"pool_id":"p1"' in line and f'"fact_id":{fact.id}' in line
    assert list(fact.attributes["devices"]) == ["a", "b"]


async def test_watch_replays_after_id_then_follows_and_filters():
    bus = FactBus(echo=False)
    bus.publish(E.FACT_KIND_JOB_ADMITTED, job_id="a")
    second = bus.publish(E.FACT_KIND_WORKER_READY)
    bus.publish(E.FACT_KIND_JOB_FINISHED, job_id="a")
    got = []

    async def watch():
        async for f in bus.watch([E.FACT_KIND_JOB_ADMITTED, E.FACT_KIND_JOB_FINISHED], after_id=0):
            got.append(f.code)
            if len(got) == 3:
                return
    task = asyncio.create_task(watch())
    await asyncio.sleep(0)
    bus.publish(E.FACT_KIND_WORKER_READY)  # filtered out
    bus.publish(E.FACT_KIND_JOB_ADMITTED, job_id="b")
    await asyncio.wait_for(task, 5)
    assert got == ["job.admitted", "job.finished", "job.admitted"]
    assert [f.id for f in bus.recent(after_id=second.id)] == [3, 4, 5]


async def test_a_slow_watcher_is_dropped_not_waited_for():
    bus = FactBus(echo=False, subscriber_depth=2)
    got = []

    async def slow():
        async for f in bus.watch():
            got.append(f)
    task = asyncio.create_task(slow())
    await asyncio.sleep(0)
    for _ in range(10):
        bus.publish(E.FACT_KIND_POOL_HEARTBEAT)  # never blocks, whatever the watcher does
    await asyncio.wait_for(task, 5)  # the stream ended: the watcher was cut off
    assert len(got) < 10
