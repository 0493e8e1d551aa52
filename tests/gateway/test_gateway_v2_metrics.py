"""GET /metrics: the gateway's own exposition followed by the orchestrator's, read from
a live HTTP server here; never a 5xx when that server is down or answers nonsense."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.errors import ConfigError
from gateway.app import create_app
from gateway.metrics import check_metrics_url, default_orchestrator_metrics_url
from tests.gateway.conftest import in_process
from tests.gateway.test_gateway_main import run_gateway

ORCH_TEXT = ('# HELP orchd_queue_depth Jobs waiting, by priority.\n'
             '# TYPE orchd_queue_depth gauge\n'
             'orchd_queue_depth{component="orchestrator",priority="interactive"} 3.0\n')
UP = 'llama_orch_gateway_upstream_metrics_up{component="gateway"}'


class FakeOrchestratorMetrics(ThreadingHTTPServer):
    """Serves `body` with `status` on every GET, and remembers the requests' headers."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.status, self.body = 200, ORCH_TEXT.encode()
        self.headers_seen: list[dict[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/metrics"


class _Handler(BaseHTTPRequestHandler):
    server: FakeOrchestratorMetrics

    def do_GET(self) -> None:
        self.server.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
        self.send_response(self.server.status)
        self.send_header("content-type", "text/plain; version=0.0.4")
        self.send_header("content-length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_metrics() -> Iterator[FakeOrchestratorMetrics]:
    server = FakeOrchestratorMetrics()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/metrics"  # nothing listens there any more


async def scrape(orchestrator, url: str) -> httpx.Response:
    async with in_process(create_app(orchestrator.address, orchestrator_metrics_url=url)) as c:
        await c.get("/v1/models")  # something of the gateway's own to count
        return await c.get("/metrics")


def families(text: str) -> set[str]:
    return {f.name for f in text_string_to_metric_families(text)}


async def test_own_metrics_then_the_orchestrators(orchestrator, fake_metrics):
    r = await scrape(orchestrator, fake_metrics.url)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert f"{UP} 1.0" in text
    assert text.endswith(ORCH_TEXT)  # passed on as is, after the gateway's own
    assert text.index("gateway_http_requests_total") < text.index("orchd_queue_depth")
    assert {"gateway_http_requests", "llama_orch_gateway_upstream_metrics_up",
            "orchd_queue_depth"} <= families(text)
    assert "text/plain;version=0.0.4" in fake_metrics.headers_seen[-1]["accept"]


async def test_orchestrator_unreachable_is_own_metrics_and_up_0(orchestrator):
    r = await scrape(orchestrator, closed_port_url())
    assert r.status_code == 200
    assert f"{UP} 0.0" in r.text
    assert "gateway_http_requests_total" in r.text and "orchd_" not in r.text


# What the orchestrator's port might answer instead of metrics: all mean up 0.
BAD_UPSTREAM = {
    "server-error": (500, ORCH_TEXT.encode()),
    "not-found": (404, b"no metrics here\n"),
    "html": (200, b"<html><body>hello</body></html>\n"),
    "not-utf8": (200, b"orchd_x 1\n\xff\xfe\n"),
}


@pytest.mark.parametrize("status,body", BAD_UPSTREAM.values(), ids=BAD_UPSTREAM.keys())
async def test_unusable_upstream_answer_is_dropped(orchestrator, fake_metrics, status, body):
    fake_metrics.status, fake_metrics.body = status, body
    r = await scrape(orchestrator, fake_metrics.url)
    assert r.status_code == 200
    assert f"{UP} 0.0" in r.text
    assert "orchd_" not in r.text and "html" not in r.text
    families(r.text)  # the whole scrape still parses


async def test_upstream_text_without_final_newline_still_parses(orchestrator, fake_metrics):
    fake_metrics.body = b"orchd_up 1"
    r = await scrape(orchestrator, fake_metrics.url)
    assert r.text.endswith("orchd_up 1\n")
    assert "orchd_up" in families(r.text)


async def test_up_follows_the_orchestrator_from_scrape_to_scrape(orchestrator, fake_metrics):
    app = create_app(orchestrator.address, orchestrator_metrics_url=fake_metrics.url)
    async with in_process(app) as c:
        assert f"{UP} 1.0" in (await c.get("/metrics")).text
        fake_metrics.status = 503
        assert f"{UP} 0.0" in (await c.get("/metrics")).text
        fake_metrics.status = 200
        assert f"{UP} 1.0" in (await c.get("/metrics")).text


@pytest.mark.parametrize("address,url", [
    ("127.0.0.1:9100", "http://127.0.0.1:9101/metrics"),
    ("orch.internal:7000", "http://orch.internal:9101/metrics"),
    ("[::1]:9100", "http://[::1]:9101/metrics"),
], ids=["loopback", "hostname", "ipv6"])
def test_default_url_is_the_orchestrator_host_on_9101(address, url):
    assert default_orchestrator_metrics_url(address) == url


@pytest.mark.parametrize("url", ["http://127.0.0.1:9101/metrics", "https://orch:443/m",
                                 "http://[::1]:9101/metrics"])
def test_metrics_url_accepted(url):
    assert check_metrics_url(url) == url


@pytest.mark.parametrize("url", ["127.0.0.1:9101", "ftp://h/metrics", "http://", "http://h:0/",
                                 "http://h:99999/metrics", "not a url"])
def test_metrics_url_refused(url):
    with pytest.raises(ConfigError):
        check_metrics_url(url)


async def test_bad_orchestrator_metrics_flag_exits_2_with_one_line():
    proc = await run_gateway("--orchestrator-metrics", "ftp://nowhere")
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "--orchestrator-metrics" in lines[0]


async def test_the_flag_points_metrics_at_the_orchestrator(orchestrator, fake_metrics):
    await check_gateway_reads(fake_metrics, "--orchestrator", orchestrator.address,
                              "--orchestrator-metrics", fake_metrics.url)


async def test_by_default_metrics_follow_the_configs_metrics_port(orchestrator, fake_metrics,
                                                                  tmp_path):
    # No flag: the --orchestrator host, on the port of orchestrator.metrics_listen.
    config = tmp_path / "llama-orch.toml"
    config.write_text(f'[orchestrator]\nmetrics_listen = "127.0.0.1:{fake_metrics.server_port}"\n')
    await check_gateway_reads(fake_metrics, "--orchestrator", orchestrator.address,
                              "--config", str(config))


async def check_gateway_reads(fake_metrics, *args: str) -> None:
    """`python -m gateway *args` serves /metrics ending in the fake orchestrator's text."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = await run_gateway("--listen", f"127.0.0.1:{port}", *args)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            for _ in range(600):  # until it listens; bounded so a broken start fails
                try:
                    r = await c.get("/metrics")
                    break
                except httpx.ConnectError:
                    assert proc.returncode is None, await proc.stderr.read()
                    await asyncio.sleep(0.05)
        assert r.status_code == 200 and r.text.endswith(ORCH_TEXT)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    assert fake_metrics.url.encode() in err  # the startup line says where it reads
