"""The pool manager's disk cache of models, with a size budget and LRU eviction.

    cache = ModelCache(root, budget_bytes=100 << 30)
    model = await cache.ensure("hf:org/repo@main", progress=lambda done, total: ...)
    cache.acquire(model.pinned_ref)   # a worker runs it: never evicted until release()
    # start the worker with --model-dir model.path

Layout: `root/hub/` is huggingface_hub's own cache (blobs named by checksum, a
snapshots/<commit>/ folder of links to them), so its locking, in-call resume (Range) and
atomic moves are reused unchanged. `root/index.json` is ours: every model we fetched,
keyed by its ref pinned to a commit, with its files (blob, size), least recently used
first; and which commit each branch/tag ref last resolved to.

Contract:
- A pinned, recorded ref is served with no request; a branch or tag costs one revision
  lookup (if the Hub is unreachable, its last recorded commit is served). Bytes already
  on disk are never fetched again.
- Every file is checked against the Hub's checksum (sha256 for LFS files, the git blob
  id otherwise) before it is recorded; one that fails is deleted, never served.
- The budget counts distinct blobs (models sharing a file pay once). Before downloading,
  least recently used models not in use are evicted until the new one fits; if it cannot
  fit even then, nothing is evicted or downloaded (CACHE_BUDGET_EXCEEDED).
- Every folder handed out, and everything in it, resolves inside root.
- One writer: the index changes only under a file lock on root, in the cache's own
  thread. Cache work waiting for it queues there, never in the default executor, which
  heartbeats need (a download can take hours). The in-use set is this process's;
  processes sharing a root do not see each other's.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import httpx2
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub import errors as hf_errors
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import WeakFileLock

from common import log
from common.errors import InvalidInput, OrchError
from common.model_ref import COMMIT, ModelRef, check_repo_path, parse

Progress = Callable[[int, int], None]  # (bytes done, bytes total); called from a thread
_API_TIMEOUT_S = 30
_BLOB = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # a git blob id or an LFS sha256


@dataclass(frozen=True)
class CachedModel:
    ref: str  # canonical, as asked
    pinned_ref: str  # at resolved_revision; equals ref for file:
    path: Path  # the folder to load (a ::file= selection is `files[0]` inside it)
    resolved_revision: str  # 40-hex commit; "" for file:
    size_bytes: int
    files: tuple[str, ...] = ()  # repo paths of the selection, relative to path


@dataclass(frozen=True)
class CacheEntry:
    ref: str  # pinned
    commit: str
    size_bytes: int
    last_used: float  # unix time


class ModelCache:
    def __init__(self, root: Path | str, budget_bytes: int = 0, endpoint: str | None = None):
        self.root = Path(root).expanduser().resolve()  # containment checks compare realpaths
        self.budget = budget_bytes  # 0 = no budget
        # huggingface_hub reads HF_ENDPOINT once at import; we read it per cache and pass it.
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT")
                         or "https://huggingface.co").rstrip("/")
        self._hub = self.root / "hub"
        self._in_use: Counter[str] = Counter()
        # One thread: locked work is serial anyway, and waiting for it must hold no
        # thread of the default executor.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-cache")

    def acquire(self, ref: str) -> None:
        """Mark in use (counted). Pass the pinned ref: a branch ref protects only what the
        branch resolves to now."""
        self._in_use[parse(ref).canonical] += 1

    def release(self, ref: str) -> None:
        """Undo one acquire; safe without one."""
        key = parse(ref).canonical
        self._in_use[key] -= 1
        if self._in_use[key] <= 0:
            del self._in_use[key]

    def entries(self) -> list[CacheEntry]:
        """What is cached, least recently used first."""
        return [CacheEntry(k, e["commit"], _size(e), e["last_used"])
                for k, e in self._read()["models"].items()]

    async def evict(self, ref: str) -> bool:
        """Remove a model's files; False if it was not cached. MODEL_PINNED if in use."""
        return await self._in_writer(self._evict, parse(ref))

    async def ensure(self, ref: str, progress: Progress | None = None) -> CachedModel:
        """The model on local disk, fetched if needed; see the module contract."""
        r = parse(ref)
        if r.kind == "file":
            return await asyncio.to_thread(_local, r, progress)
        return await self._in_writer(self._ensure, r, progress)

    async def _in_writer(self, fn, *args):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, functools.partial(self._locked, fn, *args))

    def _locked(self, fn, *args):
        self._hub.mkdir(parents=True, exist_ok=True)
        with WeakFileLock(self.root / ".lock"):
            return fn(*args)

    def _ensure(self, r: ModelRef, progress: Progress | None) -> CachedModel:
        index = self._read()
        if r.is_pinned and self._present(index, r.canonical):
            return self._serve(index, r, r.canonical, progress)
        try:
            # One call gives the commit and every file's size and checksum: the budget is
            # settled before any byte moves. (huggingface_hub's own client has no timeout.)
            info = self._call(r, HfApi(endpoint=self.endpoint).model_info, r.repo,
                              revision=r.revision, files_metadata=True, timeout=_API_TIMEOUT_S)
        except OrchError as err:
            last = index["refs"].get(r.canonical, "")
            if err.code != "DOWNLOAD_FAILED" or not self._present(index, last):
                raise
            log.emit("pool_manager", "model.stale_revision", f"{r}: serving {last}: {err.message}",
                     level="warning")
            return self._serve(index, r, last, progress)
        if not COMMIT.fullmatch(info.sha or ""):
            raise OrchError("DOWNLOAD_FAILED", f"{r}: {self.endpoint} named no commit")
        key = r.pinned(info.sha).canonical
        if not self._present(index, key):
            files = self._files(r, info)
            self._make_room(index, r, key, files)
            self._download(index, r, info.sha, files, progress)
            index["models"][key] = {"repo": r.repo, "commit": info.sha, "last_used": 0,
                                    "files": {p: [b, n] for p, b, n in files}}
        return self._serve(index, r, key, progress)

    def _serve(self, index: dict, r: ModelRef, key: str, progress: Progress | None) -> CachedModel:
        entry = index["models"].pop(key)
        folder = self._storage(entry["repo"]) / "snapshots" / entry["commit"]
        self._check_inside(key, folder)
        entry["last_used"] = time.time()
        index["models"][key] = entry  # re-inserted last: dict order is the LRU order
        if not r.is_pinned:
            index["refs"][r.canonical] = key
        self._write(index)
        if progress:
            progress(_size(entry), _size(entry))
        return CachedModel(r.canonical, key, folder, entry["commit"], _size(entry),
                           tuple(entry["files"]))

    def _files(self, r: ModelRef, info) -> list[tuple[str, str, int]]:
        """(path, blob, size) of the selection, from the revision's file metadata."""
        siblings = [s for s in info.siblings or [] if not r.file or s.rfilename == r.file]
        if not siblings:
            raise InvalidInput("MODEL_NOT_FOUND", f"{r}: no {r.file or 'files'} in {r.repo} "
                               f"at {info.sha}", param="model_ref")
        files = []
        for s in siblings:
            check_repo_path(r.canonical, s.rfilename)  # the Hub's names are input too
            blob, size = (s.lfs.sha256, s.lfs.size) if s.lfs else (s.blob_id, s.size)
            if not isinstance(size, int) or not _BLOB.fullmatch(str(blob)):
                raise OrchError("DOWNLOAD_FAILED", f"{r}: {self.endpoint} gave no size and "
                                f"checksum for {s.rfilename}")
            files.append((s.rfilename, blob, size))
        return files

    def _make_room(self, index: dict, r: ModelRef, key: str, files: list) -> None:
        if not self.budget:
            return
        need = {(r.repo, b): n for _, b, n in files}
        models = index["models"]
        busy = self._busy(index) & models.keys()
        held = _blob_bytes(models, busy, need)
        if held > self.budget:
            why = (f"is {sum(need.values())} bytes" if sum(need.values()) > self.budget
                   else f"needs {held} bytes with the models in use")
            raise OrchError("CACHE_BUDGET_EXCEEDED", f"{r} {why}; the cache budget is "
                            f"{self.budget} bytes", param="model_ref")
        victims = [k for k in models if k not in busy and k != key]  # LRU first
        while victims and _blob_bytes(models, models.keys(), need) > self.budget:
            victim = victims.pop(0)
            self._remove(index, victim)
            self._write(index)
            log.emit("pool_manager", "model.evicted", f"{victim} evicted for {r}")

    def _download(self, index, r: ModelRef, commit: str, files: list, progress) -> None:
        models = index["models"].values()
        verified = {(e["repo"], b) for e in models for b, _ in e["files"].values()}
        total, done, started = sum(n for _, _, n in files), [0], time.monotonic()

        def report(n: float | None) -> None:
            done[0] += int(n or 0)
            if progress:
                progress(max(0, min(done[0], total)), total)

        for path, blob, size in files:
            before = done[0]
            local = Path(self._call(r, hf_hub_download, r.repo, path, revision=commit,
                                    cache_dir=self._hub, endpoint=self.endpoint,
                                    tqdm_class=_bar(report)))
            report(size - (done[0] - before))  # files already on disk count as done
            if (r.repo, blob) not in verified:
                self._verify(r, path, blob, local)
        log.emit("pool_manager", "model.fetched", f"{r} at {commit}", bytes=total,
                 seconds=round(time.monotonic() - started, 3))

    def _verify(self, r: ModelRef, path: str, blob: str, local: Path) -> None:
        # huggingface_hub checks only the length of what it downloads; the checksum is ours.
        real = Path(os.path.realpath(local))
        self._check_inside(r.canonical, real)
        size = real.stat().st_size
        h = hashlib.sha256() if len(blob) == 64 else hashlib.sha1(b"blob %d\0" % size)
        with open(real, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        if h.hexdigest() != blob:
            real.unlink(missing_ok=True)
            local.unlink(missing_ok=True)
            raise OrchError("CHECKSUM_MISMATCH", f"{r}: {path} does not match its checksum "
                            f"{blob}; the file was deleted", param="model_ref")

    def _evict(self, r: ModelRef) -> bool:
        index = self._read()
        key = r.canonical if r.is_pinned else index["refs"].get(r.canonical, "")
        if key not in index["models"]:
            return False
        if key in self._busy(index):
            raise OrchError("MODEL_PINNED", f"{key} is in use", param="model_ref")
        self._remove(index, key)
        self._write(index)
        return True

    def _remove(self, index: dict, key: str) -> None:
        """Delete a model's links and the blobs no other recorded model uses."""
        entry = index["models"].pop(key)
        index["refs"] = {k: v for k, v in index["refs"].items() if v != key}
        storage = self._storage(entry["repo"])
        others = [e for e in index["models"].values() if e["repo"] == entry["repo"]]
        if not others:
            shutil.rmtree(storage, ignore_errors=True)
            return
        snapshot = storage / "snapshots" / entry["commit"]
        linked = {p for e in others if e["commit"] == entry["commit"] for p in e["files"]}
        for path in entry["files"].keys() - linked:
            (snapshot / path).unlink(missing_ok=True)
        if not linked:
            shutil.rmtree(snapshot, ignore_errors=True)
        kept = {b for e in others for b, _ in e["files"].values()}
        for blob, _ in entry["files"].values():
            if blob not in kept:
                (storage / "blobs" / blob).unlink(missing_ok=True)

    def _busy(self, index: dict) -> set[str]:
        # tuple(): acquire() may run on the event loop's thread while this one reads.
        return {index["refs"].get(k, k) for k in tuple(self._in_use)}

    def _present(self, index: dict, key: str) -> bool:
        """Recorded, with every file still on disk."""
        entry = index["models"].get(key)
        if entry is None:
            return False
        folder = self._storage(entry["repo"]) / "snapshots" / entry["commit"]
        return all((folder / p).exists() for p in entry["files"])

    def _check_inside(self, ref: str, path: Path) -> None:
        """Refuse a path, or anything under it, that resolves outside root (a tampered link)."""
        found = [path] + [Path(d, n) for d, dirs, names in os.walk(path) for n in dirs + names]
        for p in found:
            if not os.path.realpath(p).startswith(str(self.root) + os.sep):
                raise InvalidInput("INVALID_MODEL_REF", f"{ref}: {p} leads outside the cache "
                                   f"{self.root}; refusing to serve it", param="model_ref")

    def _call(self, r: ModelRef, fn, *args, **kwargs):
        """Run a huggingface_hub call, its failures mapped to our stable codes."""
        try:
            return fn(*args, **kwargs)
        except hf_errors.RevisionNotFoundError:
            raise InvalidInput("REVISION_NOT_FOUND", f"{r}: {r.repo} has no revision "
                               f"{r.revision!r}", param="model_ref") from None
        except hf_errors.RepositoryNotFoundError:
            raise InvalidInput("MODEL_NOT_FOUND", f"{r}: no repository {r.repo} at {self.endpoint}"
                               " (or it is private or gated)", param="model_ref") from None
        except hf_errors.RemoteEntryNotFoundError:
            raise InvalidInput("MODEL_NOT_FOUND", f"{r}: a file of {r.repo} vanished on "
                               f"{self.endpoint}", param="model_ref") from None
        except (httpx2.HTTPError, OSError) as exc:  # hub errors are both; OSError: disk, size
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OrchError("DOWNLOAD_FAILED", f"{r}: fetching from {self.endpoint} failed: "
                            f"{first}", param="model_ref") from None

    def _storage(self, repo: str) -> Path:
        return self._hub / repo_folder_name(repo_id=repo, repo_type="model")

    def _read(self) -> dict:
        try:
            index = json.loads((self.root / "index.json").read_text())
            if isinstance(index.get("models"), dict) and isinstance(index.get("refs"), dict):
                return index
        except FileNotFoundError:
            return {"models": {}, "refs": {}}
        except (OSError, ValueError, AttributeError):
            pass
        # Unreadable: start empty. Files on disk are re-checked when next ensured.
        log.emit("pool_manager", "cache.index_corrupt", str(self.root), level="warning")
        return {"models": {}, "refs": {}}

    def _write(self, index: dict) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".index.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(index, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / "index.json")  # readers see the old or the new index


def _local(r: ModelRef, progress: Progress | None) -> CachedModel:
    path = Path(r.path)
    if not path.is_dir():
        raise InvalidInput("INVALID_MODEL_REF", f"{r}: no folder at {r.path}", param="model_ref")
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    if progress:
        progress(size, size)
    return CachedModel(r.canonical, r.canonical, path, "", size)


def _size(entry: dict) -> int:
    return sum(n for _, n in entry["files"].values())


def _blob_bytes(models: dict, keys, need: dict) -> int:
    """Bytes of the distinct blobs of `keys` plus `need` ({(repo, blob): size})."""
    blobs = dict(need)
    for k in keys:
        blobs.update({(models[k]["repo"], b): n for b, n in models[k]["files"].values()})
    return sum(blobs.values())


def _bar(report: Callable[[float | None], None]) -> type:
    """A tqdm stand-in for hf_hub_download's tqdm_class: forwards byte counts to report."""

    class Bar:
        def __init__(self, *args, initial: int = 0, **kwargs) -> None:
            report(initial)  # bytes a resumed download already has

        def __enter__(self) -> Self:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def update(self, n: float | None = 1) -> None:
            report(n)

        def close(self) -> None:
            pass

    return Bar
