"""Benchmark of the sampling loop (`infinity_core.sampler.sample`): seconds per image, tokens/s,
achieved FLOP/s against a matmul peak measured in the same process, and peak memory against the
bound "weights + theoretical KV cache + 10%".

    python bench/bench_sampler.py              # tiny, layer12, 2b at 0.06M and 0.25M (2b 0.25M skipped)
    python bench/bench_sampler.py --sizes tiny,layer12 --budgets 0.06M --repeats 5
    python bench/bench_sampler.py --include-slow                   # also 2b at 0.25M (~2 min per run on 2 cores)
    python bench/bench_sampler.py --reference-repo ~/src/Infinity  # same cases through the reference, same run

Every case runs in a fresh interpreter (sequentially), so peak RSS is per case and the 2B model's
~9 GiB is freed before the next one. Only the loop is timed: no T5, no VAE decode. B = 1, cfg 3,
tau 0.5, top_p 0.97, ~32 random text tokens, square template, one warm-up run, median of the
timed runs. Results: a markdown table on stdout and bench/results/<timestamp>.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
SLOW_CASES = {("2b", "0.25M"), ("2b", "0.60M"), ("2b", "1M")}


# ---- worker: one case, in its own process -----------------------------------------------------------
def run_case(spec: dict) -> dict:
    from infinity_core.sampler import SamplerSettings, make_generators, sample

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device, dtype = spec["device"], common.DTYPES[spec["dtype"]]
    imports_rss = common.current_rss()
    config = common.size_config(spec["size"])
    peak = common.matmul_peak(dtype, device, config)
    baseline_rss = common.current_rss()  # after imports and a first matmul (BLAS/OpenMP warmed up)

    t0 = time.perf_counter()
    model, source = common.build_ours(spec["size"], dtype, device)
    build_s = time.perf_counter() - t0
    weights = common.tensor_bytes(model.state_dict().values())
    schedule = common.schedule_for(spec["budget"])
    text = common.text_embedding(config)
    settings = SamplerSettings(**common.SAMPLER)
    gen_device = device if torch.device(device).type == "cuda" else "cpu"

    def run():
        return sample(model, text, schedule, generators=make_generators(0, 1, device=gen_device), settings=settings,
                      device=device, compute_dtype=dtype)

    out = dict(
        impl="ours", size=spec["size"], budget=spec["budget"], device=device, dtype=spec["dtype"], source=source,
        config=dict(depth=config.depth, embed_dim=config.embed_dim, heads=config.num_heads, mlp=config.mlp_hidden,
                    bits=config.bits_per_token, text_channels=config.text_channels),
        params=sum(p.numel() for p in model.parameters()), build_s=build_s)
    out.update(common.measure(run, spec=spec, config=config, schedule=schedule, text_tokens=text.lens[0],
                              weights_bytes=weights, baseline_rss=baseline_rss, imports_rss=imports_rss,
                              peak_before=peak))
    return out


# ---- parent: cases, table, JSON ---------------------------------------------------------------------
def fmt_row(r: dict, ref: dict | None = None) -> str:
    if "error" in r:
        return f"| {r.get('size', '?')} | {r.get('budget', '?')} | {r.get('impl', '?')} | error: {r['error']} |"
    m = r["memory"]
    speed = ""
    if r["impl"] == "ours" and ref and "error" not in ref:
        speed = f"{ref['s_per_image'] / r['s_per_image']:.2f}x"
        if ref.get("paired"):
            speed += f" / {ref['paired']['speedup_median']:.2f}x"
    return (f"| {r['size']} | {r['budget']} | {r['impl']} | {r['s_per_image']:.4g} | {r['timing']['runs']} | "
            f"{r['tokens_per_s']:.4g} | {r['flops']['total'] / 1e9:.4g} | {r['flops_per_s'] / 1e9:.4g} | "
            f"{r['matmul']['peak_torch_mm'] / 1e9:.4g} / {r['matmul']['peak'] / 1e9:.4g} | "
            f"{100 * r['frac_of_torch_mm_peak']:.0f}% / {100 * r['frac_of_peak']:.0f}% | "
            f"{100 * r.get('frac_of_local_peak', float('nan')):.0f}% | {common.gib(m['peak'])} | "
            f"{common.gib(m['process_peak_rss'])} | {common.gib(m.get('peak_tensors'))} | {common.gib(m['bound'])} | "
            f"{m['peak_over_bound']:.2f} / {m.get('tensors_over_bound', float('nan')):.2f} | {speed} |")


TABLE_HEAD = ("| model | budget | impl | s/image | runs | tokens/s | GFLOP/image | GFLOP/s | "
              "mm peak GFLOP/s (torch.mm / best) | % of peak (torch.mm / best) | % of local probe | peak mem GiB | "
              "process peak RSS GiB | peak tensors GiB | bound GiB | peak/bound (RSS / tensors) | "
              "speed-up vs ref (separate / paired) |\n"
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def print_table(results: list[dict]) -> str:
    lines = [TABLE_HEAD]
    by_case: dict[tuple, dict] = {}
    for r in results:
        if r.get("impl") == "reference":
            by_case[(r.get("size"), r.get("budget"))] = r
    for r in results:
        lines.append(fmt_row(r, by_case.get((r.get("size"), r.get("budget")))))
    first = next((r for r in results if "error" not in r), None)
    if first:
        lines.append("")
        loads = [r["loadavg_1min"]["before"] for r in results if "loadavg_1min" in r]
        lines.append(f"machine: {first['machine']}; dtype {first['dtype']}; device {first['device']}; "
                     f"1-min load average before the cases: {', '.join(f'{x:.1f}' for x in loads)}")
        lines.append("peak mem = " + first["memory"]["peak_kind"] + "; peak tensors = weights + the most bytes "
                     "of tensors the sampler held at once (one extra run under tests/live_bytes.py's tracker; CPU)"
                     "; bound = 1.1 x (weights + KV cache "
                     "2 x layers x tokens x C x 2 in the compute dtype); % of peak = model FLOPs (bench/common.py "
                     "model_flops) / s / matmul FLOP/s measured in the same process (torch.mm = MKL sgemm; best = max "
                     "of torch.mm and oneDNN, common.matmul_peak); % of local probe = median over runs of the same "
                     "against 1024^3 matmul probes (best kernel) taken right before/after each run (the host's "
                     "speed drifts 2-3x); paired speed-up = median t_ref / t_ours of alternating runs in one "
                     "process (reference_timing.py)")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="tiny,layer12,2b", help="comma list of: " + ",".join(common.SIZES))
    p.add_argument("--budgets", default="0.06M,0.25M", help="comma list of pixel budgets (0.06M, 0.25M, 0.60M, 1M)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=list(common.DTYPES))
    p.add_argument("--repeats", type=int, default=3, help="minimum timed runs after one warm-up (median reported)")
    p.add_argument("--min-time", type=float, default=2.0, help="keep repeating short cases until this many seconds")
    p.add_argument("--max-time", type=float, default=60.0, help="stop repeating long cases after this many seconds")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--include-slow", action="store_true", help="also run 2b at 0.25M and above")
    p.add_argument("--reference-repo", default=None,
                   help="local checkout of FoundationVision/Infinity: also time its loop on the same weights "
                        "(bench/reference_timing.py), case by case, in the same run")
    p.add_argument("--no-json", action="store_true", help="do not write bench/results/<timestamp>.json")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        common.emit_result(run_case(json.loads(args.worker)))
        return 0

    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False")
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    budgets = [b.strip() for b in args.budgets.split(",") if b.strip()]
    for s in sizes:
        if s not in common.SIZES:
            p.error(f"unknown size {s!r}; use {list(common.SIZES)}")
    cases = [(s, b) for s in sizes for b in budgets if args.include_slow or (s, b) not in SLOW_CASES]
    skipped = [(s, b) for s in sizes for b in budgets if (s, b) not in cases]
    if skipped:
        print(f"skipping {skipped} (slow; pass --include-slow)", file=sys.stderr)

    results = []
    for size, budget in cases:
        spec = dict(size=size, budget=budget, device=args.device, dtype=args.dtype, repeats=args.repeats,
                    min_time=args.min_time, max_time=args.max_time, threads=args.threads)
        print(f"[bench] ours {size} {budget} ...", file=sys.stderr, flush=True)
        r = common.run_worker([str(HERE / "bench_sampler.py"), "--worker", json.dumps(spec)])
        r.setdefault("impl", "ours"), r.setdefault("size", size), r.setdefault("budget", budget)
        results.append(r)
        if args.reference_repo:
            print(f"[bench] reference {size} {budget} ...", file=sys.stderr, flush=True)
            rr = common.run_worker([str(HERE / "reference_timing.py"), "--reference-repo", args.reference_repo,
                                    "--worker", json.dumps(spec)], env={"TORCHDYNAMO_DISABLE": "1"})
            rr.setdefault("impl", "reference"), rr.setdefault("size", size), rr.setdefault("budget", budget)
            results.append(rr)
        for x in results[-2 if args.reference_repo else -1:]:
            if "error" in x:
                print(f"[bench] {x['impl']} {size} {budget} failed: {x['error']}\n{x.get('output_tail', '')}",
                      file=sys.stderr)
            else:
                print(f"[bench]   {x['impl']}: {x['s_per_image']:.4g} s/image, "
                      f"{100 * x['frac_of_torch_mm_peak']:.0f}% of torch.mm peak, {100 * x['frac_of_peak']:.0f}% of "
                      f"best peak, peak mem {common.gib(x['memory']['peak'])} GiB", file=sys.stderr, flush=True)

    table = print_table(results)
    if not args.no_json:
        out_dir = HERE / "results"
        out_dir.mkdir(exist_ok=True)
        path = out_dir / (time.strftime("%Y%m%d-%H%M%S") + ".json")
        path.write_text(json.dumps(dict(argv=sys.argv[1:], git=common.git_revision(), table=table, results=results),
                                   indent=1))
        print(f"\nwrote {path.relative_to(common.REPO_ROOT)}", file=sys.stderr)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
