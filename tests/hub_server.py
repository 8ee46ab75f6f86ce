"""A stand-in for the Hugging Face Hub's file endpoints on 127.0.0.1, for the real huggingface_hub client.

What the client reads, as huggingface.co serves it:
- `HEAD|GET /{owner}/{repo}/resolve/{revision}/{path}` with `X-Repo-Commit`; revision = "main" or the
  repo's commit hash, else 404 with `X-Error-Code: RevisionNotFound`; a missing file: 404 `EntryNotFound`.
- large ("LFS") files: `302` to a second server (another origin, like the CDN: the client drops its
  token there) with `X-Linked-Etag: "<sha256>"`, `X-Linked-Size`, `ETag`; the CDN serves the bytes with
  `Accept-Ranges`, `Range` -> `206` + `Content-Range`.
- small files: `200` from the hub itself with `ETag: "<git blob sha1>"` and `Content-Length`, Range too.
Faults for the tests: drop the connection after N body bytes (`drop_after`), flip one served byte while
the headers keep the true checksum (`corrupt_at`). Every request is logged (method, path, Range,
whether an Authorization header came along) and body bytes are counted per file.
"""
from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".pth", ".safetensors", ".bin", ".model")


@dataclass
class HostedFile:
    data: bytes
    lfs: bool
    sha256: str = ""
    git_sha1: str = ""

    def __post_init__(self):
        self.sha256 = hashlib.sha256(self.data).hexdigest()
        self.git_sha1 = hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    auth: bool
    server: str


@dataclass
class FakeHub:
    files: dict = field(default_factory=dict)          # (repo, path) -> HostedFile
    commits: dict = field(default_factory=dict)        # repo -> commit hash
    drop_after: dict = field(default_factory=dict)     # repo path -> bytes before the connection drops (once)
    corrupt_at: dict = field(default_factory=dict)     # repo path -> offset of a flipped byte (every time)
    requests: list = field(default_factory=list)
    served: dict = field(default_factory=dict)         # repo path -> body bytes sent
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, repo: str, path: str, data: bytes, lfs: bool | None = None) -> HostedFile:
        self.commits.setdefault(repo, hashlib.sha1(repo.encode()).hexdigest())
        hosted = HostedFile(data, path.endswith(LFS_SUFFIXES) if lfs is None else lfs)
        self.files[(repo, path)] = hosted
        return hosted

    def by_sha(self, sha: str):
        return next(((k, f) for k, f in self.files.items() if f.sha256 == sha), (None, None))

    # ---- lifetime ----
    def start(self) -> "FakeHub":
        self._servers = [ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, role)) for role in ("hub", "cdn")]
        for server in self._servers:
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_port}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_port}"

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def bytes_served(self, path: str) -> int:
        return sum(n for (repo, p), n in self.served.items() if p == path)


_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


def _handler(hub: FakeHub, role: str):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def handle(self):
            try:
                super().handle()
            except (ConnectionResetError, BrokenPipeError):  # a client that cancelled mid-body
                pass

        def do_HEAD(self):
            self._serve(body=False)

        def do_GET(self):
            self._serve(body=True)

        def _serve(self, body: bool):
            url = urlparse(self.path)
            with hub.lock:
                hub.requests.append(Request(self.command, unquote(url.path), self.headers.get("Range"),
                                            "authorization" in {k.lower() for k in self.headers}, role))
            if role == "cdn":
                key, hosted = hub.by_sha(url.path.strip("/"))
                if hosted is None:
                    return self._empty(404)
                return self._content(key, hosted, body, {"ETag": f'"{hosted.sha256}"'})
            m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", unquote(url.path))
            if not m:
                return self._empty(404, {"X-Error-Code": "RepoNotFound"})
            repo, revision, path = m.groups()
            commit = hub.commits.get(repo)
            if commit is None:
                return self._empty(401, {"X-Error-Code": "RepoNotFound"})
            if revision not in ("main", commit):
                return self._empty(404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"})
            hosted = hub.files.get((repo, path))
            if hosted is None:
                return self._empty(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
            headers = {"X-Repo-Commit": commit}
            if hosted.lfs:
                headers.update({"X-Linked-Etag": f'"{hosted.sha256}"', "X-Linked-Size": str(len(hosted.data)),
                                "ETag": f'"{hosted.sha256}"', "Location": f"{hub.cdn}/{hosted.sha256}?f={path}"})
                return self._empty(302, headers)
            headers["ETag"] = f'"{hosted.git_sha1}"'
            return self._content((repo, path), hosted, body, headers)

        def _empty(self, status: int, headers: dict | None = None):
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _content(self, key, hosted: HostedFile, body: bool, headers: dict):
            data, size = hosted.data, len(hosted.data)
            start, end, status = 0, size - 1, 200
            m = _RANGE.match(self.headers.get("Range", "") or "")
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start, end = int(m.group(1)), min(int(m.group(2) or size - 1), size - 1)
                else:
                    start, end = max(0, size - int(m.group(2))), size - 1
                if start >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(end - start + 1))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if not body:
                return
            chunk = bytearray(data[start:end + 1])
            path = key[1]
            flip = hub.corrupt_at.get(path)
            if flip is not None and start <= flip <= end:
                chunk[flip - start] ^= 0xFF
            with hub.lock:
                drop = hub.drop_after.pop(path, None)
            if drop is not None and drop < len(chunk):
                self.wfile.write(chunk[:drop])
                self.wfile.flush()
                self._count(path, drop)
                self.close_connection = True
                self.connection.shutdown(2)  # mid-body: the client sees an incomplete response
                return
            for i in range(0, len(chunk), 1 << 16):  # counted as sent, so a cancelled response counts what left
                self.wfile.write(chunk[i:i + (1 << 16)])
                self._count(path, len(chunk[i:i + (1 << 16)]))

        def _count(self, path: str, n: int):
            with hub.lock:
                hub.served[key_of(path)] = hub.served.get(key_of(path), 0) + n

    def key_of(path: str):
        return ("", path)

    return Handler
