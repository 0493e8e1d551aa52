"""The pool's models: fetched into the disk cache, optionally held in RAM, reported up.

The pool manager never decides which model to fetch, preload or evict: the
orchestrator commands it (FetchModel, PreloadModel, EvictModel, or a StartWorker that
needs a model not cached yet). This module carries those out and reports every phase
as a ModelProgress message (DOWNLOADING with bytes, CACHED with the pinned commit,
PRELOADED, EVICTED, FAILED with a stable code), which the orchestrator turns into
facts. Download progress is throttled so a fast link does not flood the pool link.

A model a worker runs from is held (`acquire`) until the worker exits, so the disk
budget never evicts files under a running worker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from common.errors import OrchError
from common.model_ref import parse
from common.timestamps import to_timestamp
from llama_orch.v1 import common_pb2, pool_link_pb2
from pool_manager.cache import CachedModel, ModelCache
from pool_manager.preload import Preloader

PROGRESS_EVERY_S = 0.5
P = pool_link_pb2


class Models:
    def __init__(self, cache: ModelCache, preloader: Preloader,
                 report: Callable[[pool_link_pb2.ModelProgress], None]):
        self.cache = cache
        self.preloader = preloader
        self.report = report
        self._pinned: dict[str, str] = {}  # ref as asked -> pinned ref (last fetch)

    async def fetch(self, ref: str) -> CachedModel:
        """The model on local disk (downloaded if needed), progress reported."""
        parse(ref)  # INVALID_MODEL_REF before anything else
        last = [0.0]
        loop = asyncio.get_running_loop()

        def progress(done: int, total: int) -> None:
            # Called on the cache's thread: the report (the link's asyncio queue) is
            # handed to the event loop, whose objects are not thread-safe.
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY_S or done >= total:
                last[0] = now
                loop.call_soon_threadsafe(self.report, P.ModelProgress(
                    model_ref=ref, phase=P.MODEL_PHASE_DOWNLOADING, bytes_done=done,
                    bytes_total=total))
        try:
            cached = await self.cache.ensure(ref, progress)
        except OrchError as err:
            self.report(P.ModelProgress(model_ref=ref, phase=P.MODEL_PHASE_FAILED,
                                        error=err.to_detail()))
            raise
        self._pinned[ref] = cached.pinned_ref
        self.report(P.ModelProgress(model_ref=ref, phase=P.MODEL_PHASE_CACHED,
                                    bytes_done=cached.size_bytes, bytes_total=cached.size_bytes,
                                    resolved_revision=cached.resolved_revision))
        return cached

    async def for_worker(self, ref: str) -> tuple[str, str]:
        """(model_dir, pinned ref) for a worker about to start; held until `released`.
        file: refs load in place (model_dir "")."""
        if parse(ref).kind == "file":
            return "", ref
        cached = await self.fetch(ref)
        self.cache.acquire(cached.pinned_ref)
        self.preloader.touch(ref)
        return str(cached.path), cached.pinned_ref

    def released(self, pinned_ref: str) -> None:
        if parse(pinned_ref).kind != "file":
            self.cache.release(pinned_ref)

    async def preload(self, ref: str) -> None:
        cached = await self.fetch(ref)
        try:
            await self.preloader.preload(ref, cached.path)
        except OrchError as err:
            self.report(P.ModelProgress(model_ref=ref, phase=P.MODEL_PHASE_FAILED,
                                        error=err.to_detail()))
            raise
        self.report(P.ModelProgress(model_ref=ref, phase=P.MODEL_PHASE_PRELOADED,
                                    bytes_done=cached.size_bytes, bytes_total=cached.size_bytes,
                                    resolved_revision=cached.resolved_revision))

    async def evict(self, ref: str, from_disk: bool) -> None:
        """Drop from RAM, and from the disk cache too when asked (MODEL_PINNED while a
        worker runs from it)."""
        found = self.preloader.evict(ref)
        if from_disk and parse(ref).kind == "hf":
            found = await self.cache.evict(self._pinned.get(ref, ref)) or found
        if not found:
            raise OrchError("NOT_FOUND", f"{ref} is neither preloaded nor cached here",
                            param="model_ref")
        self.report(P.ModelProgress(model_ref=ref, phase=P.MODEL_PHASE_EVICTED))

    def residency(self) -> list[common_pb2.ModelResidency]:
        """What heartbeats carry: cached and preloaded models with sizes and last use."""
        out: dict[str, common_pb2.ModelResidency] = {}
        for e in self.cache.entries():
            out[e.ref] = common_pb2.ModelResidency(model_ref=e.ref, cached=True,
                                                   size_bytes=e.size_bytes,
                                                   last_used_at=to_timestamp(e.last_used))
        for ref, size, last_used in self.preloader.entries():
            r = out.setdefault(self._pinned.get(ref, ref), common_pb2.ModelResidency(
                model_ref=ref, size_bytes=size, last_used_at=to_timestamp(last_used)))
            r.preloaded = True
        return list(out.values())
