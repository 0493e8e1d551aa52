"""/ui: the built web UI (frontend/dist) served by the gateway (gateway.ui, docs/UI.md)."""

from __future__ import annotations

import json
import os

import httpx
import pytest

from gateway import ui
from gateway.app import create_app
from tests.gateway.conftest import in_process

IMMUTABLE = "public, max-age=31536000, immutable"


@pytest.fixture
def dist(tmp_path):
    """A small build: index.html and two hashed assets; a secret beside dist."""
    d = tmp_path / "dist"
    (d / "assets").mkdir(parents=True)
    (d / "index.html").write_text('<!doctype html><script type="module" '
                                  'src="/ui/assets/index-abc.js"></script>')
    (d / "assets" / "index-abc.js").write_text("console.log('ui')")
    (d / "assets" / "index-abc.css").write_text("body{}")
    (tmp_path / "secret.txt").write_text("do not serve")
    return d


@pytest.fixture
async def ui_client(orchestrator, dist):
    async with in_process(create_app(orchestrator.address, ui_dist=dist)) as c:
        yield c


async def test_ui_redirects_to_its_slash(ui_client):
    r = await ui_client.get("/ui")
    assert (r.status_code, r.headers["location"]) == (308, "/ui/")


async def test_ui_behind_a_path_prefix_redirects_under_it(orchestrator, dist):
    app = create_app(orchestrator.address, ui_dist=dist)
    transport = httpx.ASGITransport(app=app, root_path="/llama")
    async with httpx.AsyncClient(transport=transport, base_url="http://g") as c:
        r = await c.get("/ui")
    assert r.headers["location"] == "/llama/ui/"


@pytest.mark.parametrize("path", ["/ui/", "/ui/index.html"])
async def test_index_is_never_cached_stale(ui_client, dist, path):
    r = await ui_client.get(path)
    assert r.status_code == 200
    assert r.content == (dist / "index.html").read_bytes()
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-cache"


@pytest.mark.parametrize("name,kind", [("index-abc.js", "javascript"),
                                       ("index-abc.css", "text/css")])
async def test_hashed_assets_are_cached_for_good(ui_client, dist, name, kind):
    r = await ui_client.get(f"/ui/assets/{name}")
    assert r.status_code == 200
    assert r.content == (dist / "assets" / name).read_bytes()
    assert kind in r.headers["content-type"]
    assert r.headers["cache-control"] == IMMUTABLE
    assert r.headers["x-content-type-options"] == "nosniff"


async def test_head_is_get_without_a_body(ui_client):
    r = await ui_client.head("/ui/assets/index-abc.js")
    assert (r.status_code, r.content, r.headers["content-length"]) == (200, b"", "17")


async def test_a_rebuild_shows_without_a_restart(ui_client, dist):
    (dist / "index.html").write_text("rebuilt")
    assert (await ui_client.get("/ui/")).text == "rebuilt"


# "%2e%2e" reaches the route as "..": what a client that does not normalise sends.
@pytest.mark.parametrize("path", ["/ui/assets/index-old.js", "/ui/assets/", "/ui/jobs",
                                  "/ui/%2e%2e/secret.txt", "/ui/assets/%2e%2e/%2e%2e/secret.txt"])
async def test_anything_else_is_a_json_404(ui_client, path):
    r = await ui_client.get(path)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    assert b"do not serve" not in r.content


async def test_a_missing_file_says_which(ui_client):
    r = await ui_client.get("/ui/assets/index-old.js")
    assert r.json()["error"] == {"message": "no file 'assets/index-old.js' in the web UI's build",
                                 "type": "invalid_request_error", "param": "path",
                                 "code": "not_found"}


async def test_links_out_of_dist_are_not_followed(ui_client, dist):
    os.symlink(dist.parent / "secret.txt", dist / "assets" / "leak.js")
    r = await ui_client.get("/ui/assets/leak.js")
    assert r.status_code == 404 and b"do not serve" not in r.content


async def test_without_a_build_ui_says_how_to_make_one(orchestrator, tmp_path, capfd):
    missing = tmp_path / "nothing"
    async with in_process(create_app(orchestrator.address, ui_dist=missing)) as c:
        r = await c.get("/ui/")
        assert r.status_code == 404
        assert r.headers["content-type"].startswith("text/html")
        assert "make ui" in r.text and str(missing) in r.text
        r = await c.get("/ui/assets/x.js")
        assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
        await c.get("/ui/")
    logged = [json.loads(line) for line in capfd.readouterr().err.splitlines()
              if line.startswith("{")]
    assert [rec["code"] for rec in logged].count("ui.missing") == 1  # at start, once


async def test_the_ui_is_not_in_the_api_document(ui_client):
    paths = (await ui_client.get("/openapi.json")).json()["paths"]
    assert not [p for p in paths if p.startswith("/ui")]


def test_the_real_build_is_served_from_the_repository():
    # frontend/dist is committed: the default a gateway serves.
    assert ui.DIST.name == "dist" and (ui.DIST / "index.html").is_file()
    index = (ui.DIST / "index.html").read_text()
    assert "/ui/assets/" in index and "http://" not in index and "https://" not in index
