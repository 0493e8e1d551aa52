"""`python -m gateway`: refuses bad flags and busy ports in one line; serves otherwise."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import httpx
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


async def run_gateway(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


BAD_ARGS = {
    "unknown-flag": ["--bogus"],
    "not-host-port": ["--listen", "nowhere"],
    "bad-port": ["--listen", "127.0.0.1:99999"],
    "bad-int": ["--max-body-bytes", "zero"],
    "max-n-zero": ["--max-n", "0"],
    "missing-config": ["--config", "/does/not/exist.toml"],
}


@pytest.mark.parametrize("args", BAD_ARGS.values(), ids=BAD_ARGS.keys())
async def test_bad_arguments_exit_2_with_one_line(args):
    proc = await run_gateway(*args)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert len(err.decode().strip().splitlines()) == 1, err


async def test_busy_port_exits_2_with_one_line():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        proc = await run_gateway("--listen", f"127.0.0.1:{busy.getsockname()[1]}")
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "cannot bind" in lines[0]


async def test_serves_the_openai_api_and_stops_on_sigterm(orchestrator):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = await run_gateway("--listen", f"127.0.0.1:{port}",
                             "--orchestrator", orchestrator.address)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            for _ in range(600):  # until it listens; bounded so a broken start fails
                try:
                    r = await c.get("/v1/models")
                    break
                except httpx.ConnectError:
                    assert proc.returncode is None, await proc.stderr.read()
                    await asyncio.sleep(0.05)
            assert r.status_code == 200 and r.json()["data"][0]["id"] == "tiny"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    assert b'"component":"gateway"' in err


def test_main_serves_with_bounded_reads_and_the_configured_limits(monkeypatch, tmp_path):
    """The server `python -m gateway` runs: the gateway's protocol (read deadlines) and
    the config's max_n and max_body_bytes, flags first."""
    from gateway import main as gateway_main
    from gateway.server import BoundedH11Protocol

    seen = {}

    class Recorder:
        def __init__(self, config):
            seen["config"] = config

        async def serve(self, sockets):
            for s in sockets:
                s.close()

    monkeypatch.setattr(gateway_main, "_Server", Recorder)
    config = tmp_path / "llama-orch.toml"
    config.write_text("[gateway]\nmax_n = 4\nmax_body_bytes = 1000\n")
    assert gateway_main.main(["--listen", "127.0.0.1:0", "--config", str(config)]) == 0
    app = seen["config"].app
    assert issubclass(seen["config"].http, BoundedH11Protocol)
    assert (app.state.max_n, app.state.max_body_bytes) == (4, 1000)
    assert gateway_main.main(["--listen", "127.0.0.1:0", "--config", str(config),
                              "--max-n", "2"]) == 0
    assert seen["config"].app.state.max_n == 2


@pytest.mark.parametrize("origins,allowed", [
    ('[]', None),
    ('["http://localhost:3000", "https://app.example:8443"]', "http://localhost:3000"),
    ('["*"]', "*"),
], ids=["default-none", "listed", "any"])
async def test_cors_origins_come_from_the_config(tmp_path, origins, allowed):
    from gateway import main as gateway_main
    from tests.gateway.conftest import in_process

    seen = {}

    class Recorder:
        def __init__(self, config):
            seen["app"] = config.app

        async def serve(self, sockets):
            for s in sockets:
                s.close()

    config = tmp_path / "llama-orch.toml"
    config.write_text(f"[gateway]\ncors_origins = {origins}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gateway_main, "_Server", Recorder)
        # main runs its own event loop (asyncio.run), hence a thread.
        assert await asyncio.to_thread(
            gateway_main.main, ["--listen", "127.0.0.1:0", "--config", str(config)]) == 0
    # No orchestrator runs here: a preflight never reaches one.
    async with in_process(seen["app"]) as c:
        r = await c.options("/v1/models", headers={"Origin": "http://localhost:3000",
                                                   "Access-Control-Request-Method": "GET"})
    assert r.headers.get("access-control-allow-origin") == allowed


@pytest.mark.parametrize("origins,why", [
    ('"http://a.example"', "must be a list of strings"),
    ('["http://a.example/"]', "is not an origin"),  # a browser's Origin has no path
    ('["a.example"]', "is not an origin"),
    ('[3000]', "must be a list of strings"),
], ids=["not-a-list", "with-a-path", "no-scheme", "not-strings"])
def test_a_bad_cors_origin_exits_2_naming_the_setting(tmp_path, capsys, origins, why):
    from gateway import main as gateway_main

    config = tmp_path / "llama-orch.toml"
    config.write_text(f"[gateway]\ncors_origins = {origins}\n")
    assert gateway_main.main(["--listen", "127.0.0.1:0", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "gateway.cors_origins" in err and why in err, err
