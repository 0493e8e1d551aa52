"""The gateway's OpenAPI document (/openapi.json): what each route takes and answers.

Routes read their bodies themselves (gateway.body: size limit, UTF-8 and JSON checks,
OpenAI error bodies), so FastAPI cannot see their request models, and they build their
JSON themselves. `operation(...)` gives a route's decorator the rest of its document:
the request body (the validating pydantic model's schema), the success response (the
models below, which are documentation only) and every error response it can give
(`ErrorResponse`, gateway.errors); an event stream documents each event (`sse`), its
`data` a JSON string of a named model. `document(app, max_n)` then finishes the document:
it adds the request models to the components, sets `n`'s maximum to the app's limit,
documents the X-Correlation-Id header everywhere, and drops FastAPI's 422 responses
(a validation error is a 400 here).

tests/gateway/test_gateway_openapi.py runs schemathesis against this document, so a
schema that says more or less than the code does is a failing test.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import GATEWAY_STATUS, HTTP_STATUS

_REF = "#/components/schemas/{model}"
# Models the document names itself (request bodies, SSE event data), which FastAPI
# does not know about; `document` adds them to the components.
_NAMED: dict[str, type[BaseModel]] = {}


def ref(model: type[BaseModel]) -> dict[str, str]:
    _NAMED[model.__name__] = model
    return {"$ref": _REF.format(model=model.__name__)}


def _json(*models: type[BaseModel]) -> dict[str, Any]:
    """A string holding JSON that is one of `models`."""
    return {"type": "string", "contentMediaType": "application/json",
            "contentSchema": {"anyOf": [ref(m) for m in models]}}


def sse(data: dict[str, Any], *, done: bool = False, named: bool = False) -> dict[str, Any]:
    """The schema of one server-sent event whose `data` is `data`; `done`: or the
    final `[DONE]`; `named`: it has an `event` name and may have an `id`."""
    if done:
        data = {"anyOf": [{"const": "[DONE]"}, data]}
    properties: dict[str, Any] = {"data": data}
    if named:
        properties |= {"event": {"type": "string"}, "id": {"type": "string"}}
    return {"type": "object", "properties": properties,
            "required": ["data", "event"] if named else ["data"]}


class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow")


# ---- errors --------------------------------------------------------------------------


class ErrorObject(_Doc):
    message: str
    type: str
    param: str | None
    code: str | None = Field(description="the stable error code in lower case, e.g. "
                                         "model_not_found, invalid_argument")


class ErrorResponse(_Doc):
    """Every error: `{"error": {...}}`. Mid-stream it is the payload of an SSE event."""

    error: ErrorObject


_WHY = {
    400: "invalid input: a bad field (`param` names it), or refused at admission",
    401: "a missing or bad API key (code invalid_api_key)",
    403: "the credentials may not do this",
    404: "no such model, job, worker, device or route",
    408: "the request's headers or body did not arrive in time (the connection is closed)",
    409: "the Idempotency-Key was used for a different request; or the action conflicts "
         "with the cluster's state (model_pinned, device_mask_overlap)",
    413: "the body is over the size limit",
    429: "rate limited, or the tenant's quota is exhausted",
    499: "the job was cancelled while the request waited for it",
    500: "an internal error",
    501: "the orchestrator does not implement this yet (code unimplemented)",
    503: "the orchestrator, or capacity for this model, is unavailable; retry later",
    504: "the job's deadline passed",
}
# Any route that calls the orchestrator can meet these.
UPSTREAM = (401, 403, 429, 500, 503, 504)
# Any route that reads a body: bad, slow, too large, or abandoned while sent.
BODY = (400, 408, 413, 499)
GENERATION = (*BODY, 404, 409, *UPSTREAM)
# /v2/cluster and /v2/admin: an orchestrator may not implement the RPC (yet).
ADMIN = (*UPSTREAM, 501)
assert {status for status, _ in (*HTTP_STATUS.values(), *GATEWAY_STATUS.values())} <= set(_WHY)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorResponse, "description": _WHY[s]} for s in sorted(statuses)}


# ---- /v1 objects ---------------------------------------------------------------------


class Model(_Doc):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(_Doc):
    object: Literal["list"]
    data: list[Model]


class Usage(_Doc):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(_Doc):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(_Doc):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None


class ChatCompletionMessage(_Doc):
    role: Literal["assistant"]
    content: str | None
    refusal: str | None = None


class ChatChoice(_Doc):
    index: int
    message: ChatCompletionMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: str | None = Field(description="stop or length")


class ChatCompletion(_Doc):
    id: str = Field(description="chatcmpl- and the job id")
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str | None
    choices: list[ChatChoice]
    usage: Usage


class CompletionLogprobs(_Doc):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(_Doc):
    index: int = Field(description="i * n + j for choice j of prompt i")
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str | None = Field(description="stop or length")


class Completion(_Doc):
    id: str = Field(description="cmpl- and the job id (of the first prompt's job)")
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: str | None
    choices: list[CompletionChoice]
    usage: Usage


class ChunkDelta(_Doc):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(_Doc):
    index: int
    delta: ChunkDelta
    logprobs: ChoiceLogprobs | None
    finish_reason: str | None


class ChatCompletionChunk(_Doc):
    """One `data:` event of a streamed chat completion: first a role delta per
    choice, then content deltas, then an empty delta with the finish reason; with
    stream_options.include_usage every chunk has `"usage": null` and a last chunk
    with no choices carries the usage."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    system_fingerprint: str | None
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChunk(_Doc):
    """One `data:` event of a streamed completion (as Completion, a piece of text)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: str | None
    choices: list[CompletionChoice]
    usage: Usage | None = None


# ---- /v2 objects ---------------------------------------------------------------------


class Proof(_Doc):
    seed: int
    model_ref: str
    model_digest: str
    engine: str
    engine_version: str
    device: str
    token_hash: str
    token_count: int


class JobEventData(_Doc):
    """The `data` of a job's event; the other fields depend on the event's kind."""

    job_id: str
    seq: int
    time: str | None


class FactData(_Doc):
    """The `data` of a fact (gateway.v2.objects.fact_object)."""

    id: int
    time: str | None
    kind: str
    code: str
    level: str
    component: str
    message: str


class Task(_Doc):
    """A job as /v2 shows it (gateway.v2.objects.job_object); the submit reply adds
    `existing`."""

    id: str
    status: str = Field(description="queued, dispatched, running, succeeded, failed "
                                    "or cancelled")
    model: str
    model_ref: str | None
    priority: str
    seed: int
    attempts: int
    created: int
    created_at: str | None
    updated_at: str | None
    started_at: str | None
    finished_at: str | None
    waiting_reason: str | None
    worker_id: str | None
    pool_id: str | None
    finish_reason: str | None
    usage: Usage | None
    error: ErrorObject | None
    output: str | None
    proof: Proof | None
    last_seq: int
    correlation_id: str | None
    events_url: str
    existing: bool | None = None


class TaskList(_Doc):
    """GET /v2/tasks: jobs the caller may see, in the orchestrator's order."""

    data: list[Task]
    next_page_token: str | None = Field(description="pass as page_token for the next "
                                                    "page; null on the last one")


