"""OpenAI request bodies, validated as OpenAI validates them.

Pydantic only: no engine, gRPC or FastAPI imports, so these models say what a valid
request is and nothing about how it is served.

- Types are strict (`"0.5"` is not a temperature, `1` is not a boolean).
- Unknown fields are accepted and ignored, as OpenAI does, so newer SDKs keep working.
- Known OpenAI fields whose meaning we cannot honour (tools, echo, logit_bias, ...)
  are refused with UNSUPPORTED_PARAMETER instead of being ignored: ignoring them
  would silently change what the answer means.
- Extension fields: `priority` ("interactive" | "batch"), `detach` (a disconnect does
  not cancel the job) and `top_k`, as vLLM and Ollama accept it.

Ranges: temperature 0..2, top_p (0, 1], penalties -2..2, n 1..8, at most 4 stop
strings, seed 0..2^64-1, max_tokens >= 1, top_logprobs 0..20 (completions: logprobs 0..5).

`SamplingFields` (model, sampling, priority, detach, user) is shared with the native
/v2 task body (gateway.v2.protocol), so both APIs refuse the same input the same way.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

MAX_N = 8
MAX_STOP = 4
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5
MAX_UINT32 = 2**32 - 1
MAX_SEED = 2**64 - 1


# Validators raise ValueError (never TypeError), the one pydantic reports as a
# validation error with the field's location.


def _utf8(value: str) -> str:
    # JSON escapes can carry lone surrogates ("\ud800") that no UTF-8 encoder accepts.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid UTF-8 (lone surrogate escapes are not)") from None
    return value


Text = Annotated[str, AfterValidator(_utf8)]


def unsupported(what: str = "this parameter", hint: str = "") -> PydanticCustomError:
    return PydanticCustomError("unsupported_parameter",
                               "{what} is not supported by llama-orch{hint}",
                               {"what": what, "hint": hint})


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class SamplingFields(_Body):
    """The model, sampling and scheduling fields of every generation request: OpenAI's
    chat and text completions and the native /v2 tasks validate them the same way.

    The properties are what `gateway.openai.serving.job_spec` reads; subclasses with
    their own length or logprobs fields override them."""

    model: Text = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1, le=MAX_UINT32)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stop: Any = None
    max_tokens: int | None = Field(None, ge=1, le=MAX_UINT32)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    n: int | None = Field(None, ge=1, le=MAX_N)
    user: Text | None = None
    priority: Literal["interactive", "batch"] = "interactive"
    detach: bool = False
    logit_bias: Any = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: Any) -> list[str]:
        if value is None:
            return []
        stops = [value] if isinstance(value, str) else value
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise ValueError("must be a string or a list of strings")
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences are allowed")
        return [_utf8(s) for s in stops]

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, value: Any) -> None:
        if value:
            raise unsupported()

    @property
    def choices(self) -> int:
        return self.n or 1

    @property
    def length_limit(self) -> int | None:
        return self.max_tokens

    @property
    def wants_logprobs(self) -> bool:
        return False

    @property
    def top_logprob_count(self) -> int:
        return 0


class GenerationRequest(SamplingFields):
    """Fields chat and text completions share; validated the same for both."""

    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("stream_options")
    @classmethod
    def _stream_options(cls, value: StreamOptions | None, info: ValidationInfo) -> Any:
        # As OpenAI: stream_options without stream is a mistake worth saying out loud.
        if value is not None and not info.data.get("stream"):
            raise ValueError("stream_options is only allowed when stream is true")
        return value

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatMessage(_Body):
    # "developer" is OpenAI's newer name for "system", and is sent to the orchestrator as such.
    role: Literal["system", "user", "assistant", "developer"]
    content: Any = Field(...)
    name: Text | None = None

    @field_validator("content")
    @classmethod
    def _content(cls, value: Any) -> str:
        """A string, or a list of text parts (joined); other part types are refused."""
        if isinstance(value, str):
            return _utf8(value)
        if not isinstance(value, list):
            raise ValueError("must be a string or a list of content parts")
        texts = []
        for part in value:
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise ValueError("content parts must be objects with a type")
            if part["type"] != "text":
                raise unsupported(f"content part type {part['type']!r}")
            if not isinstance(part.get("text"), str):
                raise ValueError("a text content part needs a string text")
            texts.append(_utf8(part["text"]))
        return "".join(texts)


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_UINT32)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: Any = None
    functions: Any = None
    tool_choice: Any = None
    response_format: Any = None

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value and not info.data.get("logprobs"):
            raise ValueError("logprobs must be true when top_logprobs is used")
        return value

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, value: Any, info: ValidationInfo) -> None:
        if value:
            raise unsupported()

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice(cls, value: Any) -> None:
        if value not in (None, "none"):
            raise unsupported()

    @field_validator("response_format")
    @classmethod
    def _response_format(cls, value: Any) -> None:
        if value is not None and value != {"type": "text"}:
            raise unsupported("a response_format other than text")

    @property
    def length_limit(self) -> int | None:
        # max_completion_tokens supersedes the deprecated max_tokens.
        return self.max_completion_tokens or self.max_tokens

    @property
    def wants_logprobs(self) -> bool:
        return self.logprobs

    @property
    def top_logprob_count(self) -> int:
        return self.top_logprobs or 0


class CompletionRequest(GenerationRequest):
    prompt: Any = Field(...)
    # Legacy completions: an int, the number of most likely tokens to return per token.
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    echo: bool = False
    suffix: Any = None
    best_of: Any = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: Any) -> str:
        """One prompt string; a list holding exactly one string is the same prompt."""
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
            value = value[0]
        if isinstance(value, str):
            return _utf8(value)
        if isinstance(value, list) and value and all(isinstance(p, str) for p in value):
            raise unsupported("a list of several prompts", "; send one request per prompt")
        if isinstance(value, list) and value and all(isinstance(p, (int, list)) for p in value):
            raise unsupported("a prompt of token ids")
        raise ValueError("must be a string")

    @field_validator("echo")
    @classmethod
    def _echo(cls, value: bool) -> bool:
        if value:
            raise unsupported()
        return value

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, value: Any) -> None:
        if value:
            raise unsupported()

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, value: Any) -> None:
        if value not in (None, 1):
            raise unsupported()

    @property
    def length_limit(self) -> int | None:
        return self.max_tokens

    @property
    def wants_logprobs(self) -> bool:
        return self.logprobs is not None

    @property
    def top_logprob_count(self) -> int:
        return self.logprobs or 0
