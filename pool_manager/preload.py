"""Hot-loading: keep a model's files in RAM (the page cache) so a replacement worker
starts without reading its weights from disk.

`Preloader(budget_bytes)` maps every regular file of a model folder read-only, has the
kernel read it all in, and keeps the maps open while the model stays preloaded; the
sum of preloaded sizes stays within the budget, least recently used models go first.

What "kept" means, honestly: an unprivileged process cannot pin the page cache (mlock
is capped by RLIMIT_MEMLOCK, 8 MiB by default). Mapped pages are only reclaimed after
unmapped ones, so under memory pressure the kernel may still take them back.
`resident_fraction` asks the kernel (mincore) what is really in RAM; nothing here
claims residency it did not measure.

All system calls go through libc with ctypes: ctypes lets go of the GIL during a call,
whereas Python's mmap.madvise holds it while the disk is read, which would stall the
pool manager's event loop for the whole read.
"""

from __future__ import annotations

import asyncio
import ctypes
import mmap
import os
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import OrchError

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
_MAP_FAILED = ctypes.c_void_p(-1).value
_MADV_POPULATE_READ = 22  # Linux >= 5.14; Python 3.11's mmap module lacks the name
_PAGE = mmap.PAGESIZE
_LOW_BIT = bytes(i & 1 for i in range(256))  # mincore: bit 0 = resident, the rest reserved


def _check(ok: bool, what: str, path: Path) -> None:
    if not ok:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", str(path))


