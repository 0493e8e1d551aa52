"""pool.heartbeat facts: each pool's device memory and utilisation, live, for the web UI.

A pool heartbeats every `pool.heartbeat_ms` (500 ms by default); a fact for each would
flood the fact stream and its retained ring. So a heartbeat becomes a fact only when

  - at least `min_interval_s` (2 s) have passed since the pool's last such fact, and
  - something moved enough to see since that fact: a device's used memory by at least
    1 % of its total, its utilisation by 1 point or its temperature by 1 °C, the host's
    available RAM by 1 % of its total, or the set of devices changed.

A pool's first heartbeat after it (re)joins always qualifies. A change made within the
interval is published with the first heartbeat after it, so a view lags at most
`min_interval_s` plus one heartbeat. The fact (level debug) carries

    attributes.devices = [{id, memory_total_bytes, memory_used_bytes, memory_free_bytes,
                           utilization_percent, temperature_c}]   in the pool's order
    attributes.ram_available_bytes

which is what GetClusterSnapshot shows of each device, so a view applies it as is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from llama_orch.v1 import common_pb2, events_pb2
from orchestrator.facts import FactBus

MIN_INTERVAL_S = 2.0
MOVED = 0.01  # of a total: memory, RAM
MOVED_POINTS = 1.0  # utilisation percent, degrees C


def readings(inv: common_pb2.Inventory) -> dict[str, Any]:
    """The fact's attributes for this inventory."""
    return {
        "devices": [{"id": d.id, "memory_total_bytes": d.memory_total_bytes,
                     "memory_used_bytes": d.memory_used_bytes,
                     "memory_free_bytes": d.memory_free_bytes,
                     "utilization_percent": round(d.utilization_percent, 1),
                     "temperature_c": round(d.temperature_c, 1)} for d in inv.devices],
        "ram_available_bytes": inv.ram_available_bytes,
    }


def moved(before: common_pb2.Inventory, now: common_pb2.Inventory) -> bool:
    """Did anything a person would see on a memory bar or gauge change?"""
    if [d.id for d in before.devices] != [d.id for d in now.devices]:
        return True
    for a, b in zip(before.devices, now.devices):
        total = max(a.memory_total_bytes, b.memory_total_bytes, 1)
        if abs(int(a.memory_used_bytes) - int(b.memory_used_bytes)) >= MOVED * total:
            return True
        if abs(a.utilization_percent - b.utilization_percent) >= MOVED_POINTS:
            return True
        if abs(a.temperature_c - b.temperature_c) >= MOVED_POINTS:
            return True
    ram = max(now.ram_total_bytes, 1)
    return abs(int(before.ram_available_bytes) - int(now.ram_available_bytes)) >= MOVED * ram


class HeartbeatFacts:
    """Turns pool heartbeats into throttled pool.heartbeat facts (one state per pool)."""

    def __init__(self, facts: FactBus, min_interval_s: float = MIN_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.facts = facts
        self.min_interval_s = min_interval_s
        self.clock = clock
        # pool link id -> (when its last fact was published, the inventory it showed)
        self._last: dict[str, tuple[float, common_pb2.Inventory]] = {}

    def heartbeat(self, link_id: str, pool_id: str,
                  inv: common_pb2.Inventory) -> events_pb2.Fact | None:
        """Publish the heartbeat as a fact if it is due; the fact, else None."""
        now = self.clock()
        last = self._last.get(link_id)
        if last is not None and (now - last[0] < self.min_interval_s or not moved(last[1], inv)):
            return None
        self._last[link_id] = (now, inv)
        used = sum(d.memory_used_bytes for d in inv.devices)
        return self.facts.publish(
            events_pb2.FACT_KIND_POOL_HEARTBEAT,
            f"{len(inv.devices)} devices, {used / (1 << 30):.1f} GiB used",
            level=events_pb2.FACT_LEVEL_DEBUG, pool_id=pool_id, **readings(inv))

    def forget(self, link_id: str) -> None:
        """The link ended: its pool's next link starts afresh."""
        self._last.pop(link_id, None)
