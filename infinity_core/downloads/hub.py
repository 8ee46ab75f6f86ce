"""The Hugging Face Hub, through `huggingface_hub` (>= 0.23; its 0.x and 1.x/2.x clients both work).

Only two calls reach the network: `remote()` (a HEAD on the file's /resolve/ address: size, the LFS
sha256 or git blob id, the commit, and where the bytes are served from) and `fetch()` (a GET of a
file or a byte range, resumed from what is already on disk). Both go through huggingface_hub's own
session, so `HF_ENDPOINT`, `HF_HUB_OFFLINE`, `HF_TOKEN` (or a stored login), proxies from the
environment and its user agent apply as they do for `hf_hub_download`. `HF_ENDPOINT` and
`HF_HUB_OFFLINE` are read when called (huggingface_hub reads them once, at import).
"""
from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlparse

from ..errors import DownloadError

log = logging.getLogger(__name__)

RETRIES = 5  # attempts per file after a dropped connection, each resuming where the last one stopped
_TRANSIENT = {"ConnectError", "ConnectTimeout", "ReadTimeout", "ReadError", "RemoteProtocolError", "WriteError",
              "TimeoutException", "ChunkedEncodingError", "ConnectionError", "ProtocolError", "IncompleteRead",
              "PoolTimeout", "NetworkError", "Timeout", "ConnectionResetError", "BrokenPipeError"}
_DISK = {errno.ENOSPC: "the disk is full", errno.EROFS: "the folder is on a read-only file system",
         errno.EACCES: "no permission to write there", errno.EPERM: "no permission to write there",
         errno.EDQUOT: "the disk quota is exceeded"}


class Unreachable(Exception):
    """No connection to the hub (offline mode, no network, DNS or proxy failure); carries the reason."""


def endpoint() -> str:
    from huggingface_hub import constants
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def offline() -> bool:
    from huggingface_hub import constants
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return flag.strip().upper() in {"1", "ON", "YES", "TRUE"} or bool(constants.HF_HUB_OFFLINE)


def resolve_url(repo: str, revision: str, path: str) -> str:
    from huggingface_hub import hf_hub_url
    return hf_hub_url(repo, path, revision=revision, endpoint=endpoint())


@dataclass(frozen=True)
class Remote:
    """What the hub says about one file; `location` serves the bytes (a CDN after an LFS redirect)."""

    url: str
    location: str
    size: int | None
    etag: str | None
    commit: str | None
    headers: dict = field(repr=False, compare=False)

    @property
    def sha256(self) -> str | None:
        """The LFS object id (sha256 of the content); small files carry a git blob id instead."""
        return self.etag if self.etag and len(self.etag) == 64 else None


def _http_status(err: Exception) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _is_transient(err: BaseException) -> bool:
    for cls in type(err).__mro__:
        if cls.__name__ in _TRANSIENT:
            return True
    status = _http_status(err) if isinstance(err, Exception) else None
    return status is not None and (status >= 500 or status in (408, 429))


def _hub_error(err: Exception, url: str) -> Exception:
    """A user-facing error for a failed request (Unreachable for network trouble)."""
    name = type(err).__name__
    if name == "OfflineModeIsEnabled":
        return Unreachable("offline mode is on (HF_HUB_OFFLINE)")
    status = _http_status(err)
    if status in (401, 403) or name == "GatedRepoError":
        return DownloadError(f"the hub refused access ({status}) to {url}",
                             hint="log in with `hf auth login`, or set HF_TOKEN to a token that may read this "
                                  "repository")
    if status == 404 or name in ("EntryNotFoundError", "RemoteEntryNotFoundError", "RevisionNotFoundError",
                                 "RepositoryNotFoundError"):
        return DownloadError(f"the hub has no such file: {url}",
                             hint="the repository may have moved or renamed it; download it by hand from its page")
    if status is not None:
        return DownloadError(f"the hub answered HTTP {status} for {url}", hint="try again later")
    detail = (str(err).splitlines() or [""])[0][:200]
    return Unreachable(f"{name}: {detail}" if detail else name)


