"""Download speed and resume behaviour of infinity_core.downloads.fetch against the stand-in hub on 127.0.0.1.

The stand-in (tests/hub_server.py) serves a random file from memory through the real huggingface_hub
client; the numbers measure our path (HEAD, GET, writing, hashing, renaming), not an internet link.

    python bench/bench_downloads.py [--mb 256] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from hub_server import FakeHub  # noqa: E402
from infinity_core.downloads import fetch as downloads, hub, official as model_files  # noqa: E402

REPO_ID = "FoundationVision/Infinity"


def spec(path: str) -> model_files.ModelFile:
    return model_files.ModelFile(path, path, "infinity", "transformer", path, REPO_ID, "main", path)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=256, help="size of the served file in MB")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    size = args.mb * 1_000_000
    data = os.urandom(size)
    server = FakeHub().start()
    server.add(REPO_ID, "bench/blob.safetensors", data)
    os.environ["HF_ENDPOINT"] = server.endpoint
    os.environ.pop("HF_HUB_OFFLINE", None)
    rows = []
    try:
        full, fetch_only = [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory(dir=REPO) as tmp:
                root = Path(tmp)
                full.append(timed(lambda: downloads.ensure([spec("bench/blob.safetensors")], lambda f: root / f)))
                rem = hub.remote(REPO_ID, "main", "bench/blob.safetensors")
                fetch_only.append(timed(lambda: hub.fetch(rem, root / "raw.part", length=size)))
                hashing = timed(lambda: downloads.file_digest(root / "raw.part", rem.etag))
        rows.append(("download + sha256 + rename (ensure)", statistics.median(full), size))
        rows.append(("transfer only (hub.fetch)", statistics.median(fetch_only), size))
        rows.append(("sha256 of the file", hashing, size))
        with tempfile.TemporaryDirectory(dir=REPO) as tmp:
            root = Path(tmp)
            drop = size // 2
            server.drop_after["bench/blob.safetensors"] = drop
            server.served.clear()
            server.requests.clear()
            seconds = timed(lambda: downloads.ensure([spec("bench/blob.safetensors")], lambda f: root / f))
            served = server.bytes_served("bench/blob.safetensors")
            ranges = [r.range for r in server.requests if r.server == "cdn" and r.method == "GET"]
        rows.append((f"connection dropped at {drop / 1e6:.0f} MB, resumed", seconds, size))
    finally:
        server.stop()
    print(f"| {'case':<40} | {'seconds':>8} | {'MB/s':>8} |")
    print(f"| {'-' * 40} | {'-' * 8}:| {'-' * 8}:|")
    for name, seconds, nbytes in rows:
        print(f"| {name:<40} | {seconds:8.2f} | {nbytes / 1e6 / seconds:8.1f} |")
    print(f"\nresume: requests {ranges}; bytes served {served / 1e6:.1f} MB for a {size / 1e6:.0f} MB file "
          f"({(served - size) / 1e6:.1f} MB fetched twice: the client's last unwritten read chunk)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
