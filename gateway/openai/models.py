"""GET /v1/models and /v1/models/{model}: the orchestrator's catalogue, OpenAI-shaped."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from llama_orch.v1 import common_pb2

from gateway import openapi
from gateway.middleware import caller_of
from gateway.orchestrator_client import OrchestratorClient

router = APIRouter()

_OWNER = "llama-orch"


def model_object(info: common_pb2.ModelInfo) -> dict[str, Any]:
    return {"id": info.id, "object": "model", "created": info.created.seconds,
            "owned_by": info.owned_by or _OWNER}


@router.get("/v1/models", **openapi.operation(ok=openapi.ModelList))
async def list_models(request: Request) -> dict[str, Any]:
    client: OrchestratorClient = request.app.state.orchestrator
    models = await client.list_models(caller_of(request))
    return {"object": "list", "data": [model_object(m) for m in models]}


# `path`: model ids such as "org/name" or "hf:org/repo@rev::file=x" contain slashes.
@router.get("/v1/models/{model:path}", **openapi.operation(
    ok=openapi.Model, errors=(404, *openapi.UPSTREAM)))
async def retrieve_model(model: str, request: Request) -> dict[str, Any]:
    client: OrchestratorClient = request.app.state.orchestrator
    return model_object(await client.get_model(model, caller_of(request)))
