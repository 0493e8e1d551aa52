"""The gateway's own Prometheus metrics (ARCHITECTURE §8).

Every metric carries component="gateway". Labels are bounded: the route *template*
("/v1/models/{model}", or "unmatched"), the method, the status, a stable error code.
Never a job id, model name from the URL, tenant or correlation id.

    gateway_http_requests_total{component,route,method,status}
    gateway_http_request_duration_ms{component,route}     whole response, streams included
    gateway_http_requests_in_flight{component}
    gateway_stream_errors_total{component,route,code}     errors after a 200 stream began
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import Scope

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

    def request_done(self, scope: Scope, status: int, duration_ms: float) -> None:
        route = route_of(scope)
        self.requests.labels(COMPONENT, route, scope.get("method", ""), str(status)).inc()
        self.duration.labels(COMPONENT, route).observe(duration_ms)

    def stream_error(self, scope: Scope, code: str) -> None:
        self.stream_errors.labels(COMPONENT, route_of(scope), code).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