def remote(repo: str, revision: str, path: str) -> Remote:
    """HEAD the file (following the hub's own redirects, not the CDN's); raises Unreachable or DownloadError."""
    if offline():
        raise Unreachable("offline mode is on (HF_HUB_OFFLINE)")
    from huggingface_hub import get_hf_file_metadata
    from huggingface_hub.utils import build_hf_headers
    url = resolve_url(repo, revision, path)
    try:
        meta = get_hf_file_metadata(url)
    except Exception as err:  # noqa: BLE001  (requests/httpx/huggingface_hub errors differ by version)
        raise _hub_error(err, url) from None
    headers = dict(build_hf_headers())
    if urlparse(meta.location).netloc != urlparse(url).netloc:  # a signed CDN address: the token stays on the hub
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    return Remote(url, meta.location, meta.size, meta.etag, meta.commit_hash, headers)


class _Bar:
    """huggingface_hub's http_get reports every chunk to a tqdm-like bar: count it, tell the caller, and
    stop a response that sends more than was asked for (a server that ignored the Range header)."""

    def __init__(self, done: int, limit: int, on_bytes: Callable[[int], None] | None):
        self.n, self.limit, self.on_bytes, self.stopped = done, limit, on_bytes, None

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.limit and self.n > self.limit:
            raise DownloadError(f"the server sent more than the {self.limit} bytes asked for",
                                hint="the server or a proxy ignores byte ranges; try again or another network")
        if self.on_bytes is not None and n > 0:
            try:
                self.on_bytes(n)
            except BaseException as stop:  # the caller's cancel: remembered, so no retry swallows it
                self.stopped = stop
                raise

    def close(self) -> None:
        pass


class _Sink:
    """The part file as http_get sees it: appended to, with `tell()` counting this request's bytes only (0.x
    clients compare it with `expected_size`)."""

    def __init__(self, f):
        self.f, self.n, self.name = f, 0, f.name

    def write(self, data) -> int:
        self.n += len(data)
        return self.f.write(data)

    def tell(self) -> int:
        return self.n


def fetch(rem: Remote, part_path, *, length: int, start: int = 0,
          on_bytes: Callable[[int], None] | None = None) -> None:
    """Append bytes [start + already on disk, start + length) of the remote file to `part_path`, retrying a
    dropped connection from where it stopped. `on_bytes(n)` is called per chunk and may raise to cancel
    (the part file is kept: the next call resumes it). The Range header is ours on every client version
    (huggingface_hub < 0.26 resumed whole files only)."""
    from huggingface_hub.file_download import http_get
    attempts = 0
    while True:
        done = os.path.getsize(part_path) if os.path.exists(part_path) else 0
        if done >= length:
            return
        headers = dict(rem.headers)
        if start + done or length != rem.size:
            headers["Range"] = f"bytes={start + done}-{start + length - 1}"
        bar = _Bar(0, length - done, on_bytes)
        try:
            with open(part_path, "ab") as out:
                http_get(rem.location, _Sink(out), headers=headers, expected_size=length - done, _tqdm_bar=bar)
            return
        except BaseException as err:
            if bar.stopped is not None or isinstance(err, DownloadError):
                raise
            if isinstance(err, OSError) and err.errno in _DISK:
                raise disk_error(err, part_path) from None
            attempts += 1
            if not (_is_transient(err) or "Consistency check failed" in str(err)) or attempts > RETRIES:
                if isinstance(err, Exception):
                    raise _as_download_error(err, rem.url) from None
                raise
            log.warning("connection to %s dropped (%s); resuming at byte %d (attempt %d of %d)", rem.url,
                        type(err).__name__, start + os.path.getsize(part_path), attempts, RETRIES)
            time.sleep(min(0.2 * attempts, 2.0))


def _as_download_error(err: Exception, url: str) -> DownloadError:
    mapped = _hub_error(err, url)
    if isinstance(mapped, DownloadError):
        return mapped
    return DownloadError(f"the download of {url} failed: {mapped}",
                         hint="check the network connection and run again: the download resumes where it stopped")


def is_disk_error(err: BaseException) -> bool:
    """A write failure of the disk itself (full, read-only, quota), which `disk_error` explains."""
    return isinstance(err, OSError) and err.errno in _DISK


def disk_error(err: OSError, path) -> DownloadError:
    reason = _DISK.get(err.errno, err.strerror or type(err).__name__)
    return DownloadError(f"cannot write {path}: {reason}", path=None,
                         hint="free space or choose a writable models folder; nothing was written under the final "
                              "file name (a partial .part file is resumed next time)")
