"""OpenAI request bodies, validated as OpenAI validates them.

Pydantic only: no engine, gRPC or FastAPI imports, so these models say what a valid
request is and nothing about how it is served. Their JSON schemas are the request
bodies of the gateway's OpenAPI document (gateway.openapi), so each field's schema
says what the validators accept: the two must agree (tests/gateway/test_gateway_openapi.py
runs schemathesis against them).

- Types are strict (`"0.5"` is not a temperature, `1` is not a boolean).
- An explicit JSON null is the field's default, as OpenAI takes it: openai-python
  sends null for an argument given as None. Fields with a non-null default (`stream`,
  `logprobs`, `echo`, `include_usage`, `priority`, `detach`) are of the types `Flag`
  and `Priority`: null becomes the default, any other value keeps its strict type.
- Unknown fields are accepted and ignored, as OpenAI does, so newer SDKs keep working.
- Known OpenAI fields whose meaning we cannot honour (tools, echo, logit_bias, audio
  or web search, a role "tool", tool calls in the history, ...) are refused with
  UNSUPPORTED_PARAMETER instead of being ignored: ignoring them would silently change
  what the answer means. Given their neutral value (`tools: []`, `echo: false`,
  `tool_choice: "none"`, `modalities: ["text"]`, null) they are accepted.
- An assistant message's content may be null or absent (a reply that was all tool
  calls or a refusal; taken as ""), and may hold refusal parts (their text is used).
- Extension fields: `priority` ("interactive" | "batch"), `detach` (a disconnect does
  not cancel the job) and `top_k`, as vLLM and Ollama accept it.

Ranges, as OpenAI's: temperature 0..2, top_p 0..1 (0: only the most likely token,
sent to the orchestrator as top_k 1), penalties -2..2, n 1..max_n (the gateway's
`max_n`, 8 unless configured; given as validation context), at most 4 stop strings of
1..256 characters, seed -2^63..2^64-1 (a negative seed is its 64-bit two's complement,
`seed % 2**64`, the contract's uint64), max_tokens >= 1, top_logprobs 0..20
(completions: logprobs 0..5), a completion prompt is a string or 1..16 strings.

`SamplingFields` (model, sampling, priority, detach, user) is shared with the native
/v2 task body (gateway.v2.protocol), so both APIs refuse the same input the same way;
so are the chat-style logprobs fields (`TopLogprobs`, `ChatLogprobs`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

MAX_N = 8  # the default of GatewayConfig.max_n
MAX_STOP = 4
MAX_STOP_CHARS = 256  # as the orchestrator's admission
MAX_PROMPTS = 16
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5
MAX_INT32 = 2**31 - 1
MAX_UINT32 = 2**32 - 1
MIN_SEED = -(2**63)  # OpenAI's seed is an int64 or a uint64
MAX_SEED = 2**64 - 1
ROLES = ("system", "user", "assistant", "developer")
# OpenAI roles that only make sense with tool calling, which llama-orch does not do.
_TOOL_ROLES = ("tool", "function")


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


def _schema(schema: dict[str, Any]) -> WithJsonSchema:
    """The JSON schema of an optional field whose type a validator checks (`Any`)."""
    return WithJsonSchema({"anyOf": [schema, {"type": "null"}]})


# The schema of a field whose only accepted value is null (or absence).
_NULL_ONLY = WithJsonSchema({"type": "null"})


def _null_is(default: Any, kind: Any) -> BeforeValidator:
    """Reads an explicit null as `default`; anything else is validated as `kind`,
    strictly. The field's schema says "`kind` or null"."""
    return BeforeValidator(lambda value: default if value is None else value,
                           json_schema_input_type=kind | None)


PriorityName = Literal["interactive", "batch"]
# Fields that take null as their default; what they hold is never None.
Flag = Annotated[bool, _null_is(False, bool)]
Priority = Annotated[PriorityName, _null_is("interactive", PriorityName)]


def _uint64(seed: int | None) -> int | None:
    # The contract's seed is a uint64; OpenAI also takes negative int64 seeds.
    return None if seed is None else seed % 2**64


