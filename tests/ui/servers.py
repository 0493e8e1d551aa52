"""Tiny HTTP servers for the UI's browser tests, on free loopback ports, in threads.

UIServer serves frontend/dist under /ui/ (what the gateway will do) and, for any
other path, one of:
  - nothing: 404 (a GET) or 501 (other methods), as python's http.server answers;
    the UI must then name the missing endpoints in its banner;
  - an `api` object (tests/ui/contract_stub.py) that answers the API in-process;
  - an `upstream` base URL (a real gateway) that requests are proxied to, streamed
    (server-sent events included).
"""

from __future__ import annotations

import http.client
import json
import mimetypes
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol


class Api(Protocol):
    def handle(self, req: Request) -> bool:
        """Answer `req` (via req.send_json / req.start_sse ...) and return True, or
        return False to let the server answer 404/501."""


class Request:
    """One request as the API stub sees it."""

    def __init__(self, handler: BaseHTTPRequestHandler, method: str):
        self.h = handler
        self.method = method
        parsed = urllib.parse.urlsplit(handler.path)
        self.path = urllib.parse.unquote(parsed.path)
        self.raw_path = parsed.path
        self.query = urllib.parse.parse_qs(parsed.query)
        length = int(handler.headers.get("content-length") or 0)
        self.body_bytes = handler.rfile.read(length) if length else b""

    def header(self, name: str) -> str | None:
        return self.h.headers.get(name)

    def json(self) -> Any:
        return json.loads(self.body_bytes or b"{}")

    def send_json(self, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj).encode()
        self.h.send_response(status)
        self.h.send_header("Content-Type", "application/json")
        self.h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.h.send_header(k, v)
        self.h.end_headers()
        self.h.wfile.write(body)

    def send_error(self, status: int, code: str, message: str, param: str | None = None) -> None:
        self.send_json({"error": {"message": message, "type": "invalid_request_error",
                                  "param": param, "code": code}}, status)

    def start_sse(self) -> None:
        self.h.send_response(200)
        self.h.send_header("Content-Type", "text/event-stream")
        self.h.send_header("Cache-Control", "no-cache")
        self.h.end_headers()
        self.h.close_connection = True

    def write(self, text: str) -> bool:
        """Write to an open stream; False once the client has gone."""
        try:
            self.h.wfile.write(text.encode())
            self.h.wfile.flush()
            return True
        except OSError:
            return False


class UIServer:
    def __init__(self, dist: Path, api: Api | None = None, upstream: str | None = None):
        self.dist = dist.resolve()
        self.api = api
        self.upstream = urllib.parse.urlsplit(upstream) if upstream else None
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _any(self, method: str) -> None:
                path = urllib.parse.urlsplit(self.path).path
                if method in ("GET", "HEAD") and (path == "/ui" or path.startswith("/ui/")):
                    server._static(self, path, head=method == "HEAD")
                elif server.upstream is not None:
                    server._proxy(self, method)
                else:
                    req = Request(self, method)
                    if server.api is None or not server.api.handle(req):
                        self._plain(404 if method == "GET" else 501)

            def _plain(self, status: int) -> None:
                body = b"Not Found" if status == 404 else b"Unsupported method"
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._any("GET")

            def do_HEAD(self) -> None:
                self._any("HEAD")

            def do_POST(self) -> None:
                self._any("POST")

            def do_DELETE(self) -> None:
                self._any("DELETE")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def url(self) -> str:
        return self.origin + "/ui/"

    def __enter__(self) -> UIServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.api is not None and hasattr(self.api, "close"):
            self.api.close()
        self.httpd.shutdown()
        self.httpd.server_close()

    # ---- /ui/ from frontend/dist ------------------------------------------------------

    def _static(self, h: BaseHTTPRequestHandler, path: str, head: bool) -> None:
        if path in ("/ui", "/ui/"):
            if path == "/ui":
                h.send_response(308)
                h.send_header("Location", "/ui/")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            rel = "index.html"
        else:
            rel = urllib.parse.unquote(path[len("/ui/"):])
        file = (self.dist / rel).resolve()
        if not file.is_relative_to(self.dist) or not file.is_file():
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        data = file.read_bytes()
        h.send_response(200)
        kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        h.send_header("Content-Type", kind)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if not head:
            h.wfile.write(data)

    # ---- everything else to a real gateway ------------------------------------------------

    def _proxy(self, h: BaseHTTPRequestHandler, method: str) -> None:
        assert self.upstream is not None
        length = int(h.headers.get("content-length") or 0)
        body = h.rfile.read(length) if length else None
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=300)
        headers = {k: v for k, v in h.headers.items()
                   if k.lower() not in ("host", "connection", "accept-encoding")}
        try:
            conn.request(method, h.path, body=body, headers=headers)
            resp = conn.getresponse()
            h.send_response(resp.status)
            streamed = resp.getheader("content-length") is None
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    h.send_header(k, v)
            if streamed:
                h.send_header("Transfer-Encoding", "chunked")
            else:
                h.send_header("Content-Length", resp.getheader("content-length") or "0")
            h.end_headers()
            while True:
                chunk = resp.read1(65536) if streamed else resp.read()
                if not chunk:
                    break
                if streamed:
                    h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                else:
                    h.wfile.write(chunk)
                h.wfile.flush()
                if not streamed:
                    break
            if streamed:
                h.wfile.write(b"0\r\n\r\n")
        except OSError:
            h.close_connection = True
        finally:
            conn.close()
