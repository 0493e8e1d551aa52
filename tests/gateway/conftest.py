"""Fixtures: a ScriptedOrchestrator on a real gRPC port, the gateway app in-process
(httpx + ASGITransport), and the gateway behind a real uvicorn server for the
official openai client and for disconnects."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import openai
import pytest
import uvicorn
from llama_orch.v1 import client_pb2_grpc

from common.grpc_server import Server
from gateway.app import create_app
from gateway.main import bind
from tests.gateway.scripted_orchestrator import ScriptedOrchestrator


@pytest.fixture
async def orchestrator() -> AsyncIterator[ScriptedOrchestrator]:
    servicer = ScriptedOrchestrator()
    server = Server(["llama_orch.v1.ClientService"])
    client_pb2_grpc.add_ClientServiceServicer_to_server(servicer, server.grpc)
    port = server.bind("127.0.0.1:0")
    await server.start()
    servicer.address = f"127.0.0.1:{port}"
    yield servicer
    await server.stop(0)


@pytest.fixture
async def app(orchestrator):
    app = create_app(orchestrator.address)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(app) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        yield c


@pytest.fixture
async def http_url(orchestrator) -> AsyncIterator[str]:
    """The gateway served by uvicorn on an ephemeral port, in this event loop."""
    sock = bind("127.0.0.1:0")
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(orchestrator.address), log_config=None,
                                          access_log=False, lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


@pytest.fixture
def openai_client(http_url) -> openai.OpenAI:
    # Sync client: call it through asyncio.to_thread so this loop keeps serving.
    return openai.OpenAI(base_url=f"{http_url}/v1", api_key="sk-test", max_retries=0, timeout=30)


def sse_events(body: str) -> list:
    """The `data:` payloads of an SSE body, JSON-decoded except the final "[DONE]"."""
    out = []
    for block in body.split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: "), block
        payload = block.removeprefix("data: ")
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out