_STOP_STRING = {"type": "string", "minLength": 1, "maxLength": MAX_STOP_CHARS}
_TEXT_PART = {"type": "object", "properties": {"type": {"const": "text"},
                                               "text": {"type": "string"}},
              "required": ["type", "text"]}
_REFUSAL_PART = {"type": "object", "properties": {"type": {"const": "refusal"},
                                                  "refusal": {"type": "string"}},
                 "required": ["type", "refusal"]}


def _needs_logprobs(value: int | None, info: ValidationInfo) -> int | None:
    if value and not info.data.get("logprobs"):
        raise ValueError("logprobs must be true when top_logprobs is used")
    return value


# Chat-style logprobs (chat completions and /v2 tasks): `logprobs: bool = False` and
# `top_logprobs: TopLogprobs = None`. Each model declares the two fields itself, right
# where they belong: pydantic orders fields by declaration (and validates in that
# order: the check above reads `logprobs`), and fields inherited from a mixin would
# come first instead.
TopLogprobs = Annotated[int | None, Field(ge=0, le=MAX_TOP_LOGPROBS),
                        AfterValidator(_needs_logprobs)]


class ChatLogprobs:
    """What serving reads from the chat-style logprobs fields (see TopLogprobs). No
    annotations here: pydantic would take them for fields."""

    @property
    def wants_logprobs(self) -> bool:
        return self.logprobs  # type: ignore[attr-defined]

    @property
    def top_logprob_count(self) -> int:
        return self.top_logprobs or 0  # type: ignore[attr-defined]


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Body):
    include_usage: Flag = False


class SamplingFields(_Body):
    """The model, sampling and scheduling fields of every generation request: OpenAI's
    chat and text completions and the native /v2 tasks validate them the same way.

    The properties are what `gateway.openai.serving.job_spec` reads; subclasses with
    their own length or logprobs fields override them."""

    model: Text = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=1, le=MAX_INT32)  # an int32 in the contract
    seed: Annotated[int | None, AfterValidator(_uint64)] = Field(None, ge=MIN_SEED, le=MAX_SEED)
    stop: Annotated[Any, _schema({"anyOf": [
        _STOP_STRING, {"type": "array", "items": _STOP_STRING, "maxItems": MAX_STOP}]})] = None
    max_tokens: int | None = Field(None, ge=1, le=MAX_UINT32)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    # The upper bound is the gateway's max_n, checked below; gateway.openapi puts it in
    # the app's document.
    n: int | None = Field(None, ge=1)
    user: Text | None = None
    priority: Priority = "interactive"
    detach: Flag = False
    logit_bias: Annotated[Any, _schema({"type": "object", "maxProperties": 0})] = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: Any) -> list[str]:
        if value is None:
            return []
        stops = [value] if isinstance(value, str) else value
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise ValueError("must be a string or a list of strings")
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences are allowed, got {len(stops)}")
        for s in stops:
            if not 1 <= len(s) <= MAX_STOP_CHARS:
                raise ValueError(f"each stop sequence must be 1 to {MAX_STOP_CHARS} characters")
        return [_utf8(s) for s in stops]

    @field_validator("n")
    @classmethod
    def _n(cls, value: int | None, info: ValidationInfo) -> int | None:
        limit = (info.context or {}).get("max_n", MAX_N)
        if value is not None and value > limit:
            raise ValueError(f"must be at most {limit}")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, value: Any) -> None:
        if value is not None and not isinstance(value, dict):
            raise ValueError("must be an object")
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

    @property
    def penalised(self) -> str | None:
        """The first penalty field with an effect (non-zero), if any: only engines that
        implement penalties may run this request."""
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                return name
        return None


class GenerationRequest(SamplingFields):
    """Fields chat and text completions share; validated the same for both."""

    stream: Flag = False
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


def _none_or_empty_list(value: Any) -> None:
    if value is not None and not isinstance(value, list):
        raise ValueError("must be an array")
    if value:
        raise unsupported()


