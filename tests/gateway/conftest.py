"""Fixtures: a ScriptedOrchestrator on a real gRPC port, the gateway app in-process
(httpx + ASGITransport), and the gateway behind a real uvicorn server for the
official openai client and for disconnects."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import openai
import pytest
import uvicorn
from llama_orch.v1 import admin_pb2_grpc, client_pb2_grpc

from common.grpc_server import Server
from gateway import server as gateway_server
from gateway.app import create_app
from gateway.main import bind
from tests.gateway.scripted_orchestrator import ScriptedOrchestrator


@pytest.fixture
async def orchestrator() -> AsyncIterator[ScriptedOrchestrator]:
    servicer = ScriptedOrchestrator()
    server = Server(["llama_orch.v1.ClientService", "llama_orch.v1.AdminService"])
    client_pb2_grpc.add_ClientServiceServicer_to_server(servicer, server.grpc)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(servicer.admin, server.grpc)
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


@contextlib.asynccontextmanager
async def served(app, **timeouts: float) -> AsyncIterator[str]:
    """`app` served on an ephemeral port, in this event loop, as `python -m gateway`
    serves it (gateway.server; `timeouts` override its read deadlines); yields its URL."""
    sock = bind("127.0.0.1:0")
    port = sock.getsockname()[1]
    server = uvicorn.Server(gateway_server.config(app, **timeouts))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def in_process(app) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client calling `app` in-process, its lifespan running."""
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=transport, base_url="http://gateway") as c:
        yield c


@pytest.fixture
async def http_url(orchestrator) -> AsyncIterator[str]:
    """The gateway served by uvicorn on an ephemeral port, in this event loop."""
    async with served(create_app(orchestrator.address)) as url:
        yield url


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


def sse_blocks(body: str) -> list[dict]:
    """A native (/v2) SSE body as its blocks, in order: {"id", "event", "data"} with
    `data` JSON-decoded and `id` None when the block has none, or {"comment": text}.
    Each block must be exactly the lines the gateway promises."""
    out = []
    assert body.endswith("\n\n") or not body, body[-80:]
    for block in body.split("\n\n")[:-1]:
        lines = block.split("\n")
        if lines[0].startswith(":"):
            assert len(lines) == 1, block
            out.append({"comment": lines[0][1:].strip()})
            continue
        event_id = None
        if lines[0].startswith("id: "):
            event_id, lines = lines[0].removeprefix("id: "), lines[1:]
        assert len(lines) == 2 and lines[0].startswith("event: ") \
            and lines[1].startswith("data: "), block
        out.append({"id": event_id, "event": lines[0].removeprefix("event: "),
                    "data": json.loads(lines[1].removeprefix("data: "))})
    return out
