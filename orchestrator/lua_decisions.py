"""What a Lua policy returns: decision tables <-> the scheduler's Decision dataclasses,
and the problems that make a policy unusable for a cycle or at all.

ACTIONS lists every decision a policy may return, with its fields (docs/POLICY.md is
generated from it); decode_decisions checks a returned array field by field and raises
PolicyError with one PolicyProblem on the first malformed entry. Used by
orchestrator/lua_policy.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from orchestrator.lua_sandbox import ERROR, INVALID, SYNTAX, SandboxFailure
from orchestrator.snapshot import (Decision, Dispatch, EvictModel, JobView, Preload, Snapshot,
                                   StartWorker, StopWorker, Wait)

NO_DECIDE = "POLICY_NO_DECIDE"
PROBLEM_CODES: dict[str, str] = {
    SYNTAX: "the source does not compile (the line is given)",
    NO_DECIDE: "the source defines no global function decide(snapshot)",
    ERROR: "the policy raised an error (the line is given when Lua names one)",
    "POLICY_INSTRUCTION_LIMIT": "more Lua instructions than instruction_limit in one call",
    "POLICY_TIME_BUDGET": "more wall time than time_budget_s in one call",
    "POLICY_MEMORY_LIMIT": "more than memory_limit_bytes allocated in one call",
    INVALID: "decide returned something other than an array of well-formed decisions",
}
DEFAULT_REASON = "lua policy"
MAX_DECISIONS = 20_000
MAX_REASON_CHARS = 1000


# ---- problems ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """Why a policy was not used (for a cycle, or at all): a stable code, a message for
    people, and the policy source line it points at (0: none)."""
    code: str
    message: str
    line: int = 0

    def __str__(self) -> str:
        at = f" (line {self.line})" if self.line else ""
        return f"{self.code}: {self.message}{at}"


class PolicyError(Exception):
    """A policy could not be compiled or could not decide this cycle."""

    def __init__(self, problem: PolicyProblem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def problem_of(f: SandboxFailure) -> PolicyProblem:
    return PolicyProblem(f.code, f.message, f.line)


# ---- decisions: the Lua tables and the dataclasses ----------------------------------------

@dataclass(frozen=True, slots=True)
class Field:
    """One field of a decision table. kind: id (non-empty string), ids (non-empty array
    of ids), text (string), int (integer >= 0), num (finite number)."""
    name: str  # in Lua
    kind: str
    required: bool
    doc: str
    attr: str = ""  # the dataclass attribute, when it differs from `name` ("" = none)


@dataclass(frozen=True, slots=True)
class Action:
    name: str
    cls: type
    fields: tuple[Field, ...]


_REASON = Field("reason", "text", False,
                f'why (becomes the fact\'s message); default "{DEFAULT_REASON}"')
_FOR_MODEL = Field("for_model", "id", False, "set by builtin_decide(): the model whose jobs the "
                   "decision serves (the model of the wait that follows it); ignored")
ACTIONS: dict[str, Action] = {a.name: a for a in (
    Action("dispatch", Dispatch, (
        Field("job_id", "id", True, "a queued head of this cycle (snapshot.queued)"),
        Field("worker_id", "id", True, "a READY worker of the job's model with a free slot"),
        _REASON)),
    Action("start_worker", StartWorker, (
        Field("model_ref", "id", True, "the model to serve"),
        Field("pool_id", "id", True, "an available pool offering the model's engine"),
        Field("device_ids", "ids", True, "the mask: devices of that pool, each once"),
        Field("memory_estimate", "int", False, "bytes reserved on every device of the mask; "
              "default: the model's head job's memory_estimate (required when the model "
              "has no queued job)"),
        _REASON, _FOR_MODEL)),
    Action("stop_worker", StopWorker, (
        Field("worker_id", "id", True, "an idle worker (READY, no job running), not pinned"),
        _REASON, _FOR_MODEL)),
    Action("wait", Wait, (
        Field("job_id", "id", True, "the first waiting job (its waiting_reason becomes "
              "`reason`)"),
        Field("reason", "text", False, f'shown to the job\'s client; default "{DEFAULT_REASON}"'),
        Field("model_ref", "id", False, "default: the job's model"),
        Field("jobs", "int", False, "how many jobs wait with it; default 1"),
        Field("wake_at", "num", False, "epoch seconds at which the loop should look again "
              "(Wait.until; `until` is a Lua keyword); default 0 = no timer", attr="until"))),
    Action("preload", Preload, (
        Field("pool_id", "id", True, "an available pool"),
        Field("model_ref", "id", True, "the model whose files to keep in RAM"),
        _REASON)),
    Action("evict_model", EvictModel, (
        Field("pool_id", "id", True, "an available pool"),
        Field("model_ref", "id", True, "a model not pinned on that pool"),
        _REASON)),
)}
_ACTION_OF = {a.cls: a for a in ACTIONS.values()}


def encode_decisions(decisions: list[Decision]) -> list:
    """Decisions as the flat list the Lua side decodes: per decision its action, then each
    field in ACTIONS order (false when absent; ids as a count followed by the ids)."""
    flat: list = []
    add = flat.append
    stops: list[int] = []  # indexes of for_model slots of StopWorkers awaiting their Wait
    for d in decisions:
        a = _ACTION_OF[type(d)]
        add(a.name)
        for f in a.fields:
            if f.name == "for_model":
                if isinstance(d, StartWorker):
                    add(d.model_ref)
                else:
                    stops.append(len(flat))
                    add(False)
            elif f.kind == "ids":
                ids = getattr(d, f.name)
                add(len(ids))
                flat.extend(ids)
            else:
                add(getattr(d, f.attr or f.name))
        if isinstance(d, Wait) and stops:
            for i in stops:
                flat[i] = d.model_ref
            stops.clear()
    return flat


def _invalid(i: int, action: str, msg: str) -> PolicyError:
    return PolicyError(PolicyProblem(INVALID, f"decision {i} ({action}): {msg}"))


def _value(i: int, a: Action, f: Field, v):
    """A field's value checked (the Lua side checked its Lua type)."""
    if f.kind == "id":
        if not v or len(v) > 1024:
            raise _invalid(i, a.name, f"field '{f.name}' must be a non-empty string of at "
                                      "most 1024 characters")
    elif f.kind == "text":
        return v[:MAX_REASON_CHARS]
    elif f.kind == "int":
        if not (0 <= v < 1 << 62) or v != int(v):
            raise _invalid(i, a.name, f"field '{f.name}' must be an integer >= 0, got {v!r}")
        return int(v)
    elif f.kind == "num":
        if not math.isfinite(v):
            raise _invalid(i, a.name, f"field '{f.name}' must be a finite number, got {v!r}")
        return float(v)
    return v


