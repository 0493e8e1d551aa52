"""The operator's actions over HTTP: one route per AdminService RPC (docs/UI.md).

    POST   /v2/admin/pins                        PinModel        200 {"pin"}
    DELETE /v2/admin/pins/{model}?pool_id=       UnpinModel      200 {}
    POST   /v2/admin/models/{model}:preload      PreloadModel    200 {}
    POST   /v2/admin/models/{model}:evict        EvictModel      200 {}
    POST   /v2/admin/workers                     StartWorker     201 {"worker"}
    DELETE /v2/admin/workers/{worker_id}?force=  StopWorker      200 {}
    POST   /v2/admin/pools/{pool_id}:drain       DrainPool       200 {"pool"}
    GET    /v2/admin/policy                      GetPolicy       200 {"active", "editable", "mode"}
    GET    /v2/admin/policy/versions             ListPolicyVersions  200 {"versions"}
    POST   /v2/admin/policy:validate             ValidatePolicy  200 {"ok", "problems"}
    POST   /v2/admin/policy:dry-run              DryRunPolicy    200 {"policy_decisions", ...}
    POST   /v2/admin/policy:activate             ActivatePolicy  200 {"active"}

The gateway decides nothing here: the caller's Authorization goes to the orchestrator,
which wants an admin key outside home mode (401/403), and its refusals come back by
their stable codes (gateway.errors: 404 model_not_found / not_found /
device_not_found, 409 model_pinned, 503 pool_unavailable, ...). An RPC it does not
implement yet is 501 `unimplemented`. Each change shows up as facts on /v2/events,
with the request's X-Correlation-Id where the orchestrator records it.

`{model}` is an id, alias or canonical ref, percent-encoded; refs hold `/` and `:`
("hf:org/repo@main::file=x"), hence the `path` converter: the route's literal suffix
(":preload") is matched at the end of the path.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from llama_orch.v1 import admin_pb2

from common.errors import InvalidInput
from gateway import openapi
from gateway.body import read_model
from gateway.middleware import caller_of
from gateway.orchestrator_client import ADMIN_TIMEOUT_S, UNARY_TIMEOUT_S, OrchestratorClient
from gateway.v2.admin_protocol import (
    ActivateRequest,
    DrainRequest,
    EvictRequest,
    PinRequest,
    PolicySource,
    PreloadRequest,
    StartWorkerRequest,
)
from gateway.v2.cluster import cluster_mode
from gateway.v2.objects import (
    decision_object,
    pin_object,
    policy_version_object,
    pool_object,
    problem_object,
    worker_object,
)

router = APIRouter()

# What a route with a body can meet, beyond its own refusals.
_BODY = (*openapi.BODY, *openapi.ADMIN)
_POOL_ID = openapi.query("pool_id", "the pool; absent or empty: every pool")
_FORCE = openapi.query("force", "true: kill the worker at once instead of letting its "
                       "jobs finish (absent: false)", enum=["true", "false"])


async def _call(request: Request, rpc: str, message: Any, *,
                timeout: float = UNARY_TIMEOUT_S) -> Any:
    client: OrchestratorClient = request.app.state.orchestrator
    return await client.admin(rpc, message, caller_of(request), timeout=timeout)


def _named(value: str, param: str) -> str:
    # `{model:path}` also matches nothing at all ("/v2/admin/models/:preload").
    if not value:
        raise InvalidInput("INVALID_ARGUMENT", f"{param}: is required", param=param)
    return value


def _flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name)
    if value not in (None, "true", "false"):
        raise InvalidInput("INVALID_ARGUMENT", f"{name} must be true or false", param=name)
    return value == "true"


# ---- pins, model files -------------------------------------------------------------------


@router.post("/v2/admin/pins", **openapi.operation(
    body=PinRequest, ok=openapi.PinReply, errors=(*_BODY, 404)))
async def pin_model(request: Request) -> dict[str, Any]:
    """Pin the model to devices of a pool (none named: all of them); its workers there
    are never evicted. Replaces the model's earlier pin on that pool."""
    req = await read_model(request, PinRequest)
    reply = await _call(request, "PinModel", admin_pb2.PinModelRequest(
        model=req.model, pool_id=req.pool_id, device_ids=req.device_ids or []))
    return {"pin": pin_object(reply.pin)}


@router.delete("/v2/admin/pins/{model:path}", **openapi.operation(
    ok=openapi.Done, errors=(400, 404, *openapi.ADMIN), parameters=[_POOL_ID]))
async def unpin_model(model: str, request: Request) -> dict[str, Any]:
    """Idempotent: a model without a pin is unpinned already."""
    await _call(request, "UnpinModel", admin_pb2.UnpinModelRequest(
        model=_named(model, "model"), pool_id=request.query_params.get("pool_id", "")))
    return {}


@router.post("/v2/admin/models/{model:path}:preload", **openapi.operation(
    body=PreloadRequest, body_optional=True, ok=openapi.Done, errors=(*_BODY, 404)))
async def preload_model(model: str, request: Request) -> dict[str, Any]:
    """Answers once the pools hold the files in RAM (downloading them first if need be)."""
    req = await read_model(request, PreloadRequest, optional=True)
    await _call(request, "PreloadModel", admin_pb2.PreloadModelRequest(
        model=_named(model, "model"), pool_id=req.pool_id or ""), timeout=ADMIN_TIMEOUT_S)
    return {}


