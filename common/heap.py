"""Keep the cyclic collector's full passes short in long-running daemons.

A daemon allocates most of what it keeps for life while it starts: imported modules,
protobuf descriptors, SQLAlchemy metadata, a worker's model. CPython's collector walks
every tracked object on each full (generation 2) pass, and with ~120k of them such a
pass stopped the orchestrator's event loop for ~47 ms (measured with gc.callbacks),
which lands in the tail of every latency the loop serves. `gc.freeze()` moves what
exists now into a permanent generation that passes skip; what is allocated later is
collected as before, and frozen objects are still freed by reference counting.
"""

from __future__ import annotations

import gc
import time

from common import log


def freeze_startup_heap(component: str) -> int:
    """Collect once, then freeze everything alive. Call when start-up is done (it may
    be called again after more start-up work); returns the number of frozen objects."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.emit(component, "runtime.heap_frozen", f"{frozen} start-up objects kept out of "
             "the collector's passes", level="debug", objects=frozen,
             ms=round((time.perf_counter() - started) * 1000, 1))
    return frozen
