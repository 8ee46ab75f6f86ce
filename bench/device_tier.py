"""Host<->device traffic, syncs and kernel calls of the nodes on a stand-in accelerator, as a table.

    python bench/device_tier.py [--models 2b,8b] [--batches 1,4] [--budget 1M] [--per-scale]

Runs the Infinity Sampler (with its colour previews), Infinity Decode and Infinity Encode with the
released shapes on the `meta` device under tests/device_checker.py (no memory, no compute: counts
only; the same runs `tests/test_device_tier.py` asserts on). "partial" leaves every fourth block on the
host, as ComfyUI's --lowvram does. Counts are deterministic: no timing here.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

from device_tier import decode_run, encode_run, host_bytes, pack_env, sampler_run  # noqa: E402

MIB = 2 ** 20


def _row(what, model, batch, load, checker, handle, scales: bool):
    offloaded = host_bytes(handle.patcher.model)
    total = checker.total
    phases = [t for label, t in checker.phases if label.startswith("scale")] if scales else []
    last = phases[-1] if phases else total
    per_scale = f"{total.kernels / len(phases):7.0f}" if phases else "      -"
    print(f"| {what:7} | {model:3} | {batch} | {load:7} | {total.h2d_bytes / MIB:10.2f} | {total.d2h_bytes / MIB:9.2f} "
          f"| {total.syncs:5} | {per_scale} | {last.kernels:6} | {last.matmuls:6} | {last.attention:5} "
          f"| {offloaded / MIB:9.0f} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="2b,8b")
    p.add_argument("--batches", default="1,4")
    p.add_argument("--budget", default="1M")
    p.add_argument("--per-scale", action="store_true", help="also print the 2B batch-4 sampler scale by scale")
    args = p.parse_args(argv)
    models, batches = args.models.split(","), [int(b) for b in args.batches.split(",")]
    print(f"budget {args.budget}; bytes in MiB; 'last' = the final scale (sampler) or the whole call")
    print("| run     | model | B | load    | host->dev | dev->host | syncs | kernels/scale | last: kernels | matmuls "
          "| sdpa | offloaded |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    with pack_env() as env:
        for model in models:
            for batch in batches:
                for partial in (False, True):
                    load = "partial" if partial else "full"
                    checker, off = sampler_run(env, model, batch, partial, budget=args.budget)
                    _row("sampler", model, batch, load, checker, off, True)
                    if args.per_scale and model == "2b" and batch == max(batches) and not partial:
                        per_scale = checker
                    for what, fn in (("decode", decode_run), ("encode", encode_run)):
                        _row(what, model, batch, load, *fn(env, model, batch, partial, budget=args.budget), False)
        if args.per_scale:
            print("\n2B sampler, batch", max(batches), "full load, scale by scale")
            print("| phase | host->dev MiB | dev->host MiB | syncs | kernels | matmuls | sdpa |")
            print("|---|---:|---:|---:|---:|---:|---:|")
            for label, t in per_scale.phases:
                print(f"| {label} | {t.h2d_bytes / MIB:.3f} | {t.d2h_bytes / MIB:.3f} | {t.syncs} | {t.kernels} "
                      f"| {t.matmuls} | {t.attention} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
