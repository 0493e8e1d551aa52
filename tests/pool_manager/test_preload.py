"""Preloader on real files: residency is what mincore(2) says, the budget holds, LRU
evicts, and evicted pages really leave the page cache."""

import asyncio
import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest

from common.errors import OrchError
from pool_manager import preload
from pool_manager.preload import Preloader, drop_from_page_cache, resident_fraction

MB = 1 << 20
# Filesystems whose files live in the page cache itself: DONTNEED cannot drop them.
RAM_FILESYSTEMS = {"tmpfs", "ramfs"}


def _fs_type(path: Path) -> str:
    best, kind = "", "?"
    with open("/proc/self/mounts") as fh:
        for line in fh:
            _, mount, fstype, *_ = line.split()
            if str(path).startswith(mount.rstrip("/") + "/") and len(mount) > len(best):
                best, kind = mount, fstype
    return kind


@pytest.fixture
def disk(tmp_path):
    """A folder on a real disk filesystem (tmp_path, unless that is tmpfs)."""
    if _fs_type(tmp_path.resolve()) not in RAM_FILESYSTEMS:
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="preload-test-", dir="/var/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _require_droppable(folder: Path) -> None:
    kind = _fs_type(folder.resolve())
    if kind in RAM_FILESYSTEMS:
        pytest.skip(f"{folder} is on {kind}: its pages are the file, DONTNEED cannot drop them")


def _model(root: Path, name: str, sizes_mb: tuple[int, ...] = (2,)) -> Path:
    folder = root / name
    folder.mkdir()
    for i, size in enumerate(sizes_mb):
        with open(folder / f"part-{i}.safetensors", "wb") as fh:
            fh.write(os.urandom(size * MB))
            fh.flush()
            os.fsync(fh.fileno())  # clean pages, so a drop can take them
    (folder / "config.json").write_text("{}")
    return folder


async def test_preload_makes_a_dropped_model_resident_and_evict_gives_it_back(disk):
    _require_droppable(disk)
    folder = _model(disk, "a", (3, 1))
    drop_from_page_cache(folder)
    assert resident_fraction(folder) < 0.5
    pre = Preloader(budget_bytes=10 * MB)
    entry = await pre.preload("a", folder)
    assert entry.size_bytes == 4 * MB + 2
    assert resident_fraction(folder) > 0.99
    [(ref, size, _)] = pre.entries()
    assert (ref, size) == ("a", 4 * MB + 2) and pre.resident_fraction("a") > 0.99
    assert pre.resident_fraction("never preloaded") is None
    assert pre.evict("a") is True
    assert resident_fraction(folder) < 0.5
    assert pre.used_bytes == 0 and pre.entries() == []


async def test_preloaded_pages_survive_a_drop_because_they_are_mapped(disk):
    _require_droppable(disk)
    folder = _model(disk, "a")
    pre = Preloader(budget_bytes=10 * MB)
    await pre.preload("a", folder)
    drop_from_page_cache(folder)
    assert resident_fraction(folder) > 0.99
    pre.evict("a")


@pytest.mark.parametrize("touched, evicted", [(None, "a"), ("a", "b")],
                         ids=["oldest-preload-goes", "touch-saves-the-oldest"])
async def test_a_new_model_evicts_the_least_recently_used(disk, touched, evicted):
    _require_droppable(disk)
    folders = {name: _model(disk, name) for name in "abc"}
    pre = Preloader(budget_bytes=5 * MB)  # two 2 MB models fit, three do not
    await pre.preload("a", folders["a"])
    await pre.preload("b", folders["b"])
    if touched:
        assert pre.touch(touched)
    await pre.preload("c", folders["c"])
    kept = sorted(ref for ref, *_ in pre.entries())
    assert kept == sorted(set("abc") - {evicted})
    assert pre.used_bytes <= pre.budget_bytes
    assert resident_fraction(folders[evicted]) < 0.5
    for ref in kept:
        pre.evict(ref)


async def test_a_model_bigger_than_the_budget_is_refused_and_nothing_is_evicted(disk):
    pre = Preloader(budget_bytes=5 * MB)
    await pre.preload("a", _model(disk, "a"))
    with pytest.raises(OrchError) as info:
        await pre.preload("big", _model(disk, "big", (6,)))
    assert info.value.code == "RAM_BUDGET_EXCEEDED"
    assert [ref for ref, *_ in pre.entries()] == ["a"]
    assert pre.used_bytes == 2 * MB + 2
    pre.evict("a")


async def test_budget_zero_means_hot_loading_is_off(disk):
    with pytest.raises(OrchError) as info:
        await Preloader(budget_bytes=0).preload("a", _model(disk, "a"))
    assert info.value.code == "RAM_BUDGET_EXCEEDED"
    assert "pool.ram_budget_bytes" in info.value.message


