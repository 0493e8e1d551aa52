"""POST /v1/completions: OpenAI (legacy) text completions over ClientService.Generate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request, Response
from llama_orch.v1 import events_pb2

from gateway import openapi
from gateway.body import read_model
from gateway.openai import serving
from gateway.openai.protocol import CompletionRequest

router = APIRouter()


@router.post("/v1/completions", **openapi.operation(
    body=CompletionRequest, ok=openapi.Completion, errors=openapi.GENERATION,
    parameters=[openapi.IDEMPOTENCY_KEY], stream=openapi.COMPLETION_STREAM))
async def create_completion(request: Request) -> Response:
    """Each prompt of a list is its own job; choice i * n + j is choice j of prompt i."""
    req = await read_model(request, CompletionRequest)
    specs = [serving.job_spec(req, prompt=prompt) for prompt in req.prompts]
    return await serving.serve(request, req, specs, TEXT)


class TextFlavor:
    """text_completion objects: `text` whole and per chunk, no role chunk."""

    object = "text_completion"
    chunk_object = "text_completion"
    id_prefix = "cmpl-"

    def opening(self, index: int) -> None:
        return None

    def delta(self, index: int, text: str, logprobs: dict[str, Any] | None) -> dict[str, Any]:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": None}

    def finish(self, index: int, reason: str) -> dict[str, Any]:
        return {"index": index, "text": "", "logprobs": None, "finish_reason": reason}

    def choice(self, index: int, text: str, logprobs: dict[str, Any] | None,
               reason: str | None) -> dict[str, Any]:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}

    def logprobs(self, entries: Sequence[events_pb2.TokenLogprobs], offset: int) -> dict[str, Any]:
        """The legacy layout: parallel lists; text_offset is each token's character
        offset in the completion (`offset` = characters before these entries)."""
        offsets = []
        for e in entries:
            offsets.append(offset)
            offset += len(e.token)
        return {"tokens": [e.token for e in entries],
                "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": [{t.token: t.logprob for t in e.top} for e in entries],
                "text_offset": offsets}


TEXT = TextFlavor()
