"""Protobuf values as plain Python: timestamps as epoch seconds, Struct as a dict, any
message as a dict of all its fields (enums by their full names), and enum values as the
short lower-case names the records use ("batch" for PRIORITY_BATCH)."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message


def seconds(ts: Message) -> float | None:
    """A Timestamp as seconds since the epoch; None when unset (all zero)."""
    if not (ts.seconds or ts.nanos):
        return None
    return ts.seconds + ts.nanos / 1e9


def enum_name(field_or_enum: Any, number: int, prefix: str) -> str:
    """PRIORITY_BATCH -> "batch"; "" for the UNSPECIFIED value or an unknown number."""
    value = field_or_enum.values_by_number.get(number)
    if value is None or value.name.endswith("_UNSPECIFIED"):
        return ""
    return value.name.removeprefix(prefix).lower()


def plain(msg: Message) -> dict[str, Any]:
    """Every field of a message, recursively, as plain Python values."""
    return {f.name: _field(msg, f) for f in msg.DESCRIPTOR.fields}


def _field(msg: Message, f: FieldDescriptor) -> Any:
    value = getattr(msg, f.name)
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        inner = f.message_type.fields_by_name["value"]
        return {k: _value(inner, v) for k, v in value.items()}
    if f.is_repeated:
        return [_value(f, v) for v in value]
    if f.message_type is not None and not msg.HasField(f.name):
        return None
    return _value(f, value)


def _value(f: FieldDescriptor, value: Any) -> Any:
    if f.enum_type is not None:
        return f.enum_type.values_by_number[value].name if value in \
            f.enum_type.values_by_number else value
    if f.message_type is None:
        return value
    name = f.message_type.full_name
    if name == "google.protobuf.Timestamp":
        return seconds(value)
    if name in ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"):
        return json_format.MessageToDict(value)
    return plain(value)
