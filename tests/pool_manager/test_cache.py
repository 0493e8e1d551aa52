"""ModelCache against a fake Hub on loopback, through the real huggingface_hub client.

No test reaches the internet: every request huggingface_hub makes in this module goes
through a client that fails the test on any host but 127.0.0.1, and the CLI subprocess
gets HF_ENDPOINT pointing at the fake Hub.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import set_client_factory
from huggingface_hub.utils import _http as hf_http

from common.errors import InvalidInput, OrchError
from pool_manager.cache import ModelCache
from tests.pool_manager.hub_server import FakeHub, git_blob_id

REPO_ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20


def data(seed: str, n: int) -> bytes:
    block = hashlib.sha256(seed.encode()).digest()
    return (block * (n // len(block) + 1))[:n]


TINY = {"config.json": b'{"model_type": "tiny"}', "tokenizer.json": data("tok", 3000),
        "model.safetensors": data("weights", 64 * 1024)}


def small(name: str) -> dict[str, bytes]:
    return {"config.json": b"{}", "model.safetensors": data(name, 100_000)}


SMALL = len(small("x")["config.json"]) + 100_000


@pytest.fixture(autouse=True)
def loopback_only():
    def refuse_other_hosts(request: httpx2.Request) -> None:
        if request.url.host != "127.0.0.1":
            raise RuntimeError(f"a test tried to reach {request.url}")

    set_client_factory(lambda: httpx2.Client(event_hooks={"request": [refuse_other_hosts]},
                                             follow_redirects=True, timeout=30))
    yield
    set_client_factory(hf_http.default_client_factory)


@pytest.fixture
def hub():
    with FakeHub() as h:
        h.add_commit("acme/tiny", TINY)
        for name in ("a", "b", "c"):
            h.add_commit(f"acme/{name}", small(name))
        yield h


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def cache(root, hub) -> ModelCache:
    return ModelCache(root, endpoint=hub.endpoint)


def commit_of(hub: FakeHub, repo: str, branch: str = "main") -> str:
    return hub.repos[repo].branches[branch]


def files_under(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


async def test_a_branch_is_pinned_to_its_commit_and_recorded(cache, hub, root):
    calls = []
    m = await cache.ensure("hf:acme/tiny", progress=lambda done, total: calls.append((done, total)))
    commit = commit_of(hub, "acme/tiny")
    total = sum(map(len, TINY.values()))
    assert (m.ref, m.pinned_ref, m.resolved_revision) == (
        "hf:acme/tiny@main", f"hf:acme/tiny@{commit}", commit)
    assert m.path == root / "hub" / "models--acme--tiny" / "snapshots" / commit
    assert files_under(m.path) == TINY and m.size_bytes == total
    assert sorted(m.files) == sorted(TINY)
    assert calls[-1] == (total, total) and calls == sorted(calls)
    index = json.loads((root / "index.json").read_text())
    assert index["refs"] == {"hf:acme/tiny@main": m.pinned_ref}
    [entry] = cache.entries()
    assert (entry.ref, entry.commit, entry.size_bytes) == (m.pinned_ref, commit, total)
    assert entry.last_used > 0


async def test_a_moved_branch_fetches_the_new_commit_and_keeps_the_old(cache, hub):
    old = await cache.ensure("hf:acme/tiny")
    new_commit = hub.add_commit("acme/tiny", {**TINY, "config.json": b'{"v": 2}'})
    new = await cache.ensure("hf:acme/tiny")
    assert new.resolved_revision == new_commit != old.resolved_revision
    assert (new.path / "config.json").read_bytes() == b'{"v": 2}'
    assert (old.path / "config.json").read_bytes() == TINY["config.json"]
    assert [e.ref for e in cache.entries()] == [old.pinned_ref, new.pinned_ref]


async def test_a_second_fetch_downloads_nothing(cache, hub, root):
    first = await cache.ensure("hf:acme/tiny")
    after_first = hub.counts.copy()
    assert after_first["get"] == len(TINY)

    assert await cache.ensure("hf:acme/tiny") == first
    assert hub.counts - after_first == Counter(api=1)  # one revision lookup, no file traffic

    before = hub.counts.copy()
    assert (await cache.ensure(first.pinned_ref)).path == first.path
    restarted = ModelCache(root, endpoint=hub.endpoint)  # a restarted pool manager
    assert (await restarted.ensure(first.pinned_ref)).path == first.path
    assert hub.counts == before  # a recorded commit costs no request at all


async def test_file_option_fetches_one_file(cache, hub):
    m = await cache.ensure("hf:acme/tiny::file=config.json")
    assert m.files == ("config.json",) and m.size_bytes == len(TINY["config.json"])
    assert files_under(m.path) == {"config.json": TINY["config.json"]}
    assert hub.counts["get"] == 1


async def test_an_interrupted_download_resumes_with_a_range_request(cache, hub):
    size, cut = 12 * MiB, 11 * MiB  # huggingface_hub writes 10 MiB chunks: a cut past one resumes
    weights = data("big", size)
    hub.add_commit("acme/big", {"model.safetensors": weights})
    hub.cut_once["model.safetensors"] = cut
    calls = []
    m = await cache.ensure("hf:acme/big", progress=lambda done, total: calls.append((done, total)))
    [rng] = hub.ranges
    resumed_at = int(rng.removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= cut
    assert hub.counts["bytes"] == cut + (size - resumed_at)  # only the missing tail was sent again
    assert (m.path / "model.safetensors").read_bytes() == weights
    assert calls[-1] == (size, size) and calls == sorted(calls)
    assert any(0 < done < size for done, _ in calls)  # reported as bytes arrive


@pytest.mark.parametrize("path", ["model.safetensors", "config.json"],
                         ids=["lfs-sha256", "git-blob-id"])
async def test_a_file_failing_its_checksum_is_deleted_and_never_served(cache, hub, root, path):
    hub.corrupt.add(path)
    with pytest.raises(OrchError) as exc:
        await cache.ensure("hf:acme/tiny")
    assert exc.value.code == "CHECKSUM_MISMATCH" and path in exc.value.message
    storage = root / "hub" / "models--acme--tiny"
    lfs = path.endswith(".safetensors")
    blob = hashlib.sha256(TINY[path]).hexdigest() if lfs else git_blob_id(TINY[path])
    assert not (storage / "blobs" / blob).exists()
    assert not os.path.lexists(storage / "snapshots" / commit_of(hub, "acme/tiny") / path)
    assert cache.entries() == []

    hub.corrupt.clear()
    assert files_under((await cache.ensure("hf:acme/tiny")).path) == TINY


@pytest.mark.parametrize("ref,code,names", [
    pytest.param("hf:acme/tiny@v9", "REVISION_NOT_FOUND", "v9", id="unknown-revision"),
    pytest.param(f"hf:acme/tiny@{'0' * 40}", "REVISION_NOT_FOUND", "0" * 40, id="unknown-commit"),
    pytest.param("hf:acme/nope", "MODEL_NOT_FOUND", "acme/nope", id="unknown-repo"),
    pytest.param("hf:acme/tiny::file=nope.gguf", "MODEL_NOT_FOUND", "nope.gguf", id="unknown-file"),
])
async def test_what_the_hub_lacks_is_refused_with_a_stable_code(cache, hub, ref, code, names):
    with pytest.raises(OrchError) as exc:
        await cache.ensure(ref)
    assert exc.value.code == code and names in exc.value.message
    assert exc.value.message.startswith(ref.split("::")[0].split("@")[0])
    assert hub.counts["get"] == 0


async def test_an_unreachable_hub_fails_new_refs_but_serves_recorded_ones(cache, hub):
    m = await cache.ensure("hf:acme/tiny")
    hub.stop()
    with pytest.raises(OrchError) as exc:
        await cache.ensure("hf:acme/a")
    assert exc.value.code == "DOWNLOAD_FAILED" and "hf:acme/a@main" in exc.value.message
    assert (await cache.ensure("hf:acme/tiny")).path == m.path  # last resolved commit
    assert (await cache.ensure(m.pinned_ref)).path == m.path


async def test_a_model_larger_than_the_budget_is_refused_before_any_download(root, hub):
    cache = ModelCache(root, budget_bytes=sum(map(len, TINY.values())) - 1, endpoint=hub.endpoint)
    with pytest.raises(OrchError) as exc:
        await cache.ensure("hf:acme/tiny")
    assert exc.value.code == "CACHE_BUDGET_EXCEEDED"
    assert hub.counts["head"] == hub.counts["get"] == 0
    assert cache.entries() == [] and not (root / "hub" / "models--acme--tiny").exists()


async def test_the_least_recently_used_model_is_evicted_first(root, hub):
    cache = ModelCache(root, budget_bytes=2 * SMALL + SMALL // 2, endpoint=hub.endpoint)
    a = await cache.ensure("hf:acme/a")
    b = await cache.ensure("hf:acme/b")
    await cache.ensure("hf:acme/a")  # a is now more recent than b
    c = await cache.ensure("hf:acme/c")
    assert [e.ref for e in cache.entries()] == [a.pinned_ref, c.pinned_ref]
    assert not b.path.exists() and files_under(a.path) == small("a")


async def test_a_model_in_use_is_never_evicted(root, hub):
    cache = ModelCache(root, budget_bytes=2 * SMALL + SMALL // 2, endpoint=hub.endpoint)
    a = await cache.ensure("hf:acme/a")
    cache.acquire(a.pinned_ref)
    b = await cache.ensure("hf:acme/b")  # a is the least recently used, but in use
    c = await cache.ensure("hf:acme/c")
    assert [e.ref for e in cache.entries()] == [a.pinned_ref, c.pinned_ref]
    assert not b.path.exists()

    cache.acquire(c.pinned_ref)  # now nothing can make room for b
    before = hub.counts.copy()
    with pytest.raises(OrchError) as exc:
        await cache.ensure("hf:acme/b")
    assert exc.value.code == "CACHE_BUDGET_EXCEEDED"
    assert (hub.counts["head"], hub.counts["get"]) == (before["head"], before["get"])
    assert [e.ref for e in cache.entries()] == [a.pinned_ref, c.pinned_ref]


async def test_evict_refuses_a_model_in_use_and_removes_it_after_release(cache):
    m = await cache.ensure("hf:acme/tiny")
    cache.acquire(m.pinned_ref)
    with pytest.raises(OrchError) as exc:
        await cache.evict("hf:acme/tiny")  # the branch ref names the same model
    assert exc.value.code == "MODEL_PINNED"
    cache.release(m.pinned_ref)
    cache.release(m.pinned_ref)  # a release without an acquire is harmless
    assert await cache.evict("hf:acme/tiny") is True
    assert not m.path.exists() and cache.entries() == []
    assert await cache.evict(m.pinned_ref) is False


async def test_models_sharing_a_blob_pay_for_it_once_and_keep_it_on_eviction(root, hub):
    old_commit = commit_of(hub, "acme/tiny")
    new_commit = hub.add_commit("acme/tiny", {**TINY, "config.json": b'{"v": 2}'})
    budget = sum(map(len, TINY.values())) + len(b'{"v": 2}')  # the weights counted once
    cache = ModelCache(root, budget_bytes=budget, endpoint=hub.endpoint)
    old = await cache.ensure(f"hf:acme/tiny@{old_commit}")
    gets = hub.counts["get"]
    new = await cache.ensure(f"hf:acme/tiny@{new_commit}")
    assert hub.counts["get"] == gets + 1  # only the changed file
    assert len(cache.entries()) == 2

    assert await cache.evict(old.pinned_ref)
    assert not old.path.exists()
    assert files_under(new.path) == {**TINY, "config.json": b'{"v": 2}'}


@pytest.mark.parametrize("tamper", ["file", "folder"])
async def test_a_link_leading_out_of_the_cache_is_refused(cache, tamper):
    m = await cache.ensure("hf:acme/tiny")
    if tamper == "file":
        (m.path / "config.json").unlink()
        (m.path / "config.json").symlink_to("/etc/passwd")
    else:
        (m.path / "extra").symlink_to("/etc")
    with pytest.raises(InvalidInput) as exc:
        await cache.ensure(m.pinned_ref)
    assert exc.value.code == "INVALID_MODEL_REF" and "outside the cache" in exc.value.message


async def test_a_hub_file_name_climbing_out_is_refused(cache, hub, tmp_path):
    hub.add_commit("evil/repo", {"../../escape.txt": b"x"})
    with pytest.raises(InvalidInput) as exc:
        await cache.ensure("hf:evil/repo")
    assert exc.value.code == "INVALID_MODEL_REF"
    assert hub.counts["head"] == hub.counts["get"] == 0
    assert not list(tmp_path.rglob("escape.txt"))


async def test_a_file_ref_is_served_in_place(cache, tmp_path, root):
    folder = tmp_path / "local"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_bytes(b"{}")
    (folder / "sub" / "w.bin").write_bytes(b"x" * 10)
    m = await cache.ensure(f"file:{folder}")
    assert (m.path, m.resolved_revision, m.size_bytes, m.pinned_ref) == (folder, "", 12, m.ref)
    assert not root.exists()  # nothing copied into the cache

    for ref in (f"file:{tmp_path / 'missing'}", "file:relative/path"):
        with pytest.raises(InvalidInput) as exc:
            await cache.ensure(ref)
        assert exc.value.code == "INVALID_MODEL_REF"


def test_the_fetch_command_prints_path_and_pinned_ref_or_one_error_line(tmp_path, hub):
    # HF_HUB_OFFLINE=0: other test modules set it to 1 for the whole session.
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf-home"),
           "HF_HUB_DISABLE_TELEMETRY": "1"}

    def fetch(ref: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cli", "fetch", ref, "--cache-dir",
                               str(tmp_path / "cache")], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=120, check=False)

    ok = fetch("hf:acme/tiny")
    assert ok.returncode == 0, ok.stderr
    path, pinned = ok.stdout.split()
    commit = commit_of(hub, "acme/tiny")
    assert pinned == f"hf:acme/tiny@{commit}" and path.endswith(f"/snapshots/{commit}")
    assert files_under(Path(path)) == TINY

    for ref, code in (("hf:acme/nope", "MODEL_NOT_FOUND"), ("hf:acme/../x", "INVALID_MODEL_REF")):
        bad = fetch(ref)
        assert bad.returncode == 2 and bad.stdout == ""
        assert bad.stderr.strip().splitlines()[-1].startswith(f"fetch: {code}: ")


async def test_cache_work_waiting_for_its_turn_holds_no_thread_heartbeats_need(tmp_path, monkeypatch):
    # Queued starts each wait for the cache while one download runs; heartbeats take
    # inventory with asyncio.to_thread, on the default executor, and must not wait too.
    import asyncio
    import threading
    downloading = threading.Event()
    monkeypatch.setattr(ModelCache, "_ensure", lambda self, r, progress: downloading.wait(10))
    cache = ModelCache(tmp_path / "models")
    default_threads = min(32, (os.cpu_count() or 1) + 4)
    fetches = [asyncio.create_task(cache.ensure(f"hf:acme/m{i}")) for i in range(default_threads + 1)]
    try:
        await asyncio.sleep(0.2)
        await asyncio.wait_for(asyncio.to_thread(lambda: None), 2)  # a heartbeat's inventory
    finally:
        downloading.set()
        await asyncio.gather(*fetches)


async def test_download_progress_reaches_the_link_on_the_event_loop(cache):
    # The cache reports progress from its own thread; the report goes into the link's
    # asyncio queue, which only the event loop's thread may touch.
    import threading

    from pool_manager.models import Models
    from pool_manager.preload import Preloader
    reported: list[tuple[int, int]] = []
    models = Models(cache, Preloader(0), lambda msg: reported.append(
        (msg.phase, threading.get_ident())))
    await models.fetch("hf:acme/tiny@main")
    await asyncio.sleep(0)  # reports handed over from the thread run on the loop
    loop_thread = threading.get_ident()
    assert reported and {thread for _, thread in reported} == {loop_thread}
