"""freeze_startup_heap keeps start-up objects out of the collector's full passes."""

from __future__ import annotations

import gc

from common.heap import freeze_startup_heap


def test_objects_alive_at_the_call_are_frozen_and_later_ones_are_not(capsys):
    gc.unfreeze()
    kept = [["start-up", i] for i in range(1000)]  # lists: always tracked
    try:
        frozen = freeze_startup_heap("test")
        assert frozen == gc.get_freeze_count() >= len(kept)
        tracked = {id(o) for o in gc.get_objects()}  # the frozen generation is left out
        assert not any(id(d) in tracked for d in kept)
        later = ["after", "start-up"]
        assert id(later) in {id(o) for o in gc.get_objects()}
        line = capsys.readouterr().err
        assert '"code":"runtime.heap_frozen"' in line and f'"objects":{frozen}' in line
    finally:
        gc.unfreeze()
