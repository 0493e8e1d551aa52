"""The web UI (frontend/, docs/UI.md) at /ui: frontend/dist as built, nothing else.

    GET /ui                 308 to /ui/
    GET /ui/                index.html                  Cache-Control: no-cache
    GET /ui/assets/<file>   the file; content-hashed names, so cached for a year
                            (Cache-Control: public, max-age=31536000, immutable)
    GET /ui/<file>          any other file of dist       Cache-Control: no-cache
    anything else           404, the gateway's error JSON    (HEAD: as GET)

The UI routes with the URL hash (/ui/#/jobs/job-1), so no path needs a fallback to
index.html. Files are read from disk on each request, so a rebuild (`make ui`) shows
without a restart; without dist/index.html, /ui/ is a 404 page saying how to build it,
and the app logs that once at start (`log_if_missing`). Nothing is fetched from
elsewhere: the build bundles every script, style and font.
"""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

from common import log
from common.errors import OrchError

DIST = Path(__file__).resolve().parents[1] / "frontend" / "dist"
IMMUTABLE = "public, max-age=31536000, immutable"
NO_CACHE = "no-cache"
BUILD = "make ui (or: cd frontend && npm ci && npm run build)"

_NOT_BUILT = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>llama-orch: web UI not built</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 3em auto">
<h1>The web UI is not built</h1>
<p>This gateway serves the UI from <code>{{dist}}</code>, which has no
<code>index.html</code>. Build it with <code>{BUILD}</code>, then reload this page:
the gateway need not restart.</p>
<p>The APIs work without it: <a href="../docs">/docs</a>.</p>
</body></html>
"""

router = APIRouter(include_in_schema=False)


def log_if_missing(dist: Path) -> None:
    if not (dist / "index.html").is_file():
        log.emit("gateway", "ui.missing", f"{dist} has no index.html: /ui/ is a 404 page "
                 f"until it is built ({BUILD})", level="warning", dist=str(dist))


def _dist(request: Request) -> Path:
    return request.app.state.ui_dist


@router.api_route("/ui", methods=["GET", "HEAD"])
async def ui_root(request: Request) -> Response:
    return RedirectResponse(request.scope.get("root_path", "") + "/ui/", status_code=308)


@router.api_route("/ui/{path:path}", methods=["GET", "HEAD"])
async def ui_file(path: str, request: Request) -> Response:
    dist = _dist(request)
    if path in ("", "index.html"):
        index = dist / "index.html"
        if not index.is_file():
            page = _NOT_BUILT.replace("{dist}", html.escape(str(dist)))
            return HTMLResponse(page, status_code=404, headers={"Cache-Control": NO_CACHE})
        return _file(index, NO_CACHE)
    root = dist.resolve()
    file = (root / path).resolve()
    # resolve() follows links and "..": whatever it names must still be inside dist.
    if not file.is_relative_to(root) or not file.is_file():
        raise OrchError("NOT_FOUND", f"no file {path[:200]!r} in the web UI's build",
                        param="path")
    return _file(file, IMMUTABLE if path.startswith("assets/") else NO_CACHE)


def _file(file: Path, cache: str) -> FileResponse:
    return FileResponse(file, headers={"Cache-Control": cache,
                                       "X-Content-Type-Options": "nosniff"})
