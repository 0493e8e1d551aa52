"""The native task API, thin over ClientService:

    POST   /v2/tasks                Submit     202 job (+ "existing": false), Location
                                               200 job (+ "existing": true) when the
                                               Idempotency-Key matched an earlier
                                               submission of the same body
    GET    /v2/tasks/{job_id}        GetJob     200 job
    DELETE /v2/tasks/{job_id}        CancelJob  200 job (a finished job's recorded outcome)
    GET    /v2/tasks/{job_id}/events StreamJob  200 SSE, resumable (Last-Event-ID, ?after=)

Errors are the gateway's error bodies (gateway.errors): 400 with `param` for a bad
body, Idempotency-Key, Last-Event-ID or `after`; 404 `not_found` for an unknown job;
409 `idempotency_conflict` for a reused key with a different body; 400
`resume_out_of_range` for a position beyond the job's last event.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from llama_orch.v1 import events_pb2

from common.errors import OrchError
from gateway import openapi, sse
from gateway.body import read_model
from gateway.middleware import caller_of, idempotency_key
from gateway.openai import serving
from gateway.orchestrator_client import OrchestratorClient
from gateway.v2.objects import event_object, job_object, task_url
from gateway.v2.protocol import TaskRequest, resume_position
from gateway.v2.relay import open_stream, relay

router = APIRouter()

def _client(request: Request) -> OrchestratorClient:
    return request.app.state.orchestrator


def _job(request: Request, job: Any) -> dict[str, Any]:
    return job_object(job, request.scope.get("root_path", ""))


@router.post("/v2/tasks", **openapi.operation(
    body=TaskRequest, ok=openapi.Task, status=202, also=(200,), errors=openapi.GENERATION,
    parameters=[openapi.IDEMPOTENCY_KEY]))
async def submit_task(request: Request) -> Response:
    req = await read_model(request, TaskRequest)
    key = idempotency_key(request)
    await serving.check_engine_support(_client(request), req, caller_of(request))
    if req.messages is not None:
        spec = serving.job_spec(req, chat=serving.chat_messages(req.messages))
    else:
        spec = serving.job_spec(req, prompt=req.prompt)
    spec.deadline_ms = req.deadline_ms or 0
    spec.keep_output = req.keep_output
    job, existing = await _client(request).submit(spec, caller_of(request), idempotency_key=key)
    location = task_url(job.job_id, request.scope.get("root_path", ""))
    return JSONResponse({**_job(request, job), "existing": existing},
                        status_code=200 if existing else 202, headers={"location": location})


@router.get("/v2/tasks/{job_id}", **openapi.operation(
    ok=openapi.Task, errors=(404, *openapi.UPSTREAM)))
async def get_task(job_id: str, request: Request) -> dict[str, Any]:
    return _job(request, await _client(request).get_job(job_id, caller_of(request)))


@router.delete("/v2/tasks/{job_id}", **openapi.operation(
    ok=openapi.Task, errors=(404, *openapi.UPSTREAM)))
async def cancel_task(job_id: str, request: Request) -> dict[str, Any]:
    """Cancellation is asynchronous: the job returned may still be running; its
    events end with `error` (code cancelled) once the orchestrator has stopped it."""
    return _job(request, await _client(request).cancel_job(job_id, caller_of(request)))


@router.get("/v2/tasks/{job_id}/events", **openapi.operation(
    errors=(400, 404, *openapi.UPSTREAM), parameters=openapi.RESUME,
    stream=openapi.JOB_EVENTS))
async def task_events(job_id: str, request: Request) -> Response:
    """The job's events after the resume position (0: all of them), live until its
    terminal event; each is `id: <seq>`, `event: <kind>`, `data: <json>`."""
    after, source = resume_position(request.headers.get("last-event-id"),
                                    request.query_params.get("after"))
    stream = _client(request).stream_job(job_id, after, caller_of(request))
    try:
        first = await open_stream(stream, request.app.state.stream_open_wait_s)
    except OrchError as err:
        if err.code == "RESUME_OUT_OF_RANGE":
            raise OrchError(err.code, f"{source}: {err.message}", param=source) from None
        raise
    return sse.EventStreamResponse(relay(request, stream, first, _event_frame))


def _event_frame(ev: events_pb2.JobEvent) -> tuple[str, bool]:
    # An error is the job's last event. After `end` more may follow (one per choice);
    # the orchestrator ends the stream after the last.
    name, body = event_object(ev)
    return sse.event(name, body, id=ev.seq), name == "error"

