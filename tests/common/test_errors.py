import grpc
import pytest

from common.errors import GRPC_STATUS, OrchError, code_name
from llama_orch.v1 import errors_pb2


def test_every_enum_code_has_a_stable_name_and_round_trips():
    for value in errors_pb2.ErrorCode.values():
        if value == 0:
            continue
        name = code_name(value)
        assert name and not name.startswith("ERROR_CODE_")
        err = OrchError(name, "m", param="p")
        assert OrchError.from_detail(err.to_detail()).code == name


def test_mapped_codes_exist_in_the_enum():
    for name in GRPC_STATUS:
        OrchError(name, "x")  # raises if the proto lost the code


def test_unknown_code_is_a_programming_error():
    with pytest.raises(ValueError):
        OrchError("NOT_A_CODE", "x")


class _FakeCall(grpc.RpcError):
    """The shape of a failed call, built from a real status (grpc_status needs only these)."""

    def __init__(self, status):
        self._status = status

    def code(self):
        return self._status.code

    def details(self):
        return self._status.details

    def trailing_metadata(self):
        return self._status.trailing_metadata


def test_status_round_trip_keeps_code_and_param():
    err = OrchError("CONTEXT_LENGTH_EXCEEDED", "too long", param="messages")
    back = OrchError.from_rpc_error(_FakeCall(err.to_status()))
    assert (back.code, back.message, back.param) == ("CONTEXT_LENGTH_EXCEEDED", "too long", "messages")
    assert err.grpc_status is grpc.StatusCode.INVALID_ARGUMENT
