"""A fake Hugging Face Hub on real loopback sockets, enough for the real huggingface_hub
client (HfApi.model_info, hf_hub_download) to fetch from it.

    GET  /api/models/{owner}/{name}[/revision/{rev}][?blobs=true]   -> {id, sha, siblings}
    HEAD /{owner}/{name}/resolve/{rev}/{path}                       -> file metadata headers
    GET  /{owner}/{name}/resolve/{rev}/{path}                       -> regular file bytes
    GET  /cdn/{sha256}            (on a second port, the "CDN")     -> LFS file bytes

As on the Hub: every resolve answer carries X-Repo-Commit; a regular file's ETag is its
git blob id; an LFS file (*.safetensors, *.bin, *.gguf) answers HEAD/GET with a 302 to
the CDN carrying X-Linked-Etag (its sha256) and X-Linked-Size. The CDN listens on another
port, so the client treats it as off-Hub exactly as it treats the real CDN. Ranges
(`bytes=N-`, `bytes=N-M`) are honoured with 206. Errors are 404s with the X-Error-Code
the client maps to its exceptions: RepoNotFound, RevisionNotFound, EntryNotFound.

Tests read `counts` ("api" calls, "head" and "resolve" = HEAD and GET on /resolve,
"get" = file bodies started, "bytes" = body bytes sent) and `ranges` (Range headers
seen), and flip fault switches: `cut_once[path] = n` drops the connection after n body
bytes of the next GET of that file; `corrupt.add(path)` serves flipped bytes of the
right length under the right advertised checksum.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf")
_FLIP = bytes(b ^ 0xFF for b in range(256))


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:"
            f"{hashlib.sha256(data).hexdigest()}\nsize {len(data)}\n").encode()


@dataclass
class _Repo:
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit -> files


class FakeHub:
    """In-memory repos served over HTTP. Use as a context manager, or start()/stop()."""

    def __init__(self) -> None:
        self.repos: dict[str, _Repo] = {}
        self.counts: Counter[str] = Counter()
        self.ranges: list[str] = []
        self.cut_once: dict[str, int] = {}
        self.corrupt: set[str] = set()
        self._lfs: dict[str, tuple[str, bytes]] = {}  # sha256 -> (path, bytes) the CDN serves
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []

    def add_commit(self, repo: str, files: dict[str, bytes], branch: str = "main") -> str:
        """Commit `files` (the whole tree) to `branch` of `repo`; returns the commit id."""
        r = self.repos.setdefault(repo, _Repo())
        parent = r.branches.get(branch, "")
        tree = "".join(f"{p}:{git_blob_id(d)}\n" for p, d in sorted(files.items()))
        commit = hashlib.sha1(f"{repo}\n{parent}\n{len(r.commits)}\n{tree}".encode()).hexdigest()
        r.commits[commit] = dict(files)
        r.branches[branch] = commit
        for path, data in files.items():
            if path.endswith(LFS_SUFFIXES):
                self._lfs[hashlib.sha256(data).hexdigest()] = (path, data)
        return commit

    @property
    def endpoint(self) -> str:
        return self._url(0)

    def start(self) -> FakeHub:
        for _ in range(2):  # the Hub, then the CDN on its own origin
            handler = type("Handler", (_Handler,), {"hub": self})
            server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
            self._servers.append(server)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _url(self, i: int) -> str:
        host, port = self._servers[i].server_address[:2]
        return f"http://{host}:{port}"

    def _count(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self.counts[kind] += n

    def _lookup(self, repo: str, rev: str) -> tuple[str, str, str]:
        """-> (commit, error code, message); the commit is "" on error."""
        r = self.repos.get(repo)
        if r is None:
            return "", "RepoNotFound", f"Repository {repo} not found"
        commit = r.branches.get(rev) or (rev if rev in r.commits else "")
        if not commit:
            return "", "RevisionNotFound", f"Invalid rev id: {rev}"
        return commit, "", ""


_RESOLVE = re.compile(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: FakeHub

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._route(body=False)

    def do_GET(self) -> None:
        self._route(body=True)

    def _route(self, body: bool) -> None:
        url = urlsplit(self.path)
        if url.path.startswith("/api/models/"):
            return self._api(url.path.removeprefix("/api/models/"), parse_qs(url.query))
        if url.path.startswith("/cdn/"):
            blob = self.hub._lfs.get(url.path.removeprefix("/cdn/"))
            if blob is None:
                return self._error(404, "", "no such blob")
            return self._bytes(*blob, body, {})
        m = _RESOLVE.fullmatch(url.path)
        if m is None:
            return self._error(404, "", "not found")
        self._resolve(m[1], unquote(m[2]), unquote(m[3]), body)

    def _api(self, rest: str, query: dict[str, list[str]]) -> None:
        self.hub._count("api")
        repo, sep, rev = rest.partition("/revision/")
        commit, code, msg = self.hub._lookup(repo, unquote(rev) if sep else "main")
        if not commit:
            return self._error(404, code, msg)
        blobs = query.get("blobs") == ["true"]
        siblings = []
        for path, data in sorted(self.hub.repos[repo].commits[commit].items()):
            s: dict[str, object] = {"rfilename": path}
            if blobs:
                lfs = path.endswith(LFS_SUFFIXES)
                pointer = lfs_pointer(data)
                s.update(size=len(data), blobId=git_blob_id(pointer if lfs else data))
                if lfs:
                    s["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                                "pointerSize": len(pointer)}
            siblings.append(s)
        body = json.dumps({"id": repo, "modelId": repo, "sha": commit, "private": False,
                           "siblings": siblings}).encode()
        self._send(200, {"Content-Type": "application/json"}, body)

    def _resolve(self, repo: str, rev: str, path: str, body: bool) -> None:
        commit, code, msg = self.hub._lookup(repo, rev)
        if not commit:
            return self._error(404, code, msg)
        data = self.hub.repos[repo].commits[commit].get(path)
        if data is None:
            return self._error(404, "EntryNotFound", f"{path} not found", {"X-Repo-Commit": commit})
        headers = {"X-Repo-Commit": commit}
        self.hub._count("resolve" if body else "head")
        if not path.endswith(LFS_SUFFIXES):
            return self._bytes(path, data, body, {**headers, "ETag": f'"{git_blob_id(data)}"'})
        sha = hashlib.sha256(data).hexdigest()
        self._send(302, {**headers, "ETag": f'"{git_blob_id(lfs_pointer(data))}"',
                         "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)),
                         "Location": f"{self.hub._url(1)}/cdn/{sha}"}, b"")

    def _bytes(self, path: str, data: bytes, body: bool, headers: dict[str, str]) -> None:
        if path in self.hub.corrupt:
            data = data.translate(_FLIP)
        status, start, end = 200, 0, len(data) - 1
        if rng := self.headers.get("Range"):
            with self.hub._lock:
                self.hub.ranges.append(rng)
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng)
            if m is None or int(m[1]) >= len(data):
                return self._send(416, {"Content-Range": f"bytes */{len(data)}"}, b"")
            status, start = 206, int(m[1])
            end = min(int(m[2]), end) if m[2] else end
            headers = {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"}
        chunk = data[start:end + 1]
        headers = {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if not body:
            return self._send(status, headers, b"", length=len(chunk))
        self.hub._count("get")
        with self.hub._lock:
            cut = self.hub.cut_once.pop(path, None)
        if cut is not None and cut < len(chunk):
            self._send(status, headers, chunk[:cut], length=len(chunk))
            self.hub._count("bytes", cut)
            # Half-close after the partial body: the client sees EOF before Content-Length,
            # the way a dropped connection looks to it.
            self.connection.shutdown(socket.SHUT_WR)
            self.close_connection = True
            return
        self._send(status, headers, chunk)
        self.hub._count("bytes", len(chunk))

    def _error(self, status: int, code: str, message: str,
               extra: dict[str, str] | None = None) -> None:
        headers = {**(extra or {}), "Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, headers, json.dumps({"error": message}).encode())

    def _send(self, status: int, headers: dict[str, str], body: bytes,
              length: int | None = None) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self.wfile.flush()
