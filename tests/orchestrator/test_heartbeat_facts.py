"""pool.heartbeat facts: when a heartbeat becomes a fact (orchestrator/heartbeat_facts.py)."""

from __future__ import annotations

import pytest
from google.protobuf import json_format

from llama_orch.v1 import common_pb2 as C, events_pb2 as E
from orchestrator.facts import FactBus
from orchestrator.heartbeat_facts import MIN_INTERVAL_S, HeartbeatFacts, moved

GIB = 1 << 30


def inv(used_gib: float = 10, util: float = 0, temp: float = 40, ram_gib: float = 50,
        ids=("GPU-0",)) -> C.Inventory:
    return C.Inventory(ram_total_bytes=100 * GIB, ram_available_bytes=int(ram_gib * GIB),
                       devices=[C.Device(id=d, memory_total_bytes=100 * GIB,
                                         memory_used_bytes=int(used_gib * GIB),
                                         memory_free_bytes=int((100 - used_gib) * GIB),
                                         utilization_percent=util, temperature_c=temp)
                                for d in ids])


@pytest.mark.parametrize("after,want", [
    (inv(), False),
    (inv(used_gib=10.5), False),            # 0.5 % of the device
    (inv(used_gib=11), True),               # 1 %
    (inv(used_gib=9), True),
    (inv(util=0.5), False),
    (inv(util=1), True),
    (inv(temp=41), True),
    (inv(ram_gib=50.5), False),
    (inv(ram_gib=49), True),
    (inv(ids=("GPU-0", "GPU-1")), True),
    (inv(ids=("GPU-1",)), True),
], ids=["same", "memory-small", "memory-1pct", "memory-down", "util-small", "util-1pt",
        "temperature", "ram-small", "ram-1pct", "device-added", "device-replaced"])
def test_what_counts_as_moved(after, want):
    assert moved(inv(), after) is want


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttled_per_pool_and_only_when_something_moved():
    bus, clock = FactBus(echo=False), Clock()
    beats = HeartbeatFacts(bus, clock=clock)
    first = beats.heartbeat("link-a", "pool-a", inv())
    assert first is not None  # a pool's first heartbeat always shows
    assert beats.heartbeat("link-b", "pool-b", inv()) is not None  # per pool
    clock.now += MIN_INTERVAL_S / 2
    assert beats.heartbeat("link-a", "pool-a", inv(used_gib=50)) is None  # too soon
    clock.now += MIN_INTERVAL_S / 2
    later = beats.heartbeat("link-a", "pool-a", inv(used_gib=50))
    assert later is not None
    clock.now += MIN_INTERVAL_S * 10
    assert beats.heartbeat("link-a", "pool-a", inv(used_gib=50.2)) is None  # nothing moved
    # Drift adds up against the last fact, not the last heartbeat.
    assert beats.heartbeat("link-a", "pool-a", inv(used_gib=51)) is not None
    # A new link (the pool rejoined) starts afresh.
    beats.forget("link-a")
    assert beats.heartbeat("link-a2", "pool-a", inv(used_gib=51)) is not None
    assert [f.kind for f in bus.recent()] == [E.FACT_KIND_POOL_HEARTBEAT] * 5


def test_the_fact_carries_what_the_snapshot_shows_of_each_device():
    bus = FactBus(echo=False)
    fact = HeartbeatFacts(bus).heartbeat("l", "pool-a", inv(used_gib=25, util=37.5, temp=41))
    assert (fact.pool_id, fact.level, fact.code) == ("pool-a", E.FACT_LEVEL_DEBUG,
                                                     "pool.heartbeat")
    assert json_format.MessageToDict(fact.attributes) == {
        "devices": [{"id": "GPU-0", "memory_total_bytes": 100 * GIB,
                     "memory_used_bytes": 25 * GIB, "memory_free_bytes": 75 * GIB,
                     "utilization_percent": 37.5, "temperature_c": 41.0}],
        "ram_available_bytes": 50 * GIB}
