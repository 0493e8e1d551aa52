"""What the cluster is and holds, for the web UI (docs/UI.md) and any operator tool:

    GET /v2/info      {mode, version, policy_editable}            no RPC of its own
    GET /v2/cluster   one snapshot: pools (devices, workers, model residency),
                      queue depths, the model catalog, pins, active jobs
                                                                   GetClusterSnapshot

The mode is the orchestrator's, from its snapshot. Where the snapshot cannot be read
(the orchestrator is unreachable, or the caller may not read it) /v2/info answers
with the mode of the gateway's own config, which `llama-orch up` gives both; so any
caller may read /v2/info. `policy_editable` is false in platform mode, the one mode
where only the built-in policy runs (AdminService.GetPolicy's `editable` says the
same, but is an audited admin call, refused to client keys).

`fact_id` is the id of the last fact the snapshot includes: the UI applies only facts
after it, and resumes the fact stream (/v2/events?after=) from there. `time` is when
the orchestrator took the snapshot (when the gateway received it, from an orchestrator
that does not say).
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from fastapi import APIRouter, Request
from google.protobuf.timestamp_pb2 import Timestamp
from llama_orch.v1 import client_pb2, common_pb2

from common.errors import OrchError
from gateway import openapi
from gateway.middleware import caller_of
from gateway.orchestrator_client import OrchestratorClient
from gateway.v2.objects import (
    enum_name,
    iso,
    job_object,
    model_info_object,
    pin_object,
    pool_object,
)

router = APIRouter()


def version() -> str:
    try:
        return metadata.version("llama-orch")
    except metadata.PackageNotFoundError:  # run from a source tree without installing
        return "0+unknown"


def _client(request: Request) -> OrchestratorClient:
    return request.app.state.orchestrator


async def cluster_mode(request: Request) -> str:
    """The orchestrator's mode, or the gateway config's where it cannot be read."""
    try:
        return (await _client(request).cluster_snapshot(caller_of(request))).mode \
            or request.app.state.mode
    except OrchError:
        return request.app.state.mode


@router.get("/v2/info", **openapi.operation(ok=openapi.Info))
async def info(request: Request) -> dict[str, Any]:
    mode = await cluster_mode(request)
    return {"mode": mode, "version": version(), "policy_editable": mode != "platform"}


def snapshot_object(snap: client_pb2.GetClusterSnapshotResponse,
                    root_path: str = "") -> dict[str, Any]:
    """GET /v2/cluster's JSON; pools, models and jobs as the rest of /v2 shows them."""
    when = snap.time
    if not iso(when):
        when = Timestamp()
        when.GetCurrentTime()
    return {
        "fact_id": snap.fact_id,
        "time": iso(when),
        "mode": snap.mode,
        "pools": [pool_object(p) for p in snap.pools],
        "queue": [{"priority": enum_name(common_pb2.Priority, q.priority, "PRIORITY_"),
                   "depth": q.depth} for q in snap.queue],
        "models": [model_info_object(m) for m in snap.models],
        "pins": [pin_object(p) for p in snap.pins],
        "active_jobs": [job_object(j, root_path) for j in snap.active_jobs],
    }


@router.get("/v2/cluster", **openapi.operation(ok=openapi.Cluster, errors=openapi.ADMIN))
async def cluster(request: Request) -> dict[str, Any]:
    snap = await _client(request).cluster_snapshot(caller_of(request))
    return snapshot_object(snap, request.scope.get("root_path", ""))