# ---- /v2 cluster objects (gateway.v2.objects, docs/UI.md) ------------------------------


class Info(_Doc):
    mode: str = Field(description="home, lab or platform")
    version: str = Field(description="llama-orch's version")
    policy_editable: bool = Field(description="false in platform mode, where only the "
                                              "built-in scheduling policy runs")


class Device(_Doc):
    id: str
    index: int
    kind: str = Field(description="gpu, cpu or simulated")
    name: str
    memory_total_bytes: int
    memory_used_bytes: int
    memory_free_bytes: int
    utilization_percent: float
    temperature_c: float


class Inventory(_Doc):
    devices: list[Device]
    nvml_status: str
    hostname: str
    cpu_count: int
    ram_total_bytes: int
    ram_available_bytes: int
    engines: list[str]
    driver_version: str


class Worker(_Doc):
    worker_id: str
    pool_id: str
    model_ref: str
    engine: str
    device_ids: list[str]
    state: str = Field(description="starting, ready, busy, draining, stopping, stopped "
                                   "or failed")
    endpoint: str | None
    device_bytes: dict[str, int] = Field(description="bytes held on each device, by id")
    pid: int
    started_at: str | None
    active_jobs: int
    slots: int
    engine_version: str | None
    model_digest: str | None
    last_used_at: str | None


class ModelResidency(_Doc):
    model_ref: str
    cached: bool = Field(description="on the pool's disk")
    preloaded: bool = Field(description="held in the pool's RAM")
    size_bytes: int
    last_used_at: str | None


class Pool(_Doc):
    pool_id: str
    state: str = Field(description="joining, available, draining or unavailable")
    inventory: Inventory
    workers: list[Worker]
    last_heartbeat: str | None
    address: str | None
    models: list[ModelResidency]
    version: str | None
    provider_id: str | None


class CatalogModel(_Doc):
    id: str
    ref: str
    aliases: list[str]
    context_length: int
    engine: str
    created: int
    owned_by: str
    size_bytes: int
    memory_estimate_bytes: int
    device_count: int
    pinned_device_ids: list[str]
    supports_logprobs: bool
    supports_penalties: bool


class Pin(_Doc):
    model_ref: str
    pool_id: str
    device_ids: list[str]
    created_at: str | None


class QueueDepth(_Doc):
    priority: str = Field(description="interactive or batch")
    depth: int


class Cluster(_Doc):
    """GET /v2/cluster: one snapshot of the cluster (ClientService.GetClusterSnapshot)."""

    fact_id: int = Field(description="the last fact the snapshot includes (0: none yet): "
                                     "resume the fact stream after it")
    time: str | None
    mode: str
    pools: list[Pool]
    queue: list[QueueDepth]
    models: list[CatalogModel]
    pins: list[Pin] = Field(description="every pin, one per (model, pool)")
    active_jobs: list[Task]


