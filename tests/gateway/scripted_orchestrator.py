"""ScriptedOrchestrator: a test double of the orchestrator's ClientService.

It serves the real gRPC contract on a real grpc.aio server, but its Generate plays
back a script of JobEvents instead of scheduling anything, and it records what the
gateway sent (requests, metadata) and whether the call was cancelled.

A script is a list of events built with the helpers below; `job_id` and `seq` are
filled in. `HOLD` in a script means: stop here and wait until the caller cancels.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from llama_orch.v1 import client_pb2, client_pb2_grpc, common_pb2, errors_pb2, events_pb2

from common.errors import OrchError, code_value

JOB_ID = "job-0001"
CREATED = 1_700_000_000
HOLD = object()


def queued() -> events_pb2.JobEvent:
    return events_pb2.JobEvent(
        queued=events_pb2.JobQueued(priority=common_pb2.PRIORITY_INTERACTIVE))


def started(prompt_tokens: int = 5) -> events_pb2.JobEvent:
    return events_pb2.JobEvent(started=events_pb2.JobStarted(prompt_tokens=prompt_tokens,
                                                             model_ref="file:/m/tiny"))


def tokens(text: str, index: int = 0, ids: int = 1,
           logprobs: list[events_pb2.TokenLogprobs] | None = None) -> events_pb2.JobEvent:
    return events_pb2.JobEvent(tokens=events_pb2.JobTokens(
        text=text, token_ids=list(range(ids)), logprobs=logprobs or [], choice_index=index))


def logprob(token: str, lp: float, top: dict[str, float] | None = None) -> events_pb2.TokenLogprobs:
    return events_pb2.TokenLogprobs(token=token, logprob=lp, top=[
        events_pb2.TokenLogprob(token=t, logprob=v) for t, v in (top or {}).items()])


def end(reason: str = "stop", prompt: int = 5, completion: int = 2, index: int = 0,
        engine: str = "sim") -> events_pb2.JobEvent:
    return events_pb2.JobEvent(end=events_pb2.JobEnd(
        finish_reason=reason, choice_index=index,
        usage=common_pb2.Usage(prompt_tokens=prompt, completion_tokens=completion,
                               total_tokens=prompt + completion),
        proof=common_pb2.ProofRecord(engine=engine, engine_version="1.0", model_digest="abc")))


def error(code: str, message: str = "it broke") -> events_pb2.JobEvent:
    return events_pb2.JobEvent(error=errors_pb2.ErrorDetail(code=code_value(code), message=message))


def hello_script() -> list:
    return [queued(), started(5), tokens("Hello"), tokens(" world"), end("stop", 5, 2)]


def model(id: str, created: int = CREATED, owned_by: str = "llama-orch") -> common_pb2.ModelInfo:
    return common_pb2.ModelInfo(id=id, ref=f"file:/models/{id}", created=Timestamp(seconds=created),
                                owned_by=owned_by, context_length=2048)


@dataclass
class ScriptedOrchestrator(client_pb2_grpc.ClientServiceServicer):
    models: list[common_pb2.ModelInfo] = field(
        default_factory=lambda: [model("tiny"), model("org/big-model", owned_by="")])
    script: list = field(default_factory=hello_script)
    # Raised before any event, as admission failures are.
    admission_error: OrchError | None = None
    requests: list[client_pb2.GenerateRequest] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    holding: asyncio.Event = field(default_factory=asyncio.Event)

    def _record(self, context: grpc.aio.ServicerContext) -> None:
        self.metadata.append({k: v for k, v in context.invocation_metadata()})

    async def ListModels(self, request, context):
        self._record(context)
        return client_pb2.ListModelsResponse(models=self.models)

    async def GetModel(self, request, context):
        self._record(context)
        for m in self.models:
            if m.id == request.model:
                return client_pb2.GetModelResponse(model=m)
        await OrchError("MODEL_NOT_FOUND", f"model {request.model!r} is not known",
                        param="model").abort(context)

    async def Generate(self, request, context):
        self._record(context)
        self.requests.append(request)
        if self.admission_error is not None:
            await self.admission_error.abort(context)
        try:
            for seq, event in enumerate(self.script, start=1):
                if event is HOLD:
                    self.holding.set()
                    await asyncio.Event().wait()  # until the client cancels
                ev = events_pb2.JobEvent()
                ev.CopyFrom(event)
                ev.job_id, ev.seq = JOB_ID, seq
                ev.time.FromSeconds(CREATED)
                yield client_pb2.GenerateResponse(event=ev)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
