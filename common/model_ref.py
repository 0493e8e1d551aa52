"""Model references: which weights a worker loads, written as one string.

    hf:OWNER/NAME                   the whole snapshot of the `main` branch
    hf:OWNER/NAME@REV               a branch, tag (refs/pr/1 too) or 40-hex commit
    hf:OWNER/NAME@REV::file=PATH    one file of that snapshot (e.g. a .gguf)
    file:/abs/folder                a folder on the pool's disk, used in place

`parse` is the only way in. It refuses anything it could not round-trip or that could
name a path outside the repo, so `str(ref)` (the canonical form, `@main` spelled out)
can key caches, logs and facts. Aliases ("llama-3-8b") are resolved by the
orchestrator and never reach this module. Every refusal is
InvalidInput(INVALID_MODEL_REF, param="model_ref").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import NoReturn

from common.errors import InvalidInput

COMMIT = re.compile(r"[0-9a-f]{40}")
DEFAULT_REVISION = "main"
MAX_REF_CHARS = 4096

_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?")  # ends like the Hub's \b
# Whitespace, control characters and what `git check-ref-format` forbids in a ref name.
_BAD_REVISION = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|^/|/$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ModelRef:
    """A parsed, validated ref. Fields not used by a kind are empty."""

    kind: str  # "hf" | "file"
    repo: str = ""  # hf: "owner/name"
    revision: str = ""  # hf: branch, tag or commit
    file: str = ""  # hf: one path in the repo; "" = the whole snapshot
    path: str = ""  # file: an absolute folder

    @property
    def canonical(self) -> str:
        if self.kind == "file":
            return f"file:{self.path}"
        return f"hf:{self.repo}@{self.revision}" + (f"::file={self.file}" if self.file else "")

    def __str__(self) -> str:
        return self.canonical

    @property
    def is_pinned(self) -> bool:
        """Whether the ref names fixed bytes: a commit, or a local folder (taken as is)."""
        return self.kind == "file" or bool(COMMIT.fullmatch(self.revision))

    def pinned(self, commit: str) -> ModelRef:
        """The same selection at `commit` (40 lowercase hex), e.g. what a branch resolved to."""
        if self.kind != "hf":
            raise ValueError(f"{self} has no revision to pin")
        if not COMMIT.fullmatch(commit):
            raise ValueError(f"{commit!r} is not a 40-hex commit")
        return replace(self, revision=commit)


def parse(ref: str) -> ModelRef:
    """Parse and validate a ref; raises InvalidInput(INVALID_MODEL_REF) naming the problem."""
    if not isinstance(ref, str) or not ref:
        _refuse(ref, "is empty")
    if len(ref) > MAX_REF_CHARS:
        _refuse(ref, f"is longer than {MAX_REF_CHARS} characters")
    scheme, sep, rest = ref.partition(":")
    if sep and scheme == "hf":
        return _parse_hf(ref, rest)
    if sep and scheme == "file":
        return _parse_file(ref, rest)
    _refuse(ref, "has an unknown scheme; use hf:owner/name[@rev][::file=path] or file:/abs/path")


def check_repo_path(ref: str, path: str) -> str:
    """A path inside a repo: relative, '/'-separated, no '.'/'..'/empty segments, no
    backslash or control character. Also applied to file names a Hub sends back."""
    if not path:
        _refuse(ref, "names an empty file path")
    if _CONTROL.search(path) or "\\" in path:
        _refuse(ref, "has a file path with a control character or backslash")
    if path.startswith("/"):
        _refuse(ref, f"has an absolute file path {path!r}; paths are relative to the repo")
    if any(seg in ("", ".", "..") for seg in path.split("/")):
        _refuse(ref, f"has a file path {path!r} with an empty, '.' or '..' segment")
    return path


def _parse_hf(ref: str, rest: str) -> ModelRef:
    body, *opts = rest.split("::")
    options: dict[str, str] = {}
    for opt in opts:
        key, eq, value = opt.partition("=")
        if key != "file" or not eq:
            _refuse(ref, f"has an unknown option {opt!r}; the only option is ::file=path")
        if key in options:
            _refuse(ref, f"gives ::{key}= twice")
        options[key] = value
    repo, at, revision = body.partition("@")
    _check_repo(ref, repo)
    if at:
        _check_revision(ref, revision)
    file = check_repo_path(ref, options["file"]) if "file" in options else ""
    return ModelRef("hf", repo=repo, revision=revision if at else DEFAULT_REVISION, file=file)


def _check_repo(ref: str, repo: str) -> None:
    owner, slash, name = repo.partition("/")
    if not repo:
        _refuse(ref, "has an empty repo id")
    if not slash or "/" in name or not owner or not name:
        _refuse(ref, f"has repo id {repo!r}; it must be exactly owner/name")
    if len(repo) > 96:
        _refuse(ref, "has a repo id longer than 96 characters")
    if not (_NAME.fullmatch(owner) and _NAME.fullmatch(name)):
        _refuse(ref, f"has repo id {repo!r}; owner and name use A-Z a-z 0-9 . _ - and "
                     "start and end with a letter or digit")
    if "--" in repo or ".." in repo or repo.endswith(".git"):
        _refuse(ref, f"has repo id {repo!r} with '--', '..' or a .git ending")


def _check_revision(ref: str, revision: str) -> None:
    if not revision:
        _refuse(ref, "has an empty revision after '@'")
    if len(revision) > 255:
        _refuse(ref, "has a revision longer than 255 characters")
    if _BAD_REVISION.search(revision):
        _refuse(ref, "has a revision with whitespace, a control character, '..' or a "
                     "character git forbids in ref names")


def _parse_file(ref: str, rest: str) -> ModelRef:
    # file:///abs is the URL spelling of file:/abs (the worker accepts it too).
    path = rest[2:] if rest.startswith("///") else rest
    if not path:
        _refuse(ref, "has an empty path")
    if path.startswith("//"):
        _refuse(ref, "names a host; file: refs are folders on the pool's own disk")
    if not path.startswith("/"):
        _refuse(ref, f"has a relative path {path!r}; file: refs need an absolute path")
    if _CONTROL.search(path):
        _refuse(ref, "has a path with a control character")
    if "::" in path:
        _refuse(ref, "has ::options; they apply only to hf: refs")
    if ".." in path.split("/"):
        _refuse(ref, f"has a path {path!r} with a '..' segment")
    return ModelRef("file", path=path)


def _refuse(ref: object, why: str) -> NoReturn:
    shown = repr(ref) if not isinstance(ref, str) or len(ref) <= 120 else repr(ref[:120] + "...")
    raise InvalidInput("INVALID_MODEL_REF", f"model ref {shown} {why}", param="model_ref")
