"""Admission: validate a JobSpec, resolve its model, count its prompt, pick its seed.

Order matters and is part of the contract: shape and ranges first (INVALID_ARGUMENT
with the param), then the model (MODEL_NOT_FOUND), then the context length
(CONTEXT_LENGTH_EXCEEDED). Nothing that fails here is ever stored as queued, and
admission never refuses for lack of capacity.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

from common.config import OrchestratorConfig
from common.errors import InvalidInput
from llama_orch.v1 import common_pb2
from orchestrator.catalog import Catalog, CatalogModel
from orchestrator.types import Priority

ROLES = ("system", "user", "assistant")
MAX_N = 8
MAX_STOP = 4
MAX_STOP_CHARS = 256
MAX_PROMPT_CHARS = 1_000_000


@dataclass(frozen=True)
class Admitted:
    model: CatalogModel
    prompt: str
    prompt_ids: tuple[int, ...]
    sampling: common_pb2.SamplingParams
    priority: Priority
    deadline_ms: int
    seed: int


def _bad(message: str, param: str) -> InvalidInput:
    return InvalidInput("INVALID_ARGUMENT", message, param=param)


def _check_range(name: str, value: float, lo: float, hi: float, *, lo_open: bool = False) -> None:
    if not math.isfinite(value) or value > hi or value < lo or (lo_open and value == lo):
        bound = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise _bad(f"{name} must be in {bound}, got {value}", name)


def _check_sampling(s: common_pb2.SamplingParams) -> None:
    if s.HasField("temperature"):
        _check_range("temperature", s.temperature, 0.0, 2.0)
    if s.HasField("top_p"):
        _check_range("top_p", s.top_p, 0.0, 1.0, lo_open=True)
    if s.HasField("top_k") and s.top_k < 0:
        raise _bad(f"top_k must be >= 0, got {s.top_k}", "top_k")
    for name in ("presence_penalty", "frequency_penalty"):
        if s.HasField(name):
            _check_range(name, getattr(s, name), -2.0, 2.0)
    if s.n > MAX_N:
        raise _bad(f"n must be at most {MAX_N}, got {s.n}", "n")
    if len(s.stop) > MAX_STOP:
        raise _bad(f"at most {MAX_STOP} stop sequences are allowed, got {len(s.stop)}", "stop")
    for i, stop in enumerate(s.stop):
        if not stop or len(stop) > MAX_STOP_CHARS:
            raise _bad(f"stop[{i}] must be 1..{MAX_STOP_CHARS} characters", "stop")
    if s.top_logprobs > 20:
        raise _bad(f"top_logprobs must be at most 20, got {s.top_logprobs}", "top_logprobs")


def _messages(spec: common_pb2.JobSpec) -> list[dict[str, str]]:
    msgs = spec.chat.messages
    if not msgs:
        raise _bad("messages must not be empty", "messages")
    out = []
    for i, m in enumerate(msgs):
        if m.role not in ROLES:
            raise _bad(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {m.role!r}",
                       f"messages[{i}].role")
        out.append({"role": m.role, "content": m.content})
    return out


def admit(spec: common_pb2.JobSpec, catalog: Catalog, cfg: OrchestratorConfig) -> Admitted:
    """Validate and resolve; raises InvalidInput with a stable code and param."""
    if not spec.model:
        raise _bad("model is required", "model")
    which = spec.WhichOneof("input")
    if which is None:
        raise _bad("either prompt or messages is required", "messages")
    s = common_pb2.SamplingParams()
    s.CopyFrom(spec.sampling)
    _check_sampling(s)
    if spec.deadline_ms > cfg.max_deadline_ms:
        raise _bad(f"deadline_ms must be at most {cfg.max_deadline_ms}", "deadline_ms")
    messages = _messages(spec) if which == "chat" else None
    text_len = len(spec.prompt) if which == "prompt" else sum(len(m["content"]) for m in messages)
    if text_len > MAX_PROMPT_CHARS:
        raise _bad(f"the prompt is longer than {MAX_PROMPT_CHARS} characters",
                   "prompt" if which == "prompt" else "messages")

    model = catalog.resolve(spec.model)
    if which == "chat":
        prompt = catalog.render_chat(model, messages)
        ids = catalog.encode(model, prompt, special=False)
        param = "messages"
    else:
        prompt = spec.prompt
        ids = catalog.encode(model, prompt, special=True)
        param = "prompt"
    if not ids:
        raise _bad("the prompt is empty", param)
    room = model.context_length - len(ids)
    if s.max_tokens == 0:  # unset: the operator's cap, or the rest of the context
        s.max_tokens = max(0, min(cfg.default_max_tokens or room, room))
    if room <= 0 or s.max_tokens > room:
        raise InvalidInput(
            "CONTEXT_LENGTH_EXCEEDED",
            f"This model's maximum context length is {model.context_length} tokens. However, "
            f"you requested {len(ids) + s.max_tokens} tokens ({len(ids)} in the prompt, "
            f"{s.max_tokens} for the completion).", param=param)
    if s.n == 0:
        s.n = 1
    if not s.HasField("seed"):
        # Below 2**53 so JSON clients (JavaScript numbers) read it back exactly.
        s.seed = secrets.randbelow(2**53)
    priority = Priority.BATCH if spec.priority == common_pb2.PRIORITY_BATCH else Priority.INTERACTIVE
    return Admitted(model=model, prompt=prompt, prompt_ids=tuple(ids), sampling=s,
                    priority=priority, deadline_ms=spec.deadline_ms or cfg.default_deadline_ms,
                    seed=s.seed)
