"""POST /v1/chat/completions: OpenAI chat completions over ClientService.Generate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request, Response
from llama_orch.v1 import events_pb2

from gateway import openapi
from gateway.body import read_model
from gateway.openai import serving
from gateway.openai.protocol import ChatCompletionRequest

router = APIRouter()


@router.post("/v1/chat/completions", **openapi.operation(
    body=ChatCompletionRequest, ok=openapi.ChatCompletion, errors=openapi.GENERATION,
    parameters=[openapi.IDEMPOTENCY_KEY], stream=openapi.CHAT_STREAM))
async def create_chat_completion(request: Request) -> Response:
    req = await read_model(request, ChatCompletionRequest)
    chat = serving.chat_messages(req.messages)
    return await serving.serve(request, req, [serving.job_spec(req, chat=chat)], CHAT)


def _token(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


class ChatFlavor:
    """chat.completion objects: a `message` whole, a `delta` per chunk, role first."""

    object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    id_prefix = "chatcmpl-"

    def opening(self, index: int) -> dict[str, Any]:
        return {"index": index, "delta": {"role": "assistant", "content": ""},
                "logprobs": None, "finish_reason": None}

    def delta(self, index: int, text: str, logprobs: dict[str, Any] | None) -> dict[str, Any]:
        return {"index": index, "delta": {"content": text}, "logprobs": logprobs,
                "finish_reason": None}

    def finish(self, index: int, reason: str) -> dict[str, Any]:
        return {"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}

    def choice(self, index: int, text: str, logprobs: dict[str, Any] | None,
               reason: str | None) -> dict[str, Any]:
        return {"index": index, "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": logprobs, "finish_reason": reason}

    def logprobs(self, entries: Sequence[events_pb2.TokenLogprobs], offset: int) -> dict[str, Any]:
        return {"content": [{**_token(e.token, e.logprob),
                             "top_logprobs": [_token(t.token, t.logprob) for t in e.top]}
                            for e in entries],
                "refusal": None}


CHAT = ChatFlavor()
