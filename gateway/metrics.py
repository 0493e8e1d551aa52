"""The gateway's own Prometheus metrics (ARCHITECTURE §8).

Every metric carries component="gateway". Labels are bounded: the route *template*
("/v1/models/{model}", or "unmatched"), the method, the status, a stable error code.
Never a job id, model name from the URL, tenant or correlation id.

    gateway_http_requests_total{component,route,method,status}
    gateway_http_request_duration_ms{component,route}     whole response, streams included
    gateway_http_requests_in_flight{component}
    gateway_stream_errors_total{component,route,code}     errors after a 200 stream began
    llama_orch_gateway_upstream_metrics_up{component}     1 if this scrape carries the
                                                          orchestrator's metrics, else 0

GET /metrics answers the gateway's own exposition followed by the orchestrator's
(`OrchestratorMetrics`, fetched from its HTTP port on every scrape with a short
timeout), so one scrape target covers both. The orchestrator's text is passed on only
if it parses as Prometheus text; unreachable, slow, non-200, oversized or unparsable
all mean the gateway's own metrics with the up gauge at 0, never a 5xx.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httpx
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import Scope

from common import log
from common.config import split_address
from common.errors import ConfigError

COMPONENT = "gateway"
# Milliseconds, from a quick models list to a long generation.
_BUCKETS_MS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000,
               60_000, 120_000, 300_000)


def route_of(scope: Scope) -> str:
    """The matched route's template, so URLs with ids never become label values."""
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class GatewayMetrics:
    """One registry per app, so apps built side by side (tests) never collide."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("gateway_http_requests", "HTTP requests by route and status.",
                                ["component", "route", "method", "status"],
                                registry=self.registry)
        self.duration = Histogram("gateway_http_request_duration_ms",
                                  "Time from request to the end of the response.",
                                  ["component", "route"], buckets=_BUCKETS_MS,
                                  registry=self.registry)
        self.in_flight = Gauge("gateway_http_requests_in_flight",
                               "Requests being served, open streams included.", ["component"],
                               registry=self.registry)
        self.stream_errors = Counter("gateway_stream_errors",
                                     "Streams ended by an error event after they began.",
                                     ["component", "route", "code"], registry=self.registry)
        self.upstream_up = Gauge("llama_orch_gateway_upstream_metrics_up",
                                 "1 if this scrape includes the orchestrator's metrics, else 0.",
                                 ["component"], registry=self.registry)

    def request_done(self, scope: Scope, status: int, duration_ms: float) -> None:
        route = route_of(scope)
        self.requests.labels(COMPONENT, route, scope.get("method", ""), str(status)).inc()
        self.duration.labels(COMPONENT, route).observe(duration_ms)

    def stream_error(self, scope: Scope, code: str) -> None:
        self.stream_errors.labels(COMPONENT, route_of(scope), code).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


# ---- the orchestrator's metrics ------------------------------------------------------

ORCHESTRATOR_METRICS_PORT = 9101
# Classic text, not OpenMetrics: two expositions concatenate only in this format.
_ACCEPT = "text/plain;version=0.0.4;q=1.0, */*;q=0.1"


def default_orchestrator_metrics_url(orchestrator_address: str,
                                     port: int = ORCHESTRATOR_METRICS_PORT) -> str:
    """Where the orchestrator serves Prometheus text: the host the gateway dials for
    gRPC (its metrics may listen on 0.0.0.0, which is no address to dial), `port`."""
    host, _ = split_address(orchestrator_address, "gateway.orchestrator")
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/metrics"


def check_metrics_url(url: str) -> str:
    """`url` if it is an http(s) URL with a host (and a valid port); ConfigError if not."""
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and (
            parts.port is None or parts.port > 0)  # .port raises for a bad one
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"gateway: --orchestrator-metrics {url!r} is not an http(s) URL",
                          param="gateway.orchestrator_metrics")
    return url


class OrchestratorMetrics:
    """Fetches the orchestrator's exposition for one scrape; `fetch` never raises.

    Failures are logged when the state changes (up -> down, down -> up), not on
    every scrape, so an orchestrator without a metrics port does not flood the log."""

    def __init__(self, url: str, http: httpx.AsyncClient, *, timeout_s: float = 2.0,
                 max_bytes: int = 16 * 1024 * 1024):
        self.url = url
        self.http = http
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self._up: bool | None = None

    async def fetch(self) -> bytes | None:
        """The orchestrator's text, ending in a newline, or None."""
        try:
            async with asyncio.timeout(self.timeout_s):
                text = await self._get()
            list(text_string_to_metric_families(text))  # unparsable text would break the scrape
            body, why = (text if text.endswith("\n") else text + "\n").encode(), ""
        except Exception as exc:  # whatever went wrong, the scrape goes on without it
            body, why = None, (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        self._note(body is not None, why)
        return body

    async def _get(self) -> str:
        async with self.http.stream("GET", self.url, headers={"accept": _ACCEPT}) as r:
            if r.status_code != 200:
                raise ValueError(f"HTTP {r.status_code}")
            chunks, size = [], 0
            async for chunk in r.aiter_bytes():
                size += len(chunk)
                if size > self.max_bytes:
                    raise ValueError(f"more than {self.max_bytes} bytes")
                chunks.append(chunk)
        return b"".join(chunks).decode("utf-8")

    def _note(self, up: bool, why: str) -> None:
        if up == self._up:
            return
        self._up = up
        if up:
            log.emit("gateway", "upstream_metrics.up", f"reading {self.url}", url=self.url)
        else:
            log.emit("gateway", "upstream_metrics.down", f"cannot read {self.url}: {why}",
                     level="warning", url=self.url)