async def test_preloading_a_held_ref_again_keeps_one_entry(disk):
    folder = _model(disk, "a")
    pre = Preloader(budget_bytes=5 * MB)
    await pre.preload("a", folder)
    await pre.preload("a", folder)
    assert [ref for ref, *_ in pre.entries()] == ["a"]
    assert pre.used_bytes == 2 * MB + 2
    pre.evict("a")


def test_evicting_or_touching_an_unknown_ref_does_nothing():
    pre = Preloader(budget_bytes=MB)
    assert pre.evict("nope") is False
    assert pre.touch("nope") is False
    assert pre.used_bytes == 0


async def test_a_missing_folder_is_an_invalid_model_ref(tmp_path):
    with pytest.raises(OrchError) as info:
        await Preloader(budget_bytes=MB).preload("a", tmp_path / "missing")
    assert info.value.code == "INVALID_MODEL_REF"


async def test_symlinks_are_followed_only_inside_the_folder(disk):
    _require_droppable(disk)
    folder = _model(disk, "a")
    outside = _model(disk, "outside", (3,))
    (folder / "escape.safetensors").symlink_to(outside / "part-0.safetensors")
    (folder / "escape-dir").symlink_to(outside)
    (folder / "alias.safetensors").symlink_to(folder / "part-0.safetensors")
    drop_from_page_cache(outside)
    pre = Preloader(budget_bytes=10 * MB)
    entry = await pre.preload("a", folder)
    assert entry.size_bytes == 2 * MB + 2  # the alias counted once, the escapes not at all
    assert {p.name for p, _ in entry.files} == {"part-0.safetensors", "config.json"}
    assert resident_fraction(outside) < 0.5
    pre.evict("a")


async def test_a_preload_cancelled_while_mapping_gives_its_pages_back(disk, monkeypatch):
    _require_droppable(disk)
    folder = _model(disk, "a", (4,))
    drop_from_page_cache(folder)
    mapping, go, mapped = threading.Event(), threading.Event(), threading.Event()
    populate = preload._Map.populate

    def held_populate(self):  # hold the mapping thread until the task is cancelled
        mapping.set()
        go.wait(10)
        populate(self)
        mapped.set()

    monkeypatch.setattr(preload._Map, "populate", held_populate)
    pre = Preloader(budget_bytes=10 * MB)
    task = asyncio.create_task(pre.preload("a", folder))
    while not mapping.is_set():
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    go.set()
    while not mapped.is_set():  # the thread finishes on its own...
        await asyncio.sleep(0.01)
    for _ in range(100):  # ...and its maps are released just after
        if resident_fraction(folder) < 0.5:
            break
        await asyncio.sleep(0.05)
    assert pre.entries() == [] and pre.used_bytes == 0
    assert resident_fraction(folder) < 0.5


async def test_a_hub_snapshot_loads_its_blobs_but_nothing_outside_the_repo(disk):
    # pool_manager/cache.py hands out huggingface_hub's snapshots/<commit>/ folder,
    # whose files are links to ../../blobs/<sha>.
    _require_droppable(disk)
    repo = disk / "models--org--m"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "abc123").write_bytes(os.urandom(2 * MB))
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to("../../blobs/abc123")
    outside = _model(disk, "outside")
    (snapshot / "escape.bin").symlink_to(outside / "part-0.safetensors")
    drop_from_page_cache(outside)
    pre = Preloader(budget_bytes=10 * MB)
    entry = await pre.preload("hf:org/m@0123abcd", snapshot)
    assert [(p.name, size) for p, size in entry.files] == [("abc123", 2 * MB)]
    assert resident_fraction(snapshot) > 0.99
    assert resident_fraction(outside) < 0.5
    pre.evict("hf:org/m@0123abcd")


async def test_what_heartbeats_carry_measures_no_page_residency(disk, monkeypatch):
    """Models.residency() runs every heartbeat; reading residency (one byte per page,
    ~35 MB for a 140 GB model) there would cost the pool manager for nothing it sends."""
    from pool_manager.cache import ModelCache
    from pool_manager.models import Models

    pre = Preloader(budget_bytes=10 * MB)
    await pre.preload("file:a", _model(disk, "a", (1,)))

    def refused(self):
        raise AssertionError("page residency read on the heartbeat path")
    monkeypatch.setattr(preload._Map, "resident_pages", refused)
    models = Models(ModelCache(disk / "cache"), pre, report=lambda _: None)
    [r] = models.residency()
    assert (r.model_ref, r.preloaded, r.size_bytes) == ("file:a", True, 1 * MB + 2)
    with pytest.raises(AssertionError):
        pre.resident_fraction("file:a")  # the measurement itself still reads it
