"""The models folder as the downloader sees it: contained paths, records of verified files, checksums.

A verified file is remembered in `.infinity-downloads.json` beside it (size, mtime, the hub's etag and
commit), so a later run can skip it without hashing it again, also offline.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import DownloadError

RECORD = ".infinity-downloads.json"
HASH_CHUNK = 8 << 20


# ---- paths --------------------------------------------------------------------------------------------------
def safe_join(root: Path, name: str) -> Path:
    """`root/name`, refused unless it stays inside root after resolving `..` and symlinks."""
    root = Path(root).resolve()
    rel = Path(name)
    if rel.is_absolute() or not name or any(p in ("..", "") for p in rel.parts):
        raise DownloadError(f"refusing to write {name!r}: not a plain path inside the models folder", path=str(root),
                            hint="the file list names a path outside the folder; nothing was written")
    path = (root / rel).resolve()
    if path != root and root not in path.parents:
        raise DownloadError(f"refusing to write {name!r}: it resolves outside the models folder ({path})",
                            path=str(root), hint="a symlink inside the models folder points elsewhere; remove it")
    return path


def _record_path(dest: Path) -> Path:
    return dest.parent / RECORD


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def recorded(dest: Path) -> dict | None:
    try:
        entry = json.loads(_record_path(dest).read_text()).get(dest.name)
    except (OSError, ValueError, AttributeError):
        return None
    if entry and dest.is_file() and {k: entry.get(k) for k in ("size", "mtime_ns")} == _stamp(dest):
        return entry
    return None


def record(dest: Path, **info) -> None:
    path = _record_path(dest)
    try:
        table = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        table = {}
    table[dest.name] = dict(_stamp(dest), **info)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
    os.replace(tmp, path)


def is_verified(dest: Path) -> bool:
    return recorded(dest) is not None


# ---- hashing ------------------------------------------------------------------------------------------------
def file_digest(path: Path, etag: str, on_bytes=None) -> str:
    """sha256 of the content for a 64-hex LFS etag; git's blob id (sha1 of "blob <size>\\0" + content) otherwise."""
    if len(etag) == 64:
        h = hashlib.sha256()
    else:
        h = hashlib.sha1()
        h.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return h.hexdigest()
