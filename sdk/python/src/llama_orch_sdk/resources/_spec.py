"""Keyword arguments -> JobSpec, as the gateway maps an OpenAI body (gateway/openai).

Range checks are the orchestrator's (it answers INVALID_ARGUMENT with the param, which
arrives here as InvalidRequestError); this module only shapes the request and refuses
what cannot even be expressed in a JobSpec:
- unset stays unset, so the orchestrator's defaults apply and it records a seed;
- `stop` is a string or a list of strings; "developer" is sent as "system";
- message content is a string or a list of text parts (joined), as OpenAI accepts;
- OpenAI parameters llama-orch cannot honour (tools, response_format json, logit_bias,
  echo, ...) raise UNSUPPORTED_PARAMETER rather than being ignored, unless given their
  no-op value (None, False, empty, tool_choice "none", response_format text); a name
  `openai` does not know either raises TypeError, as `openai`'s own create() does;
- a value protobuf would refuse with a raw TypeError, or silently coerce ("no" -> True,
  None -> ""), is refused here as InvalidRequestError naming its param (`checked`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llama_orch_sdk._gen.llama_orch.v1 import common_pb2
from llama_orch_sdk.errors import InvalidRequestError

PRIORITIES = {"interactive": common_pb2.PRIORITY_INTERACTIVE, "batch": common_pb2.PRIORITY_BATCH}
_ROLE = {"developer": "system"}
_OPTIONAL = ("temperature", "top_p", "top_k", "seed", "presence_penalty", "frequency_penalty")
# The parameters of openai's create() that llama-orch cannot honour, per endpoint.
CHAT_UNSUPPORTED = frozenset({
    "audio", "extra_body", "extra_headers", "extra_query", "function_call", "functions",
    "logit_bias", "metadata", "modalities", "moderation", "parallel_tool_calls", "prediction",
    "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention", "reasoning_effort",
    "response_format", "safety_identifier", "service_tier", "store", "tool_choice", "tools",
    "verbosity", "web_search_options"})
TEXT_UNSUPPORTED = frozenset({"best_of", "echo", "extra_body", "extra_headers", "extra_query",
                              "logit_bias", "suffix"})
# Values that ask for nothing beyond what llama-orch does anyway. Compared by type and
# value, so 0 is not False and True is not 1.
_NO_OP: dict[str, tuple[Any, ...]] = {
    "tool_choice": ("none",), "response_format": ({"type": "text"},), "best_of": (1,),
    "parallel_tool_calls": (True,), "modalities": (["text"],)}
_NEUTRAL = (None, False, "", [], {}, ())
_KINDS = {str: "a string", bool: "true or false", int: "an integer"}


def bad(message: str, param: str, code: str = "INVALID_ARGUMENT") -> InvalidRequestError:
    return InvalidRequestError(code, message, param=param)


def checked(param: str, value: Any, kind: type, *, optional: bool = False,
            minimum: int | None = 0) -> Any:
    """`value` when it is a `kind` (str, bool, or int >= `minimum`; None too when
    `optional`), else InvalidRequestError naming `param`."""
    if value is None and optional:
        return value
    ok = type(value) is kind if kind is bool else isinstance(value, kind)
    at_least = ""
    if kind is int:  # a bool is an int to Python, never a count here
        ok = ok and not isinstance(value, bool) and (minimum is None or value >= minimum)
        at_least = "" if minimum is None else f" >= {minimum}"
    if not ok:
        raise bad(f"{param} must be {_KINDS[kind]}{at_least}, got {value!r}", param)
    return value


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def refuse_unsupported(params: Mapping[str, Any], known: frozenset[str]) -> None:
    """Accept the `known` openai parameters at a no-op value; refuse the rest."""
    for name, value in params.items():
        if name not in known:
            raise TypeError(f"create() got an unexpected keyword argument {name!r}")
        if any(_same(value, v) for v in (*_NEUTRAL, *_NO_OP.get(name, ()))):
            continue
        raise bad(f"{name} is not supported by llama-orch", name, "UNSUPPORTED_PARAMETER")


def sampling(*, max_tokens: int | None = None, temperature: float | None = None,
             top_p: float | None = None, top_k: int | None = None, seed: int | None = None,
             stop: str | Sequence[str] | None = None, n: int | None = None,
             presence_penalty: float | None = None, frequency_penalty: float | None = None,
             logprobs: bool = False, top_logprobs: int | None = None) -> common_pb2.SamplingParams:
    s = common_pb2.SamplingParams()
    values = {"max_tokens": max_tokens, "n": n, "top_logprobs": top_logprobs,
              "temperature": temperature, "top_p": top_p, "top_k": top_k, "seed": seed,
              "presence_penalty": presence_penalty, "frequency_penalty": frequency_penalty}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):  # bool is an int to protobuf; never a valid value here
            raise bad(f"{name} must be a number, got {value!r}", name)
        try:
            setattr(s, name, value)
        except (TypeError, ValueError) as exc:
            raise bad(f"{name}: {exc}", name) from None
    s.logprobs = checked("logprobs", logprobs, bool)
    s.stop.extend(_stops(stop))
    return s


def _stops(stop: Any) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, (list, tuple)) or not all(isinstance(x, str) for x in stops):
        raise bad(f"stop must be a string or a list of strings, got {stop!r}", "stop")
    return list(stops)


def chat(messages: Sequence[Any]) -> common_pb2.ChatMessages:
    """OpenAI messages (dicts, or objects with role/content such as a returned
    ChatCompletionMessage) as the contract's ChatMessages."""
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise bad("messages must be a list of messages", "messages")
    out = common_pb2.ChatMessages()
    for i, m in enumerate(messages):
        get = m.get if isinstance(m, Mapping) else (lambda k, d=None, m=m: getattr(m, k, d))
        role, content, name = get("role"), get("content"), get("name")
        if not isinstance(role, str):
            raise bad(f"messages[{i}].role must be a string", f"messages[{i}].role")
        name = checked(f"messages[{i}].name", name, str, optional=True)
        out.messages.add(role=_ROLE.get(role, role), content=_text(content, f"messages[{i}]"),
                         name=name or "")
    return out


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if not isinstance(content, list):
        raise bad(f"{where}.content must be a string or a list of content parts",
                  f"{where}.content")
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind != "text":
            raise bad(f"{where}.content: only text parts are supported, got {kind!r}",
                      f"{where}.content", "UNSUPPORTED_PARAMETER")
        if not isinstance(part.get("text"), str):
            raise bad(f"{where}.content: a text part needs a string 'text', got "
                      f"{part.get('text')!r}", f"{where}.content")
        texts.append(part["text"])
    return "".join(texts)