def _none_only_object(value: Any) -> None:
    """An object-typed OpenAI field we cannot honour in any form: only null passes."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise ValueError("must be an object")
    raise unsupported()


_CONTENT = {"anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}]}


class ChatMessage(_Body):
    # Only an assistant's content may be null, absent or hold refusal parts: the
    # schema's anyOf says so (role assistant, or a string or text parts).
    model_config = ConfigDict(json_schema_extra={"anyOf": [
        {"properties": {"role": {"const": "assistant"}}},
        {"properties": {"content": _CONTENT}, "required": ["content"]}]})

    # "developer" is OpenAI's newer name for "system", and is sent to the orchestrator as such.
    role: Annotated[Any, WithJsonSchema({"enum": list(ROLES)})] = Field(...)
    # validate_default: an absent content is checked against the role too.
    content: Annotated[Any, WithJsonSchema({"anyOf": [
        {"type": "string"}, {"type": "array", "items": {"anyOf": [_TEXT_PART, _REFUSAL_PART]}},
        {"type": "null"}]})] = Field(None, validate_default=True)
    name: Text | None = None
    # An assistant turn's tool calls (and their deprecated or audio forms) in the
    # history: a conversation with tool calling, which llama-orch does not do.
    tool_calls: Annotated[Any, _schema({"type": "array", "maxItems": 0})] = None
    function_call: Annotated[Any, _NULL_ONLY] = None
    audio: Annotated[Any, _NULL_ONLY] = None

    @field_validator("role")
    @classmethod
    def _role(cls, value: Any) -> str:
        if value in _TOOL_ROLES:
            raise unsupported(f"role {value!r}", " (no tool calling)")
        if not isinstance(value, str) or value not in ROLES:
            raise ValueError(f"must be one of {', '.join(ROLES)}")
        return value

    @field_validator("content")
    @classmethod
    def _content(cls, value: Any, info: ValidationInfo) -> str:
        """A string, or a list of text parts (joined); other part types are refused.
        An assistant's may also be null or absent ("") and hold refusal parts."""
        assistant = info.data.get("role") == "assistant"
        if value is None:
            if assistant:
                return ""
            raise ValueError("is required (a string or a list of content parts)")
        if isinstance(value, str):
            return _utf8(value)
        if not isinstance(value, list):
            raise ValueError("must be a string or a list of content parts")
        return "".join(_part_text(part, assistant) for part in value)

    @field_validator("tool_calls")
    @classmethod
    def _tool_calls(cls, value: Any) -> None:
        _none_or_empty_list(value)

    @field_validator("function_call", "audio")
    @classmethod
    def _null_only(cls, value: Any) -> None:
        _none_only_object(value)


def _part_text(part: Any, assistant: bool) -> str:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise ValueError("content parts must be objects with a type")
    kind = part["type"]
    if kind == "refusal":
        # As OpenAI: the assistant's earlier refusal, which the model sees as its text.
        if not assistant:
            raise ValueError("refusal content parts are only allowed in assistant messages")
        key = "refusal"
    elif kind == "text":
        key = "text"
    else:
        raise unsupported(f"content part type {kind!r}")
    if not isinstance(part.get(key), str):
        raise ValueError(f"a {kind} content part needs a string {key}")
    return _utf8(part[key])


