"""Worker callbacks: a ready worker is announced to the orchestrator, unless it is being
stopped (then jobs must not be sent to it)."""

from types import SimpleNamespace

import pytest

from llama_orch.v1 import common_pb2 as C, worker_callback_pb2
from pool_manager.callbacks import CallbackServicer


@pytest.mark.parametrize("stopping, announced", [(False, True), (True, False)],
                         ids=["running", "being-stopped"])
async def test_a_ready_worker_is_recorded_and_announced_unless_it_is_being_stopped(stopping, announced):
    wp = SimpleNamespace(worker_id="w1", device_ids=("sim-0",), stopping=stopping, ready=False,
                         endpoint="", info=None)
    upward = []
    cb = CallbackServicer(SimpleNamespace(workers={"w1": wp}), upward.append)
    await cb.ReportReady(worker_callback_pb2.ReportReadyRequest(
        worker_id="w1", model_ref="file:/m", endpoint="127.0.0.1:5"), None)
    assert wp.ready and wp.endpoint == "127.0.0.1:5"
    assert wp.info.state == C.WORKER_STATE_READY
    assert [m.WhichOneof("message") for m in upward] == (["worker_ready"] if announced else [])
