"""What /v2 accepts: the task body, resume positions and fact-kind filters.

The task body shares its model and sampling fields with the OpenAI endpoints
(`SamplingFields`), so the same input gets the same 400 body with the same `param`.
What is /v2's own:

    prompt | messages     exactly one; a prompt is one string, messages as in chat
    logprobs, top_logprobs  as chat completions (bool; 0..20, needs logprobs)
    deadline_ms           0..2^32-1; 0 or absent = the orchestrator's default, which
                          also enforces the maximum (400, param deadline_ms)
    keep_output           keep the final text in the job record (GET shows it)
    priority, detach      as on /v1 (a detached job outlives a Generate caller; a
                          submitted task is never tied to a connection anyway)

An explicit null is a field's default, as on /v1.

Resume positions (SSE `Last-Event-ID` header, or `?after=`) are decimal uint64s.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from llama_orch.v1 import events_pb2
from pydantic import Field, ValidationInfo, field_validator

from common.errors import InvalidInput
from gateway.openai.protocol import (
    MAX_UINT32,
    ChatLogprobs,
    ChatMessage,
    Flag,
    SamplingFields,
    Text,
    TopLogprobs,
)

MAX_UINT64 = 2**64 - 1


class TaskRequest(ChatLogprobs, SamplingFields):
    """POST /v2/tasks."""

    prompt: Text | None = None
    # validate_default: the "exactly one of prompt or messages" check must run even
    # when messages is absent.
    messages: list[ChatMessage] | None = Field(None, min_length=1, validate_default=True)
    logprobs: Flag = False
    top_logprobs: TopLogprobs = None
    deadline_ms: int | None = Field(None, ge=0, le=MAX_UINT32)
    keep_output: Flag = False

    @field_validator("messages")
    @classmethod
    def _one_input(cls, value: list[ChatMessage] | None, info: ValidationInfo) -> Any:
        if "prompt" not in info.data:
            return value  # the prompt itself was invalid; that error is reported
        has_prompt = info.data["prompt"] is not None
        if value is None and not has_prompt:
            raise ValueError("one of prompt or messages is required")
        if value is not None and has_prompt:
            raise ValueError("give prompt or messages, not both")
        return value


# ---- resume positions ---------------------------------------------------------------
#
# Valid: 1 to 20 ASCII digits (leading zeros allowed) with a value <= 2^64-1, after
# stripping spaces and tabs around it (RFC 9110 §5.5: they are not part of a header
# value). Empty, or only whitespace, is the same as absent: the SSE spec has a client
# send no Last-Event-ID at all while its last event id is empty. Anything else is a
# 400 naming the header or parameter: "abc", "-1", "+3", "1.5", "1e3", "0x10",
# "3 4", a 30-digit number, 2^64.
_POSITION = re.compile(r"[0-9]{1,20}")


def parse_position(value: str, param: str) -> int | None:
    """A resume position, or None when `value` is empty; InvalidInput otherwise."""
    value = value.strip(" \t")
    if not value:
        return None
    if not _POSITION.fullmatch(value) or int(value) > MAX_UINT64:
        raise InvalidInput("INVALID_ARGUMENT",
                           f"{param} must be a non-negative integer below 2^64, "
                           f"not {value[:40]!r}", param=param)
    return int(value)


def resume_position(last_event_id: str | None, after: str | None) -> tuple[int, str]:
    """(position, where it came from) for an SSE request; (0, "") means from the start.

    The Last-Event-ID header wins over `?after=`: a browser's EventSource reconnects
    to the URL it opened (with its original `after`) and adds the header, which is
    the newer position."""
    for value, param in ((last_event_id, "Last-Event-ID"), (after, "after")):
        if value is not None and (position := parse_position(value, param)) is not None:
            return position, param
    return 0, ""


# ---- fact kinds ---------------------------------------------------------------------


def _code(name: str) -> str:
    # The orchestrator's rule (orchestrator/facts.py code_of): WORKER_FAILED -> "worker.failed".
    head, _, tail = name.lower().partition("_")
    return f"{head}.{tail}" if tail else head


def _kind_names() -> dict[str, int]:
    names: dict[str, int] = {}
    for full, value in events_pb2.FactKind.items():
        if value == events_pb2.FACT_KIND_UNSPECIFIED:
            continue
        short = full.removeprefix("FACT_KIND_")
        for alias in (full, short, _code(short)):
            names[alias.lower()] = value
    return names


# "worker.failed", "WORKER_FAILED", "worker_failed", "FACT_KIND_WORKER_FAILED": all one kind.
KIND_NAMES = _kind_names()


def fact_kinds(values: Iterable[str]) -> list[int]:
    """`?kind=` values (repeated and/or comma-separated) as FactKind numbers; empty
    items are ignored and no kinds means every kind."""
    kinds: list[int] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            kind = KIND_NAMES.get(item.lower())
            if kind is None:
                raise InvalidInput("INVALID_ARGUMENT",
                                   f"kind: unknown fact kind {item[:60]!r} (use a code such as "
                                   "'worker.failed' or a FactKind name)", param="kind")
            if kind not in kinds:
                kinds.append(kind)
    return kinds
