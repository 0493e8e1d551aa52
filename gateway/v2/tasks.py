"""The native task API, thin over ClientService:

    GET    /v2/tasks                ListJobs   200 {"data": [job], "next_page_token"}
                                               ?status= (repeat, or commas), ?page_size=
                                               (1..500, default 100), ?page_token=
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
from llama_orch.v1 import common_pb2, events_pb2

from common.errors import InvalidInput, OrchError
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


MAX_PAGE = 500
_STATUSES = {name.removeprefix("JOB_STATUS_").lower(): value
             for name, value in common_pb2.JobStatus.items() if value}


def _statuses(values: list[str]) -> list[int]:
    out: list[int] = []
    for item in (i.strip() for v in values for i in v.split(",")):
        if not item:
            continue
        if item.lower() not in _STATUSES:
            raise InvalidInput("INVALID_ARGUMENT", f"status: unknown job status {item[:40]!r} "
                               f"(one of {', '.join(_STATUSES)})", param="status")
        out.append(_STATUSES[item.lower()])
    return out


def _page_size(value: str | None) -> int:
    if value is None:
        return 100
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_PAGE:
        raise InvalidInput("INVALID_ARGUMENT", f"page_size must be an integer from 1 to "
                           f"{MAX_PAGE}", param="page_size")
    return int(value)


@router.get("/v2/tasks", **openapi.operation(
    ok=openapi.TaskList, errors=(400, *openapi.ADMIN), parameters=[
        openapi.query("status", "keep jobs with this status (repeat, or separate with "
                      "commas): queued, dispatched, running, succeeded, failed, cancelled"),
        {**openapi.query("page_size", "jobs per page (default 100)"),
         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}},
        openapi.query("page_token", "next_page_token of the page before")]))
async def list_tasks(request: Request) -> dict[str, Any]:
    """The jobs the caller may see, in the orchestrator's order (oldest first)."""
    q = request.query_params
    reply = await _client(request).list_jobs(
        _statuses(q.getlist("status")), _page_size(q.get("page_size")),
        q.get("page_token", ""), caller_of(request))
    return {"data": [_job(request, j) for j in reply.jobs],
            "next_page_token": reply.next_page_token or None}


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

