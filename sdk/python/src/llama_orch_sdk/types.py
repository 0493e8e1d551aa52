"""OpenAI-shaped results: the same attribute names and nesting as the `openai` package's
types (ChatCompletion, ChatCompletionChunk, Completion, Model, ...), as small frozen
dataclasses, so code written against `openai` reads them unchanged.

`to_dict()` and `to_json()` give the wire shape, as `openai` objects do. Optional fields
that `openai` declares and llama-orch never fills (tool calls, function calls, audio,
annotations, refusals, service tier, token details) are there and always None, so code
such as `if message.tool_calls:` runs unchanged; llama-orch's own additions are marked
as extensions.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal


class _Object:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


@dataclass(frozen=True)
class CompletionUsage(_Object):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    completion_tokens_details: None = None
    prompt_tokens_details: None = None


@dataclass(frozen=True)
class TopLogprob(_Object):
    token: str
    logprob: float
    bytes: list[int] | None = None


@dataclass(frozen=True)
class ChatCompletionTokenLogprob(_Object):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = field(default_factory=list)


@dataclass(frozen=True)
class ChoiceLogprobs(_Object):
    content: list[ChatCompletionTokenLogprob] | None = None
    refusal: list[ChatCompletionTokenLogprob] | None = None


@dataclass(frozen=True)
class ChatCompletionMessage(_Object):
    content: str | None
    role: Literal["assistant"] = "assistant"
    refusal: str | None = None
    annotations: None = None
    audio: None = None
    function_call: None = None
    tool_calls: None = None


@dataclass(frozen=True)
class Choice(_Object):
    index: int
    message: ChatCompletionMessage
    finish_reason: str
    logprobs: ChoiceLogprobs | None = None


@dataclass(frozen=True)
class ChatCompletion(_Object):
    """`id` is "chatcmpl-" + the orchestrator's job id."""

    id: str
    choices: list[Choice]
    created: int
    model: str
    object: Literal["chat.completion"] = "chat.completion"
    service_tier: None = None
    system_fingerprint: str | None = None
    usage: CompletionUsage | None = None


@dataclass(frozen=True)
class ChoiceDelta(_Object):
    content: str | None = None
    role: Literal["assistant"] | None = None
    refusal: str | None = None
    audio: None = None
    function_call: None = None
    tool_calls: None = None


@dataclass(frozen=True)
class ChunkChoice(_Object):
    """A choice in a ChatCompletionChunk (openai's `chat_completion_chunk.Choice`)."""

    index: int
    delta: ChoiceDelta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


@dataclass(frozen=True)
class ChatCompletionChunk(_Object):
    """One streamed piece. With stream_options={"include_usage": True} the last chunk
    has no choices and carries `usage`; every other chunk has usage None."""

    id: str
    choices: list[ChunkChoice]
    created: int
    model: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    service_tier: None = None
    system_fingerprint: str | None = None
    usage: CompletionUsage | None = None


@dataclass(frozen=True)
class Logprobs(_Object):
    """Legacy completions logprobs: parallel lists, one entry per token."""

    tokens: list[str] | None = None
    token_logprobs: list[float] | None = None
    top_logprobs: list[dict[str, float]] | None = None
    text_offset: list[int] | None = None


@dataclass(frozen=True)
class CompletionChoice(_Object):
    index: int
    text: str
    finish_reason: str | None
    logprobs: Logprobs | None = None


@dataclass(frozen=True)
class Completion(_Object):
    """A text completion, or one streamed piece of it (openai uses one type for both).
    `id` is "cmpl-" + the job id (the first job's, for a list of prompts)."""

    id: str
    choices: list[CompletionChoice]
    created: int
    model: str
    object: Literal["text_completion"] = "text_completion"
    system_fingerprint: str | None = None
    usage: CompletionUsage | None = None


@dataclass(frozen=True)
class Model(_Object):
    """A model clients can name. Extensions: ref, aliases, context_length, engine,
    size_bytes, supports_logprobs."""

    id: str
    created: int
    owned_by: str
    object: Literal["model"] = "model"
    ref: str = ""
    aliases: list[str] = field(default_factory=list)
    context_length: int = 0
    engine: str = ""
    size_bytes: int = 0
    supports_logprobs: bool = False


@dataclass(frozen=True)
class ModelList(_Object):
    """`client.models.list()`: iterate it, or read `.data`."""

    data: list[Model]
    object: Literal["list"] = "list"

    def __iter__(self) -> Iterator[Model]:
        return iter(self.data)
