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
