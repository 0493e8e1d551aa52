"""common.timestamps: float epoch seconds to and from protobuf Timestamps."""

import pytest

from common.timestamps import to_seconds, to_timestamp, to_timestamp_or_none
from llama_orch.v1 import common_pb2


@pytest.mark.parametrize("seconds", [1_700_000_000.25, 1.5, 0.000_001],
                         ids=["now-ish", "small", "a-microsecond"])
def test_a_time_survives_the_round_trip_to_within_a_microsecond(seconds):
    assert to_seconds(to_timestamp(seconds)) == pytest.approx(seconds, abs=1e-6)


def test_zero_is_a_set_epoch_for_to_timestamp_and_unset_for_the_or_none_form():
    # Which one a caller uses decides whether the message field is present on the wire.
    info = common_pb2.PoolInfo(last_heartbeat=to_timestamp(0))
    assert info.HasField("last_heartbeat") and to_seconds(info.last_heartbeat) == 0.0
    assert to_timestamp_or_none(0) is None
    assert not common_pb2.PoolInfo(last_heartbeat=to_timestamp_or_none(0)).HasField("last_heartbeat")
    assert to_timestamp_or_none(2.5) == to_timestamp(2.5)


def test_an_unset_timestamp_is_zero_seconds():
    assert to_seconds(common_pb2.PoolInfo().last_heartbeat) == 0.0
