"""The contracts: buf lint is clean, gen/ is fresh, and every surface of §2 exists."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llama_orch.v1 import (admin_pb2, client_pb2, errors_pb2, events_pb2, pool_link_pb2,
                           worker_callback_pb2, worker_pb2)

ROOT = Path(__file__).resolve().parents[1]


def test_buf_lint_is_clean():
    buf = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")
    if buf is None:
        pytest.fail("buf is not installed (pip install buf-bin)")
    out = subprocess.run([buf, "lint"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_gen_is_fresh():
    out = subprocess.run([sys.executable, "tools/gen_protos.py", "--check"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("module,service,methods", [
    (client_pb2, "ClientService", {"Submit", "Generate", "StreamJob", "CancelJob", "GetJob",
                                   "ListJobs", "ListModels", "GetClusterSnapshot", "WatchFacts"}),
    (admin_pb2, "AdminService", {"PinModel", "UnpinModel", "StartWorker", "StopWorker", "DrainPool",
                                 "PreloadModel", "EvictModel", "DryRunPolicy", "ActivatePolicy",
                                 "CreateTenant", "SetQuota", "CreateApiKey", "CreateJoinToken"}),
    (pool_link_pb2, "PoolLinkService", {"Connect", "Join"}),
    (worker_pb2, "WorkerService", {"Execute", "Cancel"}),
    (worker_callback_pb2, "WorkerCallbackService", {"ReportReady", "ReportFailure"}),
])
def test_every_surface_exists(module, service, methods):
    desc = module.DESCRIPTOR.services_by_name[service]
    assert methods <= {m.name for m in desc.methods}


def test_pool_link_is_one_bidirectional_stream():
    m = pool_link_pb2.DESCRIPTOR.services_by_name["PoolLinkService"].methods_by_name["Connect"]
    assert m.client_streaming and m.server_streaming


def test_vocabularies_cover_the_design():
    codes = set(errors_pb2.ErrorCode.keys())
    for name in ("MODEL_NOT_FOUND", "CONTEXT_LENGTH_EXCEEDED", "CANCELLED", "DEADLINE_EXCEEDED",
                 "WORKER_CRASHED", "QUOTA_EXHAUSTED", "WORKER_BUSY"):
        assert "ERROR_CODE_" + name in codes
    kinds = set(events_pb2.FactKind.keys())
    for name in ("JOB_ADMITTED", "JOB_DISPATCHED", "JOB_STARTED", "JOB_FINISHED", "WORKER_STARTING",
                 "WORKER_READY", "WORKER_FAILED", "WORKER_STOPPED", "MODEL_DOWNLOADING",
                 "MODEL_CACHED", "MODEL_PRELOADED", "MODEL_EVICTED", "POOL_JOINED", "POOL_LOST",
                 "DECISION_TAKEN", "POLICY_CHANGED"):
        assert "FACT_KIND_" + name in kinds
