"""Browser fixtures for the web UI's tests: Playwright for Python driving Debian's
Chromium (tools/install_chromium.sh), never a browser Playwright downloads.

Without Chromium, the playwright package or a built frontend/dist these tests skip,
saying which is missing; with LLAMA_ORCH_REQUIRE_UI=1 (CI) each is a failure instead.
Screenshots go to build/ui-artifacts/ (LLAMA_ORCH_UI_ARTIFACTS overrides it).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "frontend" / "dist"
REQUIRE = os.environ.get("LLAMA_ORCH_REQUIRE_UI") == "1"
ARTIFACTS = Path(os.environ.get("LLAMA_ORCH_UI_ARTIFACTS", ROOT / "build" / "ui-artifacts"))

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")


# Root needs --no-sandbox. The rest keeps Chromium off the network: it only ever talks
# to the test's loopback servers (no update, sync, field-trial or DNS-prefetch traffic).
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-quic", "--disable-domain-reliability", "--disable-client-side-phishing-detection",
    "--dns-prefetch-disable", "--metrics-recording-only",
]


def need(ok: bool, why: str) -> None:
    if ok:
        return
    if REQUIRE:
        pytest.fail(f"{why} and LLAMA_ORCH_REQUIRE_UI=1")
    pytest.skip(why)


def chromium_path() -> str | None:
    explicit = os.environ.get("LLAMA_ORCH_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


@pytest.fixture(scope="session")
def dist() -> Path:
    need((DIST / "index.html").is_file(),
         "frontend/dist is not built (make ui, or: cd frontend && npm ci && npm run build)")
    return DIST


# Module scope, not session: Playwright's sync API keeps an asyncio loop running in this
# thread while it is open, which would break every later test that runs its own loop.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    exe = chromium_path()
    need(exe is not None, "Chromium is not installed (run tools/install_chromium.sh)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need(False, "the playwright package is not installed (pip install playwright; "
                    "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1, no browser download needed)")
        raise  # unreachable: need() skipped or failed
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@dataclass
class PageWatch:
    """What a page did that a test wants to see: uncaught errors, console errors, and
    every request (to prove the UI fetches nothing from outside its origin)."""

    page: Any
    origin: str
    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def foreign_requests(self) -> list[str]:
        return [u for u in self.requests
                if not u.startswith((self.origin, "data:", "blob:"))]

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def open_page(browser):
    """open_page(origin) -> PageWatch, a fresh context per call (no shared storage)."""
    contexts = []

    def _open(origin: str, *, width: int = 1400, height: int = 900) -> PageWatch:
        ctx = browser.new_context(viewport={"width": width, "height": height},
                                  color_scheme="light")
        contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(15_000)
        watch = PageWatch(page, origin)
        page.on("pageerror", lambda exc: watch.page_errors.append(str(exc)))
        page.on("console", lambda msg: watch.console_errors.append(msg.text)
                if msg.type == "error" else None)
        page.on("request", lambda req: watch.requests.append(req.url))
        return watch

    yield _open
    for ctx in contexts:
        ctx.close()
