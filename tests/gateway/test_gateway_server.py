"""The HTTP server bounds how long a request may take to arrive (gateway.server).

Slow-loris clients, over raw sockets: one that dribbles its headers, one that
dribbles its body, one that connects and says nothing. Each is cut off within its
deadline while other clients keep being served. Deadlines are shortened here (the
defaults are 10 s and 60 s); `python -m gateway` uses the same protocol class.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from gateway import server
from gateway.app import create_app
from tests.gateway.conftest import served

HEADER_S, READ_S = 0.6, 1.5
SLACK_S = 1.5  # scheduling slack on a loaded machine


@pytest.fixture
async def slow_url(orchestrator):
    app = create_app(orchestrator.address)
    async with served(app, read_header_timeout_s=HEADER_S, read_timeout_s=READ_S) as url:
        yield url


async def open_socket(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def dribble(writer: asyncio.StreamWriter, data: bytes, every_s: float = 0.1) -> None:
    """Send `data` a byte at a time until it is sent or the server hangs up."""
    for i in range(len(data)):
        try:
            writer.write(data[i:i + 1])
            await writer.drain()
        except (ConnectionError, OSError):
            return
        await asyncio.sleep(every_s)


async def until_closed(reader: asyncio.StreamReader, limit_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started, got = time.monotonic(), b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), limit_s):
            got += chunk
    except ConnectionResetError:
        pass
    return got, time.monotonic() - started


async def served_meanwhile(url: str) -> int:
    """How many requests a normal client completes while the slow one dribbles."""
    done = 0
    async with httpx.AsyncClient(base_url=url, timeout=5) as c:
        for _ in range(5):
            r = await c.get("/v1/models")
            assert r.status_code == 200
            done += 1
            await asyncio.sleep(0.05)
    return done


CHAT_HEAD = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
             b"Content-Type: application/json\r\n")


async def test_dribbled_headers_get_408_and_a_closed_connection(slow_url):
    reader, writer = await open_socket(slow_url)
    slow = asyncio.create_task(dribble(writer, CHAT_HEAD + b"X-Pad: " + b"a" * 200))
    got, took = await until_closed(reader, HEADER_S + SLACK_S + 5)
    assert await served_meanwhile(slow_url) == 5  # others are served all along
    slow.cancel()
    writer.close()
    assert took < HEADER_S + SLACK_S, took
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in head.lower()
    assert json.loads(body)["error"]["code"] == "request_timeout"


async def test_a_dribbled_body_gets_408_within_the_request_deadline(slow_url, orchestrator):
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x" * 300}]})
    reader, writer = await open_socket(slow_url)
    writer.write(CHAT_HEAD + f"Content-Length: {len(body)}\r\n\r\n".encode())
    slow = asyncio.create_task(dribble(writer, body.encode(), every_s=0.05))
    others = asyncio.create_task(served_meanwhile(slow_url))
    got, took = await until_closed(reader, READ_S + SLACK_S + 5)
    slow.cancel()
    writer.close()
    assert await others == 5
    assert took < READ_S + SLACK_S, took
    assert got.startswith(b"HTTP/1.1 408 ")
    assert orchestrator.requests == []  # the route never got a whole body


async def test_a_silent_connection_is_closed(slow_url):
    reader, writer = await open_socket(slow_url)
    got, took = await until_closed(reader, HEADER_S + SLACK_S + 5)
    writer.close()
    assert got == b"" and took < HEADER_S + SLACK_S  # nothing asked, nothing answered


async def test_deadlines_leave_normal_clients_alone(slow_url):
    async with httpx.AsyncClient(base_url=slow_url, timeout=10) as c:
        for _ in range(3):  # keep-alive: one connection, several requests
            r = await c.post("/v1/chat/completions", json={
                "model": "tiny", "messages": [{"role": "user", "content": "Hi"}]})
            assert r.status_code == 200
        # A response that takes longer than every deadline is not cut: only reading is bounded.
        async with c.stream("POST", "/v1/chat/completions", json={
                "model": "tiny", "stream": True,
                "messages": [{"role": "user", "content": "Hi"}]}) as r:
            await asyncio.sleep(READ_S + 0.5)
            assert "[DONE]" in (await r.aread()).decode()


async def test_headers_after_a_keep_alive_pause_get_their_own_deadline(slow_url):
    reader, writer = await open_socket(slow_url)
    writer.write(b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\n\r\n")
    await writer.drain()
    first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert first.startswith(b"HTTP/1.1 200")
    length = int(next(line.split(b":")[1] for line in first.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    await reader.readexactly(length)
    await asyncio.sleep(HEADER_S * 0.8)  # idle, within uvicorn's keep-alive (5 s)
    writer.write(b"GET /v1/models HTTP/1.1\r\n")  # then a second request, never finished
    await writer.drain()
    got, took = await until_closed(reader, HEADER_S + SLACK_S + 5)
    writer.close()
    assert got.startswith(b"HTTP/1.1 408 ") and took < HEADER_S + SLACK_S


def test_the_protocol_carries_its_deadlines():
    cls = server.protocol(read_header_timeout_s=3, read_timeout_s=7)
    assert issubclass(cls, server.BoundedH11Protocol)
    assert (cls.read_header_timeout_s, cls.read_timeout_s) == (3, 7)
    config = server.config(object())
    assert issubclass(config.http, server.BoundedH11Protocol)
    assert (config.http.read_header_timeout_s, config.http.read_timeout_s) == (10.0, 60.0)