class PinReply(_Doc):
    pin: Pin


class WorkerReply(_Doc):
    worker: Worker


class PoolReply(_Doc):
    pool: Pool


class Done(_Doc):
    """`{}`: the orchestrator did it; the change arrives as facts (GET /v2/events)."""


class PolicyVersion(_Doc):
    version: int
    language: str = Field(description="builtin (source empty) or lua")
    source: str
    created_at: str | None
    author: str | None
    active: bool


class PolicyState(_Doc):
    active: PolicyVersion
    editable: bool = Field(description="false in platform mode")
    mode: str


class PolicyVersions(_Doc):
    versions: list[PolicyVersion]


class PolicyProblem(_Doc):
    line: int = Field(description="1-based; 0: no line")
    message: str


class PolicyCheck(_Doc):
    """An invalid policy is a 200 with `ok` false and its problems."""

    ok: bool
    problems: list[PolicyProblem]


class Decision(_Doc):
    action: str = Field(description="dispatch, start_worker, stop_worker, preload, "
                                    "evict_model or wait")
    job_id: str | None
    worker_id: str | None
    pool_id: str | None
    model_ref: str | None
    device_ids: list[str]
    reason: str | None
    rejected: str | None = Field(description="the validator's refusal, or null")


class DryRun(_Doc):
    policy_decisions: list[Decision]
    builtin_decisions: list[Decision]
    problems: list[PolicyProblem]
    policy_ms: float
    builtin_ms: float


class ActivePolicy(_Doc):
    active: PolicyVersion


# ---- operations ----------------------------------------------------------------------


def query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": "string", **schema}}


def header(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {**query(name, description, **schema), "in": "header"}


CHAT_STREAM = sse(_json(ChatCompletionChunk, ErrorResponse), done=True)
COMPLETION_STREAM = sse(_json(CompletionChunk, ErrorResponse), done=True)
JOB_EVENTS = sse(_json(JobEventData, ErrorResponse), named=True)
FACTS = sse(_json(FactData, ErrorResponse), named=True)

IDEMPOTENCY_KEY = header("Idempotency-Key", "makes a submission safe to retry: up to 256 "
                         "printable ASCII characters (empty: none)",
                         pattern=r"^[\x20-\x7e]{0,256}$")
RESUME = [header("Last-Event-ID", "resume after this event id (a decimal uint64)"),
          query("after", "as Last-Event-ID, which wins when both are given")]


def operation(*, ok: type[BaseModel] | None = None, body: type[BaseModel] | None = None,
              status: int = 200, also: tuple[int, ...] = (), errors: tuple[int, ...] = UPSTREAM,
              stream: dict[str, Any] | None = None, body_optional: bool = False,
              parameters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Keyword arguments for a route decorator: its document beyond the path.

    ok: the success body's model, answered with `status` (and the `also` statuses);
    stream: the success is (or may be, with `ok`) text/event-stream, each event as
    this schema (`sse(...)`); body: the request model (`body_optional`: no body at
    all is `{}`); parameters: headers and query parameters the route reads itself."""
    content: dict[str, Any] = {}
    if stream:
        content["text/event-stream"] = {"schema": stream}
    success: dict[str, Any] = {"description": "success"}
    if ok is not None:
        success["model"] = ok
    if content:
        success["content"] = content
    extra: dict[str, Any] = {}
    if body is not None:
        extra["requestBody"] = {"required": not body_optional,
                                "content": {"application/json": {"schema": ref(body)}}}
    if parameters:
        extra["parameters"] = parameters
    return {"status_code": status, "response_model": None,
            "responses": {**{s: success for s in (status, *also)}, **error_responses(*errors)},
            "openapi_extra": extra or None}


def document(app: FastAPI, max_n: int) -> dict[str, Any]:
    """The app's OpenAPI document (built once, then cached as FastAPI does)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes,
                      description="OpenAI-compatible /v1 and the native /v2 task API of "
                                  "llama-orch. Unknown body fields are ignored.")
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name, model in _NAMED.items():
        schema = model.model_json_schema(ref_template=_REF, mode="validation")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
        if "n" in schema.get("properties", {}):
            _set_maximum(schema["properties"]["n"], max_n)
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    correlation = {"name": "X-Correlation-Id", "in": "header", "required": False,
                   "description": "traces the request through every hop (letters, digits "
                                  "and ._:/+=-, up to 128); made up when absent or "
                                  "unusable, and echoed in the response",
                   "schema": {"type": "string"}}
    for path in doc.get("paths", {}).values():
        for op in path.values():
            op.get("responses", {}).pop("422", None)
            op.setdefault("parameters", []).append(dict(correlation))
    app.openapi_schema = doc
    return doc


def _set_maximum(schema: dict[str, Any], maximum: int) -> None:
    for branch in schema.get("anyOf", [schema]):
        if branch.get("type") == "integer":
            branch["maximum"] = maximum