def decode_decisions(flat: tuple, snap: Snapshot) -> list[Decision]:
    """The flat values the Lua side returned (shape and Lua types checked there) as
    Decision dataclasses: values checked, defaults filled in."""
    out: list[Decision] = []
    i, n = 0, len(flat)
    heads: dict[str, JobView] | None = None
    while i < n:
        a = ACTIONS[flat[i]]
        i += 1
        k = len(out) + 1
        vals: dict[str, Any] = {}
        for f in a.fields:
            v = flat[i]
            i += 1
            if f.kind == "ids":
                ids = flat[i:i + v]
                i += v
                if not ids or len(set(ids)) != len(ids) or not all(0 < len(d) <= 1024 for d in ids):
                    raise _invalid(k, a.name, f"field '{f.name}' must hold 1 to 64 distinct "
                                              "non-empty device ids")
                vals[f.name] = ids
            elif v is not False:
                vals[f.name] = _value(k, a, f, v)
        reason = vals.get("reason", DEFAULT_REASON)
        if a.cls is Dispatch:
            out.append(Dispatch(vals["job_id"], vals["worker_id"], reason))
        elif a.cls is StartWorker:
            mem = vals.get("memory_estimate")
            if mem is None:
                hs = snap.queued.get(vals["model_ref"])
                if not hs:
                    raise _invalid(k, a.name, f"memory_estimate is required for "
                                              f"{vals['model_ref']}, which has no queued job")
                mem = hs[0].memory_estimate
            out.append(StartWorker(vals["model_ref"], vals["pool_id"], vals["device_ids"], mem,
                                   reason))
        elif a.cls is StopWorker:
            out.append(StopWorker(vals["worker_id"], reason))
        elif a.cls is Wait:
            model = vals.get("model_ref")
            if model is None:
                if heads is None:
                    heads = _jobs_by_id(snap)
                job = heads.get(vals["job_id"])
                model = job.model_ref if job is not None else ""
            out.append(Wait(vals["job_id"], reason, model, vals.get("jobs", 1),
                            vals.get("wake_at", 0.0)))
        else:
            out.append(a.cls(vals["pool_id"], vals["model_ref"], reason))
    return out


def _jobs_by_id(snap: Snapshot) -> dict[str, JobView]:
    jobs = {j.job_id: j for js in snap.queued.values() for j in js}
    for j in snap.next_retry.values():
        jobs.setdefault(j.job_id, j)
    return jobs


def decision_fields(d: Decision, rejected: str = "") -> dict[str, Any]:
    """A decision as the fields of the admin API's Decision message (dry runs, facts)."""
    a = _ACTION_OF[type(d)]
    out: dict[str, Any] = {"action": a.name, "reason": d.reason}
    for name in ("job_id", "worker_id", "pool_id", "model_ref"):
        v = getattr(d, name, None)
        if v:
            out[name] = v
    if isinstance(d, StartWorker):
        out["device_ids"] = list(d.device_ids)
    if rejected:
        out["rejected"] = rejected
    return out