class ChatCompletionRequest(ChatLogprobs, GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_UINT32)
    logprobs: Flag = False
    top_logprobs: TopLogprobs = None
    tools: Annotated[Any, _schema({"type": "array", "maxItems": 0})] = None
    functions: Annotated[Any, _schema({"type": "array", "maxItems": 0})] = None
    tool_choice: Annotated[Any, _schema({"const": "none"})] = None
    # The deprecated tool_choice: "none", or "auto" with no functions (refused if
    # any), both meaning no call.
    function_call: Annotated[Any, _schema({"enum": ["none", "auto"]})] = None
    response_format: Annotated[Any, _schema({
        "type": "object", "properties": {"type": {"const": "text"}}, "required": ["type"]})] = None
    # Output other than text, and features of OpenAI's own service; modalities comes
    # before audio so that a request for audio output is refused naming it.
    modalities: Annotated[Any, _schema({"const": ["text"]})] = None
    audio: Annotated[Any, _NULL_ONLY] = None
    web_search_options: Annotated[Any, _NULL_ONLY] = None
    moderation: Annotated[Any, _NULL_ONLY] = None

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, value: Any) -> None:
        _none_or_empty_list(value)

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice(cls, value: Any) -> None:
        if value is None or value == "none":
            return
        if not isinstance(value, (str, dict)):
            raise ValueError("must be a string or an object")
        raise unsupported()

    @field_validator("function_call")
    @classmethod
    def _function_call(cls, value: Any) -> None:
        if value is None or value in ("none", "auto"):
            return
        if not isinstance(value, (str, dict)):
            raise ValueError("must be a string or an object")
        raise unsupported()

    @field_validator("response_format")
    @classmethod
    def _response_format(cls, value: Any) -> None:
        if value is None:
            return
        if not isinstance(value, dict) or not isinstance(value.get("type"), str):
            raise ValueError("must be an object with a type")
        if value["type"] != "text":
            raise unsupported("a response_format other than text")

    @field_validator("modalities")
    @classmethod
    def _modalities(cls, value: Any) -> None:
        if value is None:
            return
        if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
            raise ValueError("must be an array of strings")
        if value != ["text"]:
            raise unsupported("output other than text")

    @field_validator("audio", "web_search_options", "moderation")
    @classmethod
    def _null_only(cls, value: Any) -> None:
        _none_only_object(value)

    @property
    def length_limit(self) -> int | None:
        # max_completion_tokens supersedes the deprecated max_tokens.
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(GenerationRequest):
    """A legacy completion. `prompt` is validated to a list of 1..MAX_PROMPTS strings:
    each becomes its own job with `n` choices, and choice `i * n + j` is choice j of
    prompt i, as OpenAI numbers them."""

    prompt: Annotated[Any, WithJsonSchema({"anyOf": [
        {"type": "string"},
        {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": MAX_PROMPTS},
    ]})] = Field(...)
    # Legacy completions: an int, the number of most likely tokens to return per token.
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    echo: Annotated[Flag, _schema({"type": "boolean", "const": False})] = False
    suffix: Annotated[Any, _schema({"const": ""})] = None
    best_of: Annotated[Any, _schema({"const": 1})] = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: Any) -> list[str]:
        if isinstance(value, str):
            return [_utf8(value)]
        if not isinstance(value, list) or not value:
            raise ValueError("must be a string or a non-empty list of strings")
        if all(isinstance(p, str) for p in value):
            if len(value) > MAX_PROMPTS:
                raise ValueError(f"at most {MAX_PROMPTS} prompts are allowed, got {len(value)}")
            return [_utf8(p) for p in value]
        if all(isinstance(p, int) and not isinstance(p, bool) for p in value) or all(
                isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool)
                                                  for t in p) for p in value):
            # The contract carries text and the gateway has no tokenizer: token ids
            # could only be decoded and re-encoded, which need not give them back.
            raise unsupported("a prompt of token ids", "; send the prompt as text")
        raise ValueError("must be a string or a list of strings")

    @field_validator("echo")
    @classmethod
    def _echo(cls, value: bool) -> bool:
        if value:
            raise unsupported()
        return value

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, value: Any) -> None:
        if value is not None and not isinstance(value, str):
            raise ValueError("must be a string")
        if value:
            raise unsupported()

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, value: Any) -> None:
        if value is None or (value == 1 and type(value) is int):
            return
        if type(value) is not int:
            raise ValueError("must be an integer")
        raise unsupported()

    @property
    def prompts(self) -> list[str]:
        return self.prompt

    @property
    def wants_logprobs(self) -> bool:
        return self.logprobs is not None

    @property
    def top_logprob_count(self) -> int:
        return self.logprobs or 0
