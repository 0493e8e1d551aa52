"""The gateway application: an OpenAI drop-in over the orchestrator's ClientService.

Thin by design (ARCHITECTURE §7): no state of its own and no policy. Each route turns
REST/SSE into the same RPCs any SDK makes, through one grpc.aio channel per app.

    GET  /v1/models                 ListModels
    GET  /v1/models/{model}         GetModel
    POST /v1/chat/completions       Generate (chat)       stream or whole
    POST /v1/completions            Generate (prompt)     stream or whole
    GET  /metrics                   the gateway's own Prometheus metrics
    GET  /healthz                   liveness, plus the channel's connectivity state
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response

from common.grpc_server import channel
from gateway import errors
from gateway.metrics import GatewayMetrics
from gateway.middleware import EdgeMiddleware
from gateway.openai import chat, completions, models
from gateway.orchestrator_client import OrchestratorClient

MiB = 1024 * 1024


def create_app(orchestrator_address: str, *, max_body_bytes: int = 4 * MiB) -> FastAPI:
    """Build the app; the channel opens at startup and closes at shutdown (lifespan)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # grpc.aio channels belong to the running event loop, hence created here.
        ch = channel(orchestrator_address)
        app.state.orchestrator = OrchestratorClient(ch)
        try:
            yield
        finally:
            await ch.close()

    app = FastAPI(title="llama-orch gateway", lifespan=lifespan)
    app.state.max_body_bytes = max_body_bytes
    app.state.metrics = GatewayMetrics()
    errors.install(app)
    app.add_middleware(EdgeMiddleware, metrics=app.state.metrics)
    for router in (models.router, chat.router, completions.router):
        app.include_router(router)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        m: GatewayMetrics = request.app.state.metrics
        return Response(m.render(), media_type=m.content_type)

    @app.get("/healthz")
    async def healthz(request: Request) -> dict[str, Any]:
        """Liveness of the gateway itself; the orchestrator's state is informational,
        read from the channel without an RPC, so a probe never loads the orchestrator."""
        client: OrchestratorClient = request.app.state.orchestrator
        state = client.channel.get_state(try_to_connect=True)
        return {"status": "ok", "orchestrator": state.name.lower()}

    return app
