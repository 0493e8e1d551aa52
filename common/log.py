"""Structured JSON log lines: one object per line on stderr.

The orchestrator's facts are logged through here, so the log line and the fact stream
are the same record. Other components log their own facts the same way.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def emit(component: str, code: str, message: str = "", *, level: str = "info",
         correlation_id: str = "", **fields: Any) -> None:
    record = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z",
        "level": level,
        "component": component,
        "code": code,
        "msg": message,
    }
    if correlation_id:
        record["correlation_id"] = correlation_id
    record.update({k: v for k, v in fields.items() if v not in (None, "")})
    try:
        sys.stderr.write(json.dumps(record, default=str, separators=(",", ":")) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        # stderr gone (a pipe to a dead parent, or closed): logging must never be the
        # reason a process fails to stop or to serve.
        pass
