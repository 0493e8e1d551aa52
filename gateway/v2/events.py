"""GET /v2/events: the fact stream (ClientService.WatchFacts) as SSE.

    GET /v2/events?kind=worker.failed&kind=job.finished&job_id=...&after=41

Each fact is `id: <fact id>`, `event: <fact code>` (e.g. "worker.failed"),
`data: <fact JSON>` (gateway.v2.objects); retained facts after the resume position
come first, then live ones. Filters: `kind` (repeated or comma-separated; codes or
FactKind names, case-insensitive; none means every kind; an unknown one is a 400 with
param `kind`) and `job_id`. Resume: Last-Event-ID, else `?after=`, as the fact id.
The stream has no end of its own; `: keep-alive` comments keep an idle one open.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Request, Response
from llama_orch.v1 import events_pb2

from gateway import openapi, sse
from gateway.middleware import caller_of
from gateway.orchestrator_client import OrchestratorClient
from gateway.v2.objects import fact_object
from gateway.v2.protocol import fact_kinds, resume_position
from gateway.v2.relay import open_stream, relay

router = APIRouter()

# An SSE event name is one line; codes are dotted identifiers, anything else is "fact".
_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")


@router.get("/v2/events", **openapi.operation(
    errors=(400, *openapi.UPSTREAM), parameters=[
        openapi.query("kind", "fact kinds to keep (repeat, or separate with commas)"),
        openapi.query("job_id", "keep only the facts about this job"), *openapi.RESUME],
    stream=openapi.FACTS))
async def watch_events(request: Request) -> Response:
    kinds = fact_kinds(request.query_params.getlist("kind"))
    after, _ = resume_position(request.headers.get("last-event-id"),
                               request.query_params.get("after"))
    client: OrchestratorClient = request.app.state.orchestrator
    stream = client.watch_facts(kinds, request.query_params.get("job_id", ""), after,
                                caller_of(request))
    first = await open_stream(stream, request.app.state.stream_open_wait_s)
    return sse.EventStreamResponse(relay(request, stream, first, _fact_frame))


def _fact_frame(fact: events_pb2.Fact) -> tuple[str, bool]:
    name = fact.code if _NAME.fullmatch(fact.code) else "fact"
    return sse.event(name, fact_object(fact), id=fact.id), False
