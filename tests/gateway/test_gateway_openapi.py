"""The OpenAPI document says what the gateway really takes and answers.

Two kinds of test: assertions on the document itself (every route documents its
request body, its success and its errors), and schemathesis, which generates
requests from the document (valid ones, boundary values and invalid ones) and checks
each response: never a 5xx, a documented status and content type, a body matching
the documented schema, and invalid input refused with a 4xx.

schemathesis runs against the gateway over real HTTP (uvicorn with the gateway's
protocol) in front of the ScriptedOrchestrator, in a background thread: the point is
the gateway's schemas and validation, which a real orchestrator would only slow down.
Deterministic: a fixed seed, `deterministic` generation, bounded examples.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import schemathesis
from llama_orch.v1 import admin_pb2_grpc, client_pb2_grpc
from schemathesis.config import SchemathesisConfig

from common.grpc_server import Server
from gateway.app import create_app
from gateway.openapi import BODY, UPSTREAM
from tests.gateway.conftest import served
from tests.gateway.scripted_orchestrator import ScriptedOrchestrator, job_record, model

MAX_N = 3  # a non-default limit, to see it in the document and in the answers

CONFIG = SchemathesisConfig.from_dict({
    "seed": 20240601,
    # deterministic: Hypothesis's derandomize (no example database either).
    "generation": {"mode": "all", "max-examples": 25, "deterministic": True},
    "phases": {"examples": {"enabled": False}, "stateful": {"enabled": False},
               "coverage": {"enabled": True}, "fuzzing": {"enabled": True}},
    "checks": {
        "not_a_server_error": {"enabled": True},
        "status_code_conformance": {"enabled": True},
        "content_type_conformance": {"enabled": True},
        "response_schema_conformance": {"enabled": True},
        "negative_data_rejection": {"enabled": True},
        # Valid by the schema is not enough to be served: an unknown model is a 404,
        # a penalty on a model whose engine has none a 400, and so on.
        "positive_data_acceptance": {"enabled": False},
        # Nothing here is created by one call and used by another.
        "use_after_free": {"enabled": False},
        "ensure_resource_availability": {"enabled": False},
        "ignored_auth": {"enabled": False},
    },
    "request-timeout": 20,
})


def _document() -> dict:
    return create_app("127.0.0.1:1", max_n=MAX_N).openapi()


schema = schemathesis.openapi.from_dict(_document(), config=CONFIG)


class EverythingExists(ScriptedOrchestrator):
    """Every model and every job the generated requests name exists, and so does every
    model, pool and worker an admin route names, so that success responses (and their
    schemas) are exercised, not only 404s; the 404s have their own tests."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.admin.lenient = True

    async def GetModel(self, request, context):
        if request.model not in {m.id for m in self.models}:
            self.models.append(model(request.model))
        return await super().GetModel(request, context)

    async def _job(self, job_id, context):
        return self.jobs.setdefault(job_id, job_record(job_id))


