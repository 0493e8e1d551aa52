"""Structured log lines (common/log.py): one JSON object per line on stderr."""

from __future__ import annotations

import io
import json
import sys

import pytest

from common import log


def lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines()]


def test_one_object_per_line_with_the_fixed_fields_first(capsys):
    log.emit("orchestrator", "job.admitted", "admitted for tiny", correlation_id="c-1",
             job_id="j-1", tokens=0, cached=False, skipped=None, empty="")
    log.emit("gateway", "gateway.ready")
    first, second = lines(capsys)
    assert list(first)[:5] == ["ts", "level", "component", "code", "msg"]
    assert first["correlation_id"] == "c-1" and first["job_id"] == "j-1"
    assert first["tokens"] == 0 and first["cached"] is False  # falsy values are kept
    assert "skipped" not in first and "empty" not in first  # None and "" are left out
    assert second == {"ts": second["ts"], "level": "info", "component": "gateway",
                      "code": "gateway.ready", "msg": ""}


def test_the_timestamp_is_utc_with_milliseconds_across_second_boundaries(capsys, monkeypatch):
    for ns in (1_795_987_205_999_000_000, 1_795_987_206_000_000_000, 1_795_987_206_007_500_000,
               1_795_987_205_500_000_000):  # the clock may also step back
        monkeypatch.setattr(log.time, "time_ns", lambda ns=ns: ns)
        log.emit("x", "x.tick")
    assert [r["ts"] for r in lines(capsys)] == [
        "2026-11-29T21:20:05.999Z", "2026-11-29T21:20:06.000Z", "2026-11-29T21:20:06.007Z",
        "2026-11-29T21:20:05.500Z"]


def test_values_json_cannot_hold_are_written_as_text_and_nothing_escapes_the_line(capsys):
    log.emit("x", "x.odd", "line one\nline two \u00e9 \U0001f98a", level="warning",
             path=b"\xff", obj=object(), nested={"a": [1, 2]})
    raw = capsys.readouterr().err
    assert raw.count("\n") == 1 and raw.isascii()
    (r,) = [json.loads(raw)]
    assert r["msg"] == "line one\nline two \u00e9 \U0001f98a" and r["level"] == "warning"
    assert r["path"] == "b'\\xff'" and r["obj"].startswith("<object object")
    assert r["nested"] == {"a": [1, 2]}


@pytest.mark.parametrize("broken", ["closed", "broken pipe"])
def test_a_stderr_that_is_gone_does_not_raise(monkeypatch, broken):
    class Gone(io.StringIO):
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")
    stream = io.StringIO() if broken == "closed" else Gone()
    if broken == "closed":
        stream.close()
    monkeypatch.setattr(sys, "stderr", stream)  # in the test: capture resets it between phases
    log.emit("x", "x.lost", "nobody reads this")  # no exception
