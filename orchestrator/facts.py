"""The fact stream: every state change is one typed Fact.

The same record is written as the JSON log line and fanned out to WatchFacts
subscribers (and through them the gateway's /v2/events and the web UI). A bounded
ring keeps recent facts so a watcher can resume after an id. A subscriber that falls
too far behind is dropped rather than slowing the orchestrator down.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from common import log
from llama_orch.v1 import events_pb2

K = events_pb2
_LEVEL_NAMES = {K.FACT_LEVEL_DEBUG: "debug", K.FACT_LEVEL_INFO: "info",
                K.FACT_LEVEL_WARNING: "warning", K.FACT_LEVEL_ERROR: "error"}


def _code(name: str) -> str:
    head, _, tail = name.removeprefix("FACT_KIND_").lower().partition("_")
    return f"{head}.{tail}" if tail else head


_CODES = {number: _code(name) for name, number in events_pb2.FactKind.items()}


def code_of(kind: int) -> str:
    """FACT_KIND_WORKER_FAILED -> "worker.failed" (the stable event code)."""
    code = _CODES.get(kind)
    if code is None:
        raise ValueError(f"{kind} is not a FactKind")
    return code


class _Subscriber:
    def __init__(self, kinds: frozenset[int], job_id: str, depth: int):
        self.kinds, self.job_id = kinds, job_id
        self.queue: asyncio.Queue[events_pb2.Fact | None] = asyncio.Queue(depth)

    def wants(self, fact: events_pb2.Fact) -> bool:
        return (not self.kinds or fact.kind in self.kinds) and (
            not self.job_id or fact.job_id == self.job_id)


class FactBus:
    def __init__(self, component: str = "orchestrator", retain: int = 10_000,
                 subscriber_depth: int = 4096, echo: bool = True):
        self.component = component
        self._ring: collections.deque[events_pb2.Fact] = collections.deque(maxlen=retain)
        self._subs: list[_Subscriber] = []
        self._next_id = 1
        self._depth = subscriber_depth
        self._echo = echo

    @property
    def last_id(self) -> int:
        """The id of the last fact published (0 before the first). A reader that takes
        it and the state in one step, without an await between, has a state that
        includes every fact up to it and none after it."""
        return self._next_id - 1

    def publish(self, kind: int, message: str = "", *, level: int = K.FACT_LEVEL_INFO,
                job_id: str = "", pool_id: str = "", worker_id: str = "", model_ref: str = "",
                correlation_id: str = "", component: str = "", **attributes: Any) -> events_pb2.Fact:
        ts = timestamp_pb2.Timestamp()
        ts.FromNanoseconds(time.time_ns())
        attrs = struct_pb2.Struct()
        clean = {k: v for k, v in attributes.items() if v is not None}
        if clean:
            attrs.update(clean)
        fact = events_pb2.Fact(
            id=self._next_id, time=ts, kind=kind, code=code_of(kind), level=level,
            component=component or self.component, correlation_id=correlation_id,
            message=message, job_id=job_id, pool_id=pool_id, worker_id=worker_id,
            model_ref=model_ref, attributes=attrs)
        self._next_id += 1
        self._ring.append(fact)
        if self._echo:
            log.emit(fact.component, fact.code, message, level=_LEVEL_NAMES.get(level, "info"),
                     correlation_id=correlation_id, fact_id=fact.id, job_id=job_id,
                     pool_id=pool_id, worker_id=worker_id, model_ref=model_ref, **clean)
        for sub in list(self._subs):
            if sub.wants(fact):
                try:
                    sub.queue.put_nowait(fact)
                except asyncio.QueueFull:
                    self._drop(sub)
        return fact

    def _drop(self, sub: _Subscriber) -> None:
        self._subs.remove(sub)
        while not sub.queue.empty():
            sub.queue.get_nowait()
        sub.queue.put_nowait(None)

    def recent(self, kinds: Iterable[int] = (), after_id: int = 0) -> list[events_pb2.Fact]:
        ks = frozenset(kinds)
        return [f for f in self._ring if f.id > after_id and (not ks or f.kind in ks)]

    async def watch(self, kinds: Iterable[int] = (), job_id: str = "",
                    after_id: int = 0) -> AsyncIterator[events_pb2.Fact]:
        """Replay retained facts after `after_id`, then follow live ones."""
        sub = _Subscriber(frozenset(kinds), job_id, self._depth)
        backlog = [f for f in self._ring if f.id > after_id and sub.wants(f)]
        self._subs.append(sub)
        try:
            for fact in backlog:
                yield fact
            last = backlog[-1].id if backlog else after_id
            while True:
                fact = await sub.queue.get()
                if fact is None:
                    return  # too slow: dropped
                if fact.id > last:
                    yield fact
        finally:
            if sub in self._subs:
                self._subs.remove(sub)
