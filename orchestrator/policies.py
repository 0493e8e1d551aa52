"""The active scheduler policy and its stored versions (policy_versions, revision 0004).

    await policies.load(orch)        # at start: the store's active version, then the config's
    await policies.activate(orch, source=..., author=...)   # or version=N, or builtin=True
    policies.report_problem(orch, problem)                  # from the decision loop

`orch.policy` is None (the built-in scheduler) or a compiled LuaPolicy
(orchestrator/lua_policy.py). Versions are kept in the store; an orchestrator without a
store keeps them in memory (lost on restart). In platform mode only the built-in runs:
no Lua policy is ever loaded, and activation is refused with POLICY_FORBIDDEN.

A policy that fails in a cycle is replaced by the built-in for that cycle (the loop
calls decide_with_fallback); the failure is a POLICY_FAILED fact, published when the
problem changes and otherwise at most once per REPORT_EVERY_S, not once per cycle.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from common.errors import OrchError
from llama_orch.v1 import events_pb2 as F
from orchestrator.lua_policy import LuaPolicy, PolicyError, PolicyProblem
from orchestrator.store.store import PolicyVersionRow

if TYPE_CHECKING:
    from orchestrator.core import Orchestrator

REPORT_EVERY_S = 10.0
CONFIG_AUTHOR = "config"
BUILTIN = PolicyVersionRow(0, "builtin", "", 0.0, "", True)


@dataclass
class PolicyState:
    """What the orchestrator knows of its policies beyond `orch.policy`."""

    active: PolicyVersionRow = BUILTIN
    memory: list[PolicyVersionRow] = field(default_factory=list)  # without a store
    last_problem: PolicyProblem | None = None
    last_reported: float = float("-inf")
    suppressed: int = 0


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def state_of(orch: Orchestrator) -> PolicyState:
    found = _STATES.get(orch)
    if found is None:
        found = _STATES[orch] = PolicyState()
    return found


def editable(orch: Orchestrator) -> bool:
    return orch.cfg.mode != "platform"


def problem_text(p: PolicyProblem) -> str:
    return f"{p.code}: {p.message}" + (f" (line {p.line})" if p.line else "")


def compile_policy(source: str) -> LuaPolicy:
    """A compiled policy, or OrchError POLICY_INVALID naming the problem and its line."""
    try:
        return LuaPolicy(source)
    except PolicyError as e:
        raise OrchError("POLICY_INVALID", problem_text(e.problem), param="source") from None


# ---- versions -----------------------------------------------------------------------------

async def list_versions(orch: Orchestrator) -> list[PolicyVersionRow]:
    if orch.store is not None:
        return await orch.store.list_policy_versions()
    return list(state_of(orch).memory)


async def _add(orch: Orchestrator, language: str, source: str, author: str) -> PolicyVersionRow:
    if orch.store is not None:
        return await orch.store.add_policy_version(language, source, author)
    st = state_of(orch)
    row = PolicyVersionRow(len(st.memory) + 1, language, source, time.time(), author, True)
    st.memory = [_with_active(r, False) for r in st.memory] + [row]
    return row


async def _activate(orch: Orchestrator, version: int) -> PolicyVersionRow | None:
    if orch.store is not None:
        return await orch.store.activate_policy_version(version)
    st = state_of(orch)
    if version and not any(r.version == version for r in st.memory):
        return None
    st.memory = [_with_active(r, r.version == version) for r in st.memory]
    return next((r for r in st.memory if r.version == version), None)


async def _get(orch: Orchestrator, version: int) -> PolicyVersionRow | None:
    return next((r for r in await list_versions(orch) if r.version == version), None)


def _with_active(r: PolicyVersionRow, active: bool) -> PolicyVersionRow:
    return PolicyVersionRow(r.version, r.language, r.source, r.created_at, r.author, active)


def _install(orch: Orchestrator, row: PolicyVersionRow | None, policy: LuaPolicy | None) -> None:
    st = state_of(orch)
    orch.policy = policy
    st.active = row if row is not None and row.language == "lua" else BUILTIN
    st.last_problem, st.last_reported, st.suppressed = None, float("-inf"), 0
    orch.wake()


# ---- loading and activating ------------------------------------------------------------

async def load(orch: Orchestrator) -> None:
    """At start: the store's active version; then cfg.scheduler.policy (a Lua file) if it
    differs from it, stored as a new active version by "config". Platform mode: built-in."""
    if not editable(orch):
        _install(orch, None, None)
        return
    active = None
    if orch.store is not None:
        active = await orch.store.active_policy_version()
    else:
        active = next((r for r in state_of(orch).memory if r.active), None)
    configured = orch.cfg.scheduler.policy
    if configured and configured != "builtin":
        try:
            source = Path(configured).expanduser().read_text()
        except OSError as exc:
            raise OrchError("POLICY_INVALID", f"scheduler.policy {configured!r} cannot be "
                            f"read: {exc}", param="scheduler.policy") from None
        if active is None or active.language != "lua" or active.source != source:
            policy = compile_policy(source)  # a broken configured policy refuses the start
            row = await _add(orch, "lua", source, CONFIG_AUTHOR)
            _install(orch, row, policy)
            _changed(orch, row)
            return
    if active is None or active.language != "lua":
        _install(orch, None, None)
        return
    try:
        policy = LuaPolicy(active.source)
    except PolicyError as e:  # it compiled when activated: run the built-in, say why
        _install(orch, None, None)
        orch.facts.publish(F.FACT_KIND_POLICY_FAILED, f"stored policy version {active.version} "
                           f"does not compile; running the built-in: {problem_text(e.problem)}",
                           level=F.FACT_LEVEL_ERROR, version=active.version,
                           problem=e.problem.code, line=e.problem.line)
        return
    _install(orch, active, policy)


async def activate(orch: Orchestrator, *, source: str = "", version: int = 0,
                   builtin: bool = False, author: str = "") -> PolicyVersionRow:
    """Make a new source, an earlier version, or the built-in the active policy; the
    active version (BUILTIN for the built-in). Validated before anything is stored."""
    if not editable(orch):
        raise OrchError("POLICY_FORBIDDEN", "only the built-in scheduler policy runs in "
                        "platform mode")
    if sum(map(bool, (source, version, builtin))) != 1:
        raise OrchError("INVALID_ARGUMENT", "give exactly one of source, version or builtin",
                        param="source")
    if builtin:
        await _activate(orch, 0)
        _install(orch, None, None)
        _changed(orch, BUILTIN)
        return BUILTIN
    if version:
        row = await _get(orch, version)
        if row is None:
            raise OrchError("NOT_FOUND", f"no policy version {version}", param="version")
        policy = compile_policy(row.source) if row.language == "lua" else None
        row = await _activate(orch, version)
    else:
        policy = compile_policy(source)
        row = await _add(orch, "lua", source, author or "local")
    _install(orch, row, policy)
    _changed(orch, state_of(orch).active)
    return state_of(orch).active


def _changed(orch: Orchestrator, row: PolicyVersionRow) -> None:
    what = "the built-in policy" if row.language == "builtin" else f"policy version {row.version}"
    orch.facts.publish(F.FACT_KIND_POLICY_CHANGED, f"{what} is active", version=row.version,
                       language=row.language, author=row.author)


# ---- failures in the loop ----------------------------------------------------------------

def report_problem(orch: Orchestrator, problem: PolicyProblem | None) -> None:
    """A cycle's policy problem (None: the policy decided): a POLICY_FAILED fact when it
    differs from the last one, else at most once per REPORT_EVERY_S."""
    if problem is None:
        return
    st = state_of(orch)
    now = time.monotonic()
    if problem == st.last_problem and now - st.last_reported < REPORT_EVERY_S:
        st.suppressed += 1
        return
    orch.facts.publish(F.FACT_KIND_POLICY_FAILED, f"policy version {st.active.version} failed; "
                       f"the built-in decided this cycle: {problem_text(problem)}",
                       level=F.FACT_LEVEL_ERROR, version=st.active.version, problem=problem.code,
                       line=problem.line, repeated=st.suppressed)
    st.last_problem, st.last_reported, st.suppressed = problem, now, 0
