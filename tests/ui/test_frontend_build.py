"""The web UI's sources: they typecheck (vue-tsc), and frontend/dist is what they build
to (so a committed or cached dist is never stale). Needs Node and frontend/node_modules
(`cd frontend && npm ci`); skips without them unless LLAMA_ORCH_REQUIRE_UI=1."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from tests.ui.conftest import DIST, need

FRONTEND = DIST.parent


def npm_ready() -> None:
    need(shutil.which("node") is not None and shutil.which("npm") is not None,
         "Node.js and npm are not installed")
    need((FRONTEND / "node_modules" / ".bin" / "vite").exists(),
         "frontend/node_modules is missing (cd frontend && npm ci)")


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_typecheck():
    npm_ready()
    run = subprocess.run(["npm", "run", "--silent", "typecheck"], cwd=FRONTEND,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr


def test_dist_is_what_the_sources_build_to(tmp_path):
    npm_ready()
    need((DIST / "index.html").is_file(), "frontend/dist is not built")
    out = tmp_path / "dist"
    run = subprocess.run([str(FRONTEND / "node_modules" / ".bin" / "vite"), "build",
                          "--outDir", str(out), "--emptyOutDir", "--logLevel", "warn"],
                         cwd=FRONTEND, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "NO_COLOR": "1"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert digest(out) == digest(DIST), (
        "frontend/dist is stale: rebuild it (make ui, or cd frontend && npm run build)")
