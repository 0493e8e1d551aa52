"""`python -m gateway`: serve the gateway with uvicorn.

    python -m gateway [--listen 127.0.0.1:8080] [--orchestrator 127.0.0.1:9100]
                      [--orchestrator-metrics http://127.0.0.1:9101/metrics]
                      [--config llama-orch.toml] [--max-body-bytes N] [--max-n N]

--orchestrator-metrics is where /metrics reads the orchestrator's Prometheus text;
by default the --orchestrator host, on the port of the config's
orchestrator.metrics_listen (9101). The gateway section has no key for it: a flag only.
The other way round, `[gateway] cors_origins` (CORS; gateway.app) is a key only.

Flags override the config file, which overrides the defaults (common.config). The
listening socket is bound before uvicorn starts, so a busy port or a bad flag ends
the process with exit status 2 and one line on stderr, never a traceback.

The server reads each request under deadlines (gateway.server: 10 s for the headers,
60 s for the whole request), so slow clients cannot hold connections open.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import Iterator

import uvicorn

from common import log
from common.config import load, split_address
from common.errors import ConfigError
from gateway import server
from gateway.app import create_app
from gateway.metrics import check_metrics_url, default_orchestrator_metrics_url


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"gateway: {message}")


class _Server(uvicorn.Server):
    """uvicorn re-raises a captured SIGTERM after its graceful shutdown, so the process
    would die by the signal; a supervisor (llama-orch up) expects a clean stop to exit 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _OneLineParser(prog="python -m gateway", description=__doc__.splitlines()[0])
    p.add_argument("--listen", help="host:port for HTTP (default 127.0.0.1:8080)")
    p.add_argument("--orchestrator", help="orchestrator gRPC address (default 127.0.0.1:9100)")
    p.add_argument("--orchestrator-metrics", metavar="URL",
                   help="the orchestrator's Prometheus endpoint, merged into /metrics "
                        "(default http://<orchestrator host>:9101/metrics)")
    p.add_argument("--config", help="TOML config file")
    p.add_argument("--max-body-bytes", type=int, help="413 above this (default 4 MiB)")
    p.add_argument("--max-n", type=int, help="the most choices (n) per request (default 8)")
    return p.parse_args(argv)


def bind(address: str) -> socket.socket:
    host, port = split_address(address, "gateway.listen")
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(2048)
    except OSError as exc:
        raise ConfigError(f"cannot bind {address}: {exc.strerror or exc}",
                          param="gateway.listen") from None
    sock.setblocking(False)
    return sock


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        cfg = load(args.config)
        gw = cfg.gateway
        gw.listen = args.listen or gw.listen
        gw.orchestrator = args.orchestrator or gw.orchestrator
        if args.max_body_bytes is not None:
            gw.max_body_bytes = args.max_body_bytes
        if args.max_n is not None:
            gw.max_n = args.max_n
        if gw.max_body_bytes <= 0:
            raise ConfigError("max body bytes must be positive", param="gateway.max_body_bytes")
        if gw.max_n < 1:
            raise ConfigError("max n must be at least 1", param="gateway.max_n")
        cfg.validate()
        split_address(gw.orchestrator, "gateway.orchestrator")
        if args.orchestrator_metrics is not None:
            metrics_url = check_metrics_url(args.orchestrator_metrics)
        else:
            # The port where the config has the orchestrator serve metrics (9101 unless
            # moved), on the host the gateway dials.
            _, port = split_address(cfg.orchestrator.metrics_listen,
                                    "orchestrator.metrics_listen")
            metrics_url = default_orchestrator_metrics_url(gw.orchestrator, port)
        sock = bind(gw.listen)
    except ConfigError as exc:
        print(exc.message, file=sys.stderr)
        return 2
    app = create_app(gw.orchestrator, max_body_bytes=gw.max_body_bytes, max_n=gw.max_n,
                     orchestrator_metrics_url=metrics_url, mode=cfg.mode,
                     cors_origins=gw.cors_origins)
    http = _Server(server.config(app, timeout_graceful_shutdown=5))
    log.emit("gateway", "component.started", f"listening on {gw.listen}",
             listen=gw.listen, orchestrator=gw.orchestrator, orchestrator_metrics=metrics_url)
    asyncio.run(http.serve(sockets=[sock]))
    log.emit("gateway", "component.stopped")
    return 0
