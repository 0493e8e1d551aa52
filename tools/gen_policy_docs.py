#!/usr/bin/env python3
"""Generate the reference parts of docs/POLICY.md from the code, so they cannot drift.

    python tools/gen_policy_docs.py           # rewrite docs/POLICY.md in place
    python tools/gen_policy_docs.py --check   # exit 1 (and say so) when it is stale

Between `<!-- policy-reference:start -->` and `<!-- policy-reference:end -->`: the
snapshot view a Lua policy reads (every Snapshot field with its Lua type and the
comment it carries in orchestrator/snapshot.py), the snapshot's functions and the
policy's globals, every record type with its fields, the decision tables
(orchestrator.lua_policy.ACTIONS), the problem codes and the sandbox's limits
(orchestrator/lua_sandbox.py). Between `<!-- policy-example:NAME:start -->` and its end
marker: examples/policies/NAME.lua as it is. Everything outside the markers is
hand-written and left alone. tests/orchestrator/test_lua_policy.py::
test_policy_docs_are_fresh fails when the file differs from what this script writes.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import re
import sys
import tokenize
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator import lua_sandbox  # noqa: E402
from orchestrator.lua_policy import (ACTIONS, DEFAULT_REASON, FUNCTIONS, GLOBALS,  # noqa: E402
                                     MAX_DECISIONS, PROBLEM_CODES, kind_name, lua_type,
                                     record_fields, snapshot_fields)
from orchestrator.snapshot import Snapshot  # noqa: E402

DOC = ROOT / "docs" / "POLICY.md"
EXAMPLES = ROOT / "examples" / "policies"
REFERENCE = ("<!-- policy-reference:start -->", "<!-- policy-reference:end -->")
KINDS = {"id": "string (non-empty)", "ids": "array of strings", "text": "string",
         "int": "integer >= 0", "num": "number"}


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"-{3,}", " ", text)).strip()


def _cell(text: str) -> str:
    return _flat(text).replace("|", "\\|")


def field_comments(cls: type) -> dict[str, str]:
    """The comments of a dataclass's fields in its source: the one on the field's line,
    continuation lines below it (`#   ...`), and a comment block right above it."""
    source = Path(inspect.getsourcefile(cls)).read_text()
    comments = {tok.start[0]: tok.string for tok in tokenize.generate_tokens(
        io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    lines = source.splitlines()
    node = next(n for n in ast.walk(ast.parse(source))
                if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    fields = [(b.target.id, b.lineno, b.end_lineno) for b in node.body
              if isinstance(b, ast.AnnAssign) and isinstance(b.target, ast.Name)]
    out: dict[str, list[str]] = {name: [] for name, _, _ in fields}
    leading: list[str] = []
    for i, (name, first, last) in enumerate(fields):
        out[name] = leading + ([comments[last][1:]] if last in comments else [])
        leading = []
        stop = fields[i + 1][1] if i + 1 < len(fields) else node.end_lineno + 1
        continuing = True
        for ln in range(last + 1, stop):
            text = lines[ln - 1].strip()
            if not text.startswith("#"):
                break
            if continuing and text.startswith("#   "):
                out[name].append(text[1:])
            else:
                continuing = False
                leading.append(text[1:])
    return {name: _flat(" ".join(parts)) for name, parts in out.items()}


def _doc(obj) -> str:
    return _flat((inspect.getdoc(obj) or "").split("\n\n")[0])


def records() -> list[type]:
    """Every dataclass the snapshot view holds, in order of first appearance."""
    seen: list[type] = []

    def walk(hint):
        if dataclasses.is_dataclass(hint):
            if hint not in seen:
                seen.append(hint)
                for _, h, _ in record_fields(hint):
                    walk(h)
            return
        for arg in typing.get_args(hint):
            walk(arg)
    for _, hint in snapshot_fields():
        walk(hint)
    return seen


def _snapshot_section() -> list[str]:
    notes = field_comments(Snapshot)
    out = ["### The snapshot", "",
           "`decide(snapshot)` receives a read-only view of the cycle's `Snapshot` "
           "(orchestrator/snapshot.py). Its class contract:", "",
           "> " + _flat(inspect.getdoc(Snapshot) or ""), "",
           "| field | Lua type | meaning |", "|---|---|---|"]
    for name, hint in snapshot_fields():
        out.append(f"| `{name}` | {_cell(lua_type(hint, name))} | {_cell(notes.get(name, ''))} |")
    out += ["", "Functions of the snapshot (`snapshot.f(x)` and `snapshot:f(x)` both work):", "",
            "| function | what it returns |", "|---|---|"]
    for name, text in FUNCTIONS.items():
        signature, _, what = text.partition(": ")
        out.append(f"| `{signature}` | {_cell(what)} |")
    out += ["", "Globals a policy has besides the standard ones listed under the sandbox:", "",
            "| name | what it is |", "|---|---|"]
    for name, text in GLOBALS.items():
        out.append(f"| `{name}` | {_cell(text)} |")
    return out


def _records_section() -> list[str]:
    out = ["### Records", "",
           "Each record is a read-only table with the fields of the dataclass of the same "
           "name (and its properties), in this order (`pairs` walks them so).", ""]
    for cls in records():
        notes = field_comments(cls)
        out += [f"#### `{cls.__name__}`", ""]
        if _doc(cls) and not _doc(cls).startswith(cls.__name__ + "("):
            out += [_doc(cls), ""]
        out += ["| field | Lua type | meaning |", "|---|---|---|"]
        for name, hint, is_property in record_fields(cls):
            note = _doc(getattr(cls, name)) if is_property else notes.get(name, "")
            out.append(f"| `{name}` | {_cell(lua_type(hint))} | {_cell(note)} |")
        if cls.__name__.endswith("Advice"):
            out.append(f'| `kind` | string | `"{kind_name(cls)}"` |')
        out.append("")
    return out


def _decisions_section() -> list[str]:
    out = ["### Decisions", "",
           f"`decide` returns an array (at most {MAX_DECISIONS:,}) of tables, each with "
           "`action` and the fields below; unknown fields, missing required ones and wrong "
           "types make the whole result invalid (POLICY_INVALID: the built-in decides that "
           "cycle). Arrays of the view (a worker's `device_ids`) may be used as values. "
           f'`reason` defaults to "{DEFAULT_REASON}". Each maps to the dataclass of '
           "orchestrator/snapshot.py the built-in returns, and goes through the same "
           "validator.", ""]
    for a in ACTIONS.values():
        out += [f"#### `{a.name}` -> `{a.cls.__name__}`", "", _doc(a.cls), "",
                "| field | type | required | meaning |", "|---|---|---|---|"]
        for f in a.fields:
            out.append(f"| `{f.name}` | {KINDS[f.kind]} | {'yes' if f.required else 'no'} | "
                       f"{_cell(f.doc)} |")
        out.append("")
    return out


def _problems_section() -> list[str]:
    out = ["### Problems", "",
           "Why a policy's decisions were not used (a cycle falls back to the built-in; "
           "Validate and Dry-run list them). On the admin API they travel as ErrorCode "
           "POLICY_INVALID with this code in the message.", "",
           "| code | meaning |", "|---|---|"]
    for code, text in PROBLEM_CODES.items():
        out.append(f"| `{code}` | {_cell(text)} |")
    return out + [""]


def _sandbox_section() -> list[str]:
    doc = inspect.getdoc(lua_sandbox) or ""
    body = doc.split("\n\n", 1)[1] if "\n\n" in doc else doc
    return ["### The sandbox", "", "From orchestrator/lua_sandbox.py:", "", "```text", body,
            "```", "",
            "| limit | default |", "|---|---|",
            f"| `instruction_limit` (per call) | {lua_sandbox.DEFAULT_INSTRUCTIONS:,} |",
            f"| `memory_limit_bytes` (per call) | {lua_sandbox.DEFAULT_MEMORY:,} |",
            f"| `time_budget_s` (per call) | {lua_sandbox.DEFAULT_TIME_S} |",
            f"| hook interval, at most (VM instructions) | {lua_sandbox.HOOK_EVERY:,} |",
            f"| pattern matcher steps per call (estimate) | {lua_sandbox.MAX_MATCH_STEPS:,} |",
            f"| elements per table.sort | {lua_sandbox.MAX_SORT:,} |",
            f"| elements per table.move / unpack / concat | {lua_sandbox.MAX_ELEMENTS:,} |",
            f"| print() lines kept per call | {lua_sandbox.MAX_OUTPUT_LINES} |",
            f"| source size | {lua_sandbox.MAX_SOURCE_BYTES:,} bytes |", ""]


def reference() -> str:
    lines = [REFERENCE[0],
             "<!-- generated by tools/gen_policy_docs.py from the code: do not edit here -->",
             "", "## Reference", ""]
    for part in (_snapshot_section(), [""], _records_section(), _decisions_section(),
                 _problems_section(), _sandbox_section()):
        lines += part
    while lines[-1] == "":
        lines.pop()
    return "\n".join(lines + [REFERENCE[1]])


def _replace(text: str, start: str, end: str, new: str) -> str:
    if start not in text or end not in text:
        return text.rstrip() + "\n\n" + new + "\n"
    return text[:text.index(start)] + new + text[text.index(end) + len(end):]


def render(text: str) -> str:
    """`text` (the current docs/POLICY.md) with every generated part brought up to date."""
    text = _replace(text, *REFERENCE, reference())
    for path in sorted(EXAMPLES.glob("*.lua")):
        start, end = (f"<!-- policy-example:{path.stem}:start -->",
                      f"<!-- policy-example:{path.stem}:end -->")
        if start in text:
            text = _replace(text, start, end, "\n".join(
                [start, f"```lua\n-- examples/policies/{path.name}",
                 path.read_text().rstrip(), "```", end]))
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when docs/POLICY.md is stale")
    ns = parser.parse_args()
    old = DOC.read_text() if DOC.exists() else "# Scheduling policies in Lua\n"
    new = render(old)
    if ns.check:
        if new != old:
            sys.exit("docs/POLICY.md is out of date: run python tools/gen_policy_docs.py")
        return
    DOC.write_text(new)


if __name__ == "__main__":
    main()