class _Map:
    """A read-only shared mapping of one whole (non-empty) file."""

    def __init__(self, path: Path, size: int):
        self.path, self.size = path, size
        self.addr = self._map(mmap.MAP_SHARED)

    def _map(self, flags: int) -> int:
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            addr = _libc.mmap(None, self.size, mmap.PROT_READ, flags, fd, 0)
        finally:
            os.close(fd)  # the mapping keeps the file open
        _check(addr not in (None, _MAP_FAILED), "mmap", self.path)
        return addr

    def populate(self) -> None:
        # WILLNEED queues readahead of the whole file in large requests; POPULATE_READ
        # then maps every page, waiting for the reads. Kernels before 5.14 refuse it:
        # map again with MAP_POPULATE, which faults pages in with smaller reads.
        _libc.madvise(self.addr, self.size, mmap.MADV_WILLNEED)
        if _libc.madvise(self.addr, self.size, _MADV_POPULATE_READ) != 0:
            self.close()
            self.addr = self._map(mmap.MAP_SHARED | mmap.MAP_POPULATE)

    def resident_pages(self) -> int:
        vec = (ctypes.c_ubyte * -(-self.size // _PAGE))()
        _check(_libc.mincore(self.addr, self.size, vec) == 0, "mincore", self.path)
        return bytes(vec).translate(_LOW_BIT).count(1)

    def close(self) -> None:
        if self.addr is not None:
            _libc.munmap(self.addr, self.size)
            self.addr = None


def _boundary(folder: Path) -> Path:
    # huggingface_hub's cache (pool_manager/cache.py) hands out snapshots/<commit>/,
    # whose files link to ../../blobs/<sha>: there the model's repo folder is the limit.
    if folder.parent.name == "snapshots" and (folder.parent.parent / "blobs").is_dir():
        return folder.parent.parent
    return folder


def _files(folder: Path) -> list[tuple[Path, int]]:
    """Regular files under `folder` with their sizes: symlinks resolved, kept only when
    they land inside the folder (or its hub repo folder), each real file once."""
    root = folder.resolve()
    limit = _boundary(root)
    seen: dict[Path, int] = {}
    for dirpath, _, names in os.walk(root):  # symlinked folders are not descended
        for name in names:
            try:
                real = (Path(dirpath) / name).resolve()
                if real.is_relative_to(limit) and real.is_file() and real not in seen:
                    seen[real] = real.stat().st_size
            except (OSError, RuntimeError):  # vanished, unreadable, or a link loop
                continue
    return sorted(seen.items())


def _measurable(path: Path) -> bool:
    # For a file the caller may not write (and does not own), mincore reports every
    # page resident whatever the truth (Linux can_do_mincore, a side-channel guard).
    return os.geteuid() == 0 or os.stat(path).st_uid == os.geteuid() or os.access(path, os.W_OK)


def _fraction(files: list[tuple[Path, int]], held: Iterable[_Map] = ()) -> float | None:
    maps = {m.path: m for m in held}  # mincore on pages already mapped is cheaper
    total = resident = 0
    for path, size in files:
        if size == 0:
            continue
        total += -(-size // _PAGE)
        try:
            if not _measurable(path):
                return None
            # A fresh map is unfaulted: mincore then reports the page cache itself.
            m = maps.get(path) or _Map(path, size)
        except FileNotFoundError:
            continue  # deleted since it was listed: none of it is in RAM
        try:
            resident += m.resident_pages()
        finally:
            if path not in maps:
                m.close()
    return resident / total if total else 1.0  # nothing to read is nothing to wait for


def resident_fraction(folder: Path) -> float | None:
    """Fraction of the folder's file pages in RAM now, measured with mincore(2); None
    when the kernel will not tell (a file this process neither owns nor may write)."""
    return _fraction(_files(folder))


def drop_from_page_cache(folder: Path) -> None:
    """Ask the kernel to drop the folder's files from the page cache (a cold start).
    Pages still mapped by any process stay; that is the kernel's rule, not ours."""
    _drop(_files(folder))


def _drop(files: list[tuple[Path, int]]) -> None:
    for path, _ in files:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # deleted since: its pages went with it
        try:
            os.fdatasync(fd)  # DONTNEED skips dirty pages: write them back first
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


@dataclass(eq=False)
class Preloaded:
    """One model held in RAM: its files, total size, and when it was last used."""
    ref: str
    folder: Path
    files: list[tuple[Path, int]]
    size_bytes: int
    last_used: float = field(default_factory=time.time)
    _maps: list[_Map] = field(default_factory=list, repr=False)


class Preloader:
    """Models kept in the page cache within `budget_bytes` (0 = hot-loading off).

    Driven from the pool manager's event loop only; preloads run one at a time, so the
    budget is checked and spent without races. Order of `_models` is LRU order."""

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self._models: OrderedDict[str, Preloaded] = OrderedDict()
        self._lock = asyncio.Lock()

    @property
    def used_bytes(self) -> int:
        return sum(p.size_bytes for p in self._models.values())

    async def preload(self, ref: str, folder: Path) -> Preloaded:
        """Bring `ref`'s folder into RAM and keep it there, evicting least recently used
        models to stay within the budget. Preloading a held ref refreshes it."""
        if self.budget_bytes <= 0:
            raise OrchError("RAM_BUDGET_EXCEEDED", "hot-loading is off: set pool.ram_budget_bytes "
                            "to the RAM models may keep in the page cache",
                            param="pool.ram_budget_bytes")
        async with self._lock:
            folder = Path(folder)
            if not folder.is_dir():
                raise OrchError("INVALID_MODEL_REF", f"no model folder at {folder}", param="folder")
            files = await asyncio.to_thread(_files, folder)
            size = sum(s for _, s in files)
            if size > self.budget_bytes:  # checked before anything is evicted
                raise OrchError("RAM_BUDGET_EXCEEDED", f"{ref} is {size} bytes, more than the "
                                f"whole RAM budget of {self.budget_bytes} bytes",
                                param="pool.ram_budget_bytes")
            old = self._models.pop(ref, None)
            if old is not None:  # refresh: its pages are about to be mapped again
                self._release(old, drop=old.folder.resolve() != folder.resolve())
            while self._models and self.used_bytes + size > self.budget_bytes:
                self.evict(next(iter(self._models)))
            entry = Preloaded(ref, folder, files, size)
            load = asyncio.ensure_future(asyncio.to_thread(self._map_all, entry))
            try:
                await asyncio.shield(load)
            except asyncio.CancelledError:
                # The thread cannot be stopped; give back what it maps once it is done.
                load.add_done_callback(lambda _: self._release(entry, drop=True))
                raise
            self._models[ref] = entry
            return entry

    @staticmethod
    def _map_all(entry: Preloaded) -> None:
        try:
            for path, size in entry.files:
                if size:
                    entry._maps.append(_Map(path, size))
                    entry._maps[-1].populate()
        except BaseException:
            Preloader._release(entry, drop=False)
            raise

    def touch(self, ref: str) -> bool:
        """Mark `ref` used (a worker started from it); False if it is not preloaded."""
        entry = self._models.get(ref)
        if entry is None:
            return False
        entry.last_used = time.time()
        self._models.move_to_end(ref)
        return True

    def evict(self, ref: str) -> bool:
        """Stop holding `ref` and give its pages back; False if it was not preloaded."""
        entry = self._models.pop(ref, None)
        if entry is None:
            return False
        self._release(entry, drop=True)
        return True

    @staticmethod
    def _release(entry: Preloaded, drop: bool) -> None:
        # Unmap first: DONTNEED leaves mapped pages alone.
        for m in entry._maps:
            m.close()
        entry._maps.clear()
        if drop:
            _drop(entry.files)

    def entries(self) -> list[tuple[str, int, float]]:
        """(ref, size_bytes, last_used), LRU first. Cheap: heartbeats carry it every
        beat, so it measures nothing (see resident_fraction)."""
        return [(p.ref, p.size_bytes, p.last_used) for p in self._models.values()]

    def resident_fraction(self, ref: str) -> float | None:
        """How much of preloaded `ref` is in RAM now (mincore over its maps), None if
        it is not preloaded or the kernel will not tell. One byte per 4 KiB page is
        read and scanned: ~35 MB for a 140 GB model, which is why nothing calls this
        on every heartbeat."""
        entry = self._models.get(ref)
        return _fraction(entry.files, entry._maps) if entry is not None else None
