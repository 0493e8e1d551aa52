"""The gateway application: an OpenAI drop-in over the orchestrator's ClientService.

Thin by design (ARCHITECTURE §7): no state of its own and no policy. Each route turns
REST/SSE into the same RPCs any SDK makes, through one grpc.aio channel per app.

    GET    /v1/models                  ListModels
    GET    /v1/models/{model}          GetModel
    POST   /v1/chat/completions        Generate (chat)       stream or whole
    POST   /v1/completions             Generate (prompt)     stream or whole
    POST   /v2/tasks                   Submit                202 + job id
    GET    /v2/tasks/{job_id}          GetJob
    DELETE /v2/tasks/{job_id}          CancelJob
    GET    /v2/tasks/{job_id}/events   StreamJob             SSE, Last-Event-ID resume
    GET    /v2/tasks                   ListJobs
    GET    /v2/events                  WatchFacts            SSE, Last-Event-ID resume
    GET    /v2/info                    (GetClusterSnapshot)  mode, version (gateway.v2.cluster)
    GET    /v2/cluster                 GetClusterSnapshot
    *      /v2/admin/...               AdminService, one route per RPC (gateway.v2.admin)
    GET    /metrics                    the gateway's Prometheus metrics + the orchestrator's
    GET    /healthz                    liveness, plus the channel's connectivity state
    GET    /ui/                        the web UI, frontend/dist (gateway.ui)

    GET    /openapi.json, /docs      the OpenAPI document of all the above but /ui
                                     (gateway.openapi)

HEAD is answered on every GET route (gateway.middleware.HeadMiddleware). With
`cors_origins`, browsers on those origins may call every route (CORS below).

Beside the gRPC channel the app holds one httpx client, for the orchestrator's
metrics (gateway.metrics.OrchestratorMetrics).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response
from starlette.middleware.cors import CORSMiddleware

from common.grpc_server import channel
from common.heap import freeze_startup_heap
from gateway import errors, identity, openapi, ui
from gateway.metrics import (
    COMPONENT,
    GatewayMetrics,
    OrchestratorMetrics,
    default_orchestrator_metrics_url,
)
from gateway.middleware import EdgeMiddleware, HeadMiddleware
from gateway.openai import chat, completions, models
from gateway.openai.protocol import MAX_N
from gateway.orchestrator_client import OrchestratorClient
from gateway.v2 import admin, cluster, events, tasks

MiB = 1024 * 1024
# What a browser may send and read across origins: the API key, a JSON body, and the
# gateway's own headers (gateway.middleware).
CORS = dict(allow_methods=["GET", "HEAD", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key",
                           "X-Correlation-Id"],
            expose_headers=["X-Correlation-Id"])


def create_app(orchestrator_address: str, *, max_body_bytes: int = 4 * MiB,
               max_n: int = MAX_N, orchestrator_metrics_url: str | None = None,
               heartbeat_s: float = 15.0, stream_open_wait_s: float = 2.0,
               mode: str = "home", ui_dist: Path = ui.DIST,
               cors_origins: Sequence[str] = ()) -> FastAPI:
    """Build the app; the channel and the HTTP client open at startup and close at
    shutdown (lifespan).

    max_body_bytes: larger bodies are refused (413). max_n: the most choices (`n`) a
    generation request may ask for (400 above). orchestrator_metrics_url: where /metrics reads the orchestrator's text (default:
      the orchestrator's host, port 9101). heartbeat_s: the longest a /v2 SSE stream
      stays silent (`: keep-alive`). stream_open_wait_s: how long a /v2 SSE request
      waits for its first event before committing a 200 (gateway.v2.relay).
      mode: the config's mode, which /v2/info tells where the orchestrator's snapshot
      cannot be read. ui_dist: the built web UI served at /ui/ (gateway.ui).
      cors_origins: origins ("https://app.example", or "*") whose browser pages may
      call the gateway; none (the default): no CORS headers at all.
    """
    metrics_url = orchestrator_metrics_url or default_orchestrator_metrics_url(
        orchestrator_address)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # grpc.aio channels belong to the running event loop, hence created here.
        client = app.state.orchestrator = OrchestratorClient(channel(orchestrator_address))
        # With TLS: renewed client certificates are picked up without a restart.
        renewals = identity.watch(client, orchestrator_address)
        renewing = asyncio.create_task(renewals.run()) if renewals is not None else None
        # An internal hop: no proxies from the environment.
        http = httpx.AsyncClient(trust_env=False, follow_redirects=False)
        app.state.orchestrator_metrics = OrchestratorMetrics(metrics_url, http)
        ui.log_if_missing(ui_dist)
        freeze_startup_heap("gateway")
        try:
            yield
        finally:
            await http.aclose()
            if renewing is not None:
                renewing.cancel()
                await renewals.close()
            await client.channel.close()

    app = FastAPI(title="llama-orch gateway", lifespan=lifespan)
    app.state.max_body_bytes = max_body_bytes
    app.state.max_n = max_n
    app.state.heartbeat_s = heartbeat_s
    app.state.stream_open_wait_s = stream_open_wait_s
    app.state.mode = mode
    app.state.ui_dist = ui_dist
    app.state.metrics = GatewayMetrics()
    errors.install(app)
    # The last added is the outermost (the order: gateway.middleware).
    app.add_middleware(HeadMiddleware)
    app.add_middleware(EdgeMiddleware, metrics=app.state.metrics)
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), **CORS)
    for router in (models.router, chat.router, completions.router, tasks.router,
                   events.router, cluster.router, admin.router, ui.router):
        app.include_router(router)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        """The gateway's exposition, then the orchestrator's (if it could be read)."""
        m: GatewayMetrics = request.app.state.metrics
        upstream = await request.app.state.orchestrator_metrics.fetch()
        m.upstream_up.labels(COMPONENT).set(0 if upstream is None else 1)
        return Response(m.render() + (upstream or b""), media_type=m.content_type)

    app.openapi = lambda: openapi.document(app, max_n)  # type: ignore[method-assign]

    @app.get("/healthz", include_in_schema=False)
    async def healthz(request: Request) -> dict[str, Any]:
        """Liveness of the gateway itself; the orchestrator's state is informational,
        read from the channel without an RPC, so a probe never loads the orchestrator."""
        client: OrchestratorClient = request.app.state.orchestrator
        state = client.channel.get_state(try_to_connect=True)
        return {"status": "ok", "orchestrator": state.name.lower()}

    return app
