"""Times on the wire: float epoch seconds (what the code keeps, from time.time()) to and
from google.protobuf.Timestamp (what the messages carry).

Nanosecond precision is what a float of epoch seconds holds, so a time survives the round
trip to within a microsecond, not exactly.
"""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp


def to_timestamp(seconds: float) -> Timestamp:
    """The time as a Timestamp; 0 becomes the epoch, a set (zero) Timestamp."""
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def to_timestamp_or_none(seconds: float) -> Timestamp | None:
    """As to_timestamp, but 0 (it has not happened) becomes None, which leaves the field
    unset when passed to a message's constructor."""
    return to_timestamp(seconds) if seconds else None


def to_seconds(stamp: Timestamp) -> float:
    """The Timestamp as float epoch seconds; 0.0 when it is unset."""
    return stamp.seconds + stamp.nanos / 1e9
