"""Structured JSON log lines: one object per line on stderr.

The orchestrator's facts are logged through here, so the log line and the fact stream
are the same record. Other components log their own facts the same way.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


# One encoder for every line: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"), ensure_ascii=True)
_second: tuple[int, str] = (-1, "")  # the last whole second seen, formatted


def _timestamp() -> str:
    """Now, as 2026-11-29T21:40:05.123Z (UTC, milliseconds)."""
    global _second
    ms = time.time_ns() // 1_000_000
    sec = ms // 1000
    if sec != _second[0]:
        _second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{_second[1]}.{ms % 1000:03d}Z"


def emit(component: str, code: str, message: str = "", *, level: str = "info",
         correlation_id: str = "", **fields: Any) -> None:
    record = {
        "ts": _timestamp(),
        "level": level,
        "component": component,
        "code": code,
        "msg": message,
    }
    if correlation_id:
        record["correlation_id"] = correlation_id
    for k, v in fields.items():
        if v is not None and v != "":
            record[k] = v
    try:
        sys.stderr.write(_ENCODER.encode(record) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        # stderr gone (a pipe to a dead parent, or closed): logging must never be the
        # reason a process fails to stop or to serve.
        pass
