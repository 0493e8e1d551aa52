"""GET /v1/models and /v1/models/{model}, over httpx and the openai client."""

from __future__ import annotations

import asyncio

import openai
import pytest

from tests.gateway.scripted_orchestrator import CREATED


async def test_list_models_is_openai_shaped(client):
    r = await client.get("/v1/models")
    assert r.status_code == 200
    assert r.json() == {"object": "list", "data": [
        {"id": "tiny", "object": "model", "created": CREATED, "owned_by": "llama-orch"},
        {"id": "org/big-model", "object": "model", "created": CREATED, "owned_by": "llama-orch"},
    ]}


@pytest.mark.parametrize("model", ["tiny", "org/big-model"], ids=["alias", "with-slash"])
async def test_retrieve_model(client, model):
    r = await client.get(f"/v1/models/{model}")
    assert r.status_code == 200
    assert r.json()["id"] == model
    assert r.json()["object"] == "model"


async def test_retrieve_unknown_model_is_404_model_not_found(client):
    r = await client.get("/v1/models/nope")
    assert r.status_code == 404
    assert r.json() == {"error": {"message": "model 'nope' is not known",
                                  "type": "invalid_request_error", "param": "model",
                                  "code": "model_not_found"}}


async def test_openai_client_lists_and_retrieves(openai_client):
    models = await asyncio.to_thread(openai_client.models.list)
    assert [m.id for m in models.data] == ["tiny", "org/big-model"]
    one = await asyncio.to_thread(openai_client.models.retrieve, "tiny")
    assert (one.id, one.created, one.owned_by) == ("tiny", CREATED, "llama-orch")
    with pytest.raises(openai.NotFoundError) as info:
        await asyncio.to_thread(openai_client.models.retrieve, "nope")
    assert info.value.code == "model_not_found"