def job_spec(model: str, params: common_pb2.SamplingParams, *, priority: str = "interactive",
             detach: bool = False, user: str | None = None, deadline_ms: int | None = None,
             keep_output: bool = False, labels: Mapping[str, str] | None = None,
             prompt: str | None = None,
             messages: common_pb2.ChatMessages | None = None) -> common_pb2.JobSpec:
    if not isinstance(model, str):
        raise bad("model must be a string", "model")
    if priority not in PRIORITIES:
        raise bad(f"priority must be 'interactive' or 'batch', got {priority!r}", "priority")
    spec = common_pb2.JobSpec(model=model, sampling=params, priority=PRIORITIES[priority],
                              detach=checked("detach", detach, bool),
                              user=checked("user", user, str, optional=True) or "",
                              keep_output=checked("keep_output", keep_output, bool))
    if checked("deadline_ms", deadline_ms, int, optional=True) is not None:
        spec.deadline_ms = deadline_ms
    try:
        spec.labels.update(labels or {})
    except (TypeError, ValueError):
        raise bad("labels must map strings to strings", "labels") from None
    if messages is not None:
        spec.chat.CopyFrom(messages)
    elif isinstance(prompt, str):
        spec.prompt = prompt
    else:
        raise bad("prompt must be a string", "prompt")
    return spec