class BackgroundGateway:
    """The ScriptedOrchestrator and the gateway in front of it, served from their own
    event loop in a thread, so that synchronous clients (schemathesis) can call it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self.loop.run_until_complete,
                                        args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        servicer = EverythingExists()
        grpc_server = Server(["llama_orch.v1.ClientService", "llama_orch.v1.AdminService"])
        client_pb2_grpc.add_ClientServiceServicer_to_server(servicer, grpc_server.grpc)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(servicer.admin, grpc_server.grpc)
        port = grpc_server.bind("127.0.0.1:0")
        await grpc_server.start()
        try:
            app = create_app(f"127.0.0.1:{port}", max_n=MAX_N)
            async with served(app) as url:
                self.url = url
                self._ready.set()
                await self._stop.wait()
        finally:
            await grpc_server.stop(0)

    def __enter__(self) -> BackgroundGateway:
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("the gateway did not start")
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture(scope="module")
def gateway_url() -> Iterator[str]:
    with BackgroundGateway() as gateway:
        yield gateway.url


@schema.parametrize()
def test_no_5xx_and_no_schema_violation(case, gateway_url):
    case.call_and_validate(base_url=gateway_url)


# ---- the document itself -------------------------------------------------------------


def test_request_bodies_are_the_validating_models():
    doc = _document()
    bodies = {path: ops["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
              for path, ops in doc["paths"].items() if "post" in ops}
    assert bodies == {"/v1/chat/completions": "#/components/schemas/ChatCompletionRequest",
                      "/v1/completions": "#/components/schemas/CompletionRequest",
                      "/v2/tasks": "#/components/schemas/TaskRequest",
                      "/v2/admin/pins": "#/components/schemas/PinRequest",
                      "/v2/admin/models/{model}:preload": "#/components/schemas/PreloadRequest",
                      "/v2/admin/models/{model}:evict": "#/components/schemas/EvictRequest",
                      "/v2/admin/workers": "#/components/schemas/StartWorkerRequest",
                      "/v2/admin/pools/{pool_id}:drain": "#/components/schemas/DrainRequest",
                      "/v2/admin/policy:validate": "#/components/schemas/PolicySource",
                      "/v2/admin/policy:dry-run": "#/components/schemas/PolicySource",
                      "/v2/admin/policy:activate": "#/components/schemas/ActivateRequest"}
    schemas = doc["components"]["schemas"]
    assert schemas["ChatCompletionRequest"]["required"] == ["model", "messages"]
    assert schemas["ChatMessage"]["properties"]["role"]["enum"] == [
        "system", "user", "assistant", "developer"]
    # Unknown fields are accepted (and ignored): nothing forbids additional properties.
    assert all(s.get("additionalProperties", True) is not False for s in schemas.values())


@pytest.mark.parametrize("name", ["ChatCompletionRequest", "CompletionRequest", "TaskRequest"])
def test_n_is_bounded_by_the_configured_limit(name):
    n = _document()["components"]["schemas"][name]["properties"]["n"]
    assert {"type": "integer", "minimum": 1, "maximum": MAX_N} in n["anyOf"]


def test_every_operation_documents_its_errors_as_openai_bodies():
    doc = _document()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            responses = op["responses"]
            assert "422" not in responses, (method, path)
            expected = (*BODY, *UPSTREAM) if method == "post" else UPSTREAM
            assert {str(s) for s in expected} <= set(responses), (method, path)
            for status, response in responses.items():
                if status.startswith(("4", "5")):
                    assert response["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/ErrorResponse"}, (method, path, status)
            assert "X-Correlation-Id" in [p["name"] for p in op["parameters"]]


def test_success_responses_name_their_objects():
    paths = _document()["paths"]

    def ok(path: str, method: str, status: str = "200") -> dict:
        return paths[path][method]["responses"][status]["content"]

    assert ok("/v1/models", "get")["application/json"]["schema"]["$ref"].endswith("/ModelList")
    chat = ok("/v1/chat/completions", "post")
    assert chat["application/json"]["schema"]["$ref"].endswith("/ChatCompletion")
    assert "text/event-stream" in chat
    assert ok("/v2/tasks", "post", "202")["application/json"]["schema"]["$ref"].endswith("/Task")
    assert ok("/v2/cluster", "get")["application/json"]["schema"]["$ref"].endswith("/Cluster")
    assert ok("/v2/admin/workers", "post", "201")["application/json"]["schema"]["$ref"] \
        .endswith("/WorkerReply")


def test_admin_routes_document_501_and_their_refusals():
    paths = _document()["paths"]
    assert "501" in paths["/v2/admin/pools/{pool_id}:drain"]["post"]["responses"]
    assert "409" in paths["/v2/admin/models/{model}:evict"]["post"]["responses"]
    assert not paths["/v2/admin/models/{model}:preload"]["post"]["requestBody"]["required"]
    assert paths["/v2/admin/pins"]["post"]["requestBody"]["required"]


async def test_the_app_serves_its_document(client):
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    assert "/v1/chat/completions" in r.json()["paths"]