@router.post("/v2/admin/models/{model:path}:evict", **openapi.operation(
    body=EvictRequest, body_optional=True, ok=openapi.Done, errors=(*_BODY, 404, 409)))
async def evict_model(model: str, request: Request) -> dict[str, Any]:
    """Drop the files from RAM (and from disk with from_disk); 409 where it is pinned."""
    req = await read_model(request, EvictRequest, optional=True)
    await _call(request, "EvictModel", admin_pb2.EvictModelRequest(
        model=_named(model, "model"), pool_id=req.pool_id or "",
        from_disk=bool(req.from_disk)), timeout=ADMIN_TIMEOUT_S)
    return {}


# ---- workers and pools ---------------------------------------------------------------------


@router.post("/v2/admin/workers", **openapi.operation(
    body=StartWorkerRequest, ok=openapi.WorkerReply, status=201, errors=(*_BODY, 404, 409)))
async def start_worker(request: Request) -> JSONResponse:
    """Answers once the pool has spawned it (state "starting"): `worker.ready` or
    `worker.failed` follows as a fact."""
    req = await read_model(request, StartWorkerRequest)
    reply = await _call(request, "StartWorker", admin_pb2.StartWorkerRequest(
        model=req.model, pool_id=req.pool_id or "", device_ids=req.device_ids or [],
        engine=req.engine or "", engine_options=req.engine_options or {}),
        timeout=ADMIN_TIMEOUT_S)
    return JSONResponse({"worker": worker_object(reply.worker)}, status_code=201)


@router.delete("/v2/admin/workers/{worker_id}", **openapi.operation(
    ok=openapi.Done, errors=(400, 404, *openapi.ADMIN), parameters=[_FORCE]))
async def stop_worker(worker_id: str, request: Request) -> dict[str, Any]:
    await _call(request, "StopWorker", admin_pb2.StopWorkerRequest(
        worker_id=worker_id, force=_flag(request, "force")), timeout=ADMIN_TIMEOUT_S)
    return {}


@router.post("/v2/admin/pools/{pool_id}:drain", **openapi.operation(
    body=DrainRequest, body_optional=True, ok=openapi.PoolReply, errors=(*_BODY, 404)))
async def drain_pool(pool_id: str, request: Request) -> dict[str, Any]:
    """`{"drain": false}` undrains."""
    req = await read_model(request, DrainRequest, optional=True)
    reply = await _call(request, "DrainPool", admin_pb2.DrainPoolRequest(
        pool_id=pool_id, drain=req.drain is not False), timeout=ADMIN_TIMEOUT_S)
    return {"pool": pool_object(reply.pool)}


# ---- the scheduling policy ----------------------------------------------------------------


@router.get("/v2/admin/policy", **openapi.operation(
    ok=openapi.PolicyState, errors=openapi.ADMIN))
async def get_policy(request: Request) -> dict[str, Any]:
    reply = await _call(request, "GetPolicy", admin_pb2.GetPolicyRequest())
    return {"active": policy_version_object(reply.active), "editable": reply.editable,
            "mode": await cluster_mode(request)}


@router.get("/v2/admin/policy/versions", **openapi.operation(
    ok=openapi.PolicyVersions, errors=openapi.ADMIN))
async def list_policy_versions(request: Request) -> dict[str, Any]:
    reply = await _call(request, "ListPolicyVersions", admin_pb2.ListPolicyVersionsRequest())
    return {"versions": [policy_version_object(v) for v in reply.versions]}


@router.post("/v2/admin/policy:validate", **openapi.operation(
    body=PolicySource, ok=openapi.PolicyCheck, errors=_BODY))
async def validate_policy(request: Request) -> dict[str, Any]:
    """An invalid policy is a 200 with `ok` false and its problems, not an error."""
    req = await read_model(request, PolicySource)
    reply = await _call(request, "ValidatePolicy",
                        admin_pb2.ValidatePolicyRequest(source=req.source))
    return {"ok": reply.ok, "problems": [problem_object(p) for p in reply.problems]}


@router.post("/v2/admin/policy:dry-run", **openapi.operation(
    body=PolicySource, ok=openapi.DryRun, errors=_BODY))
async def dry_run_policy(request: Request) -> dict[str, Any]:
    """The policy's decisions and the built-in's over the live snapshot; changes nothing."""
    req = await read_model(request, PolicySource)
    reply = await _call(request, "DryRunPolicy", admin_pb2.DryRunPolicyRequest(source=req.source))
    return {"policy_decisions": [decision_object(d) for d in reply.policy_decisions],
            "builtin_decisions": [decision_object(d) for d in reply.builtin_decisions],
            "problems": [problem_object(p) for p in reply.problems],
            "policy_ms": round(reply.policy_ms, 3), "builtin_ms": round(reply.builtin_ms, 3)}


@router.post("/v2/admin/policy:activate", **openapi.operation(
    body=ActivateRequest, ok=openapi.ActivePolicy, errors=(*_BODY, 404)))
async def activate_policy(request: Request) -> dict[str, Any]:
    """400 policy_invalid (param source), 403 policy_forbidden in platform mode, 404
    not_found (param version) for a version that never was."""
    req = await read_model(request, ActivateRequest)
    reply = await _call(request, "ActivatePolicy", admin_pb2.ActivatePolicyRequest(
        source=req.source or "", version=req.version or 0, builtin=bool(req.builtin)))
    return {"active": policy_version_object(reply.active)}
