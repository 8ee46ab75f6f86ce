"""Benchmark of the sampling loop (`infinity_core.sampling.sampler.sample`): seconds per image, tokens/s,
achieved FLOP/s against a matmul peak measured in the same process, and peak memory against the
bound "weights + theoretical KV cache + 10%".

    python bench/bench_sampler.py              # tiny, layer12, 2b at 0.06M and 0.25M (2b 0.25M skipped)
    python bench/bench_sampler.py --sizes tiny,layer12 --budgets 0.06M --repeats 5
    python bench/bench_sampler.py --include-slow                   # also 2b at 0.25M (~2 min per run on 2 cores)
    python bench/bench_sampler.py --reference-repo ~/src/Infinity  # same cases through the reference, same run
    python bench/bench_sampler.py --modes exact,truncated,fastvar,prune --budgets 0.25M,1M --reference-repo R

Modes (common.MODES): exact; truncated = cfg 1 on the last two scales (our sampler then drops the
unconditional half; the reference gets the same cfg list and still computes it); fastvar / prune =
token pruning presets (the reference runs unpruned, cfg 3). Every case runs in a fresh interpreter
(sequentially), so peak RSS is per case and the 2B model's ~9 GiB is freed before the next one. Only
the loop is timed: no T5, no VAE decode. B = 1, cfg 3, tau 0.5, top_p 0.97, ~32 random text tokens,
square template, one warm-up run, median of the timed runs. Results: a markdown table on stdout
and bench/results/<timestamp>.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import flops as flop_count  # noqa: E402
import memory  # noqa: E402
import timing  # noqa: E402
from common import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
SLOW_CASES = {("2b", "0.25M"), ("2b", "0.60M"), ("2b", "1M")}


# ---- worker: one case, in its own process -----------------------------------------------------------
def ours_flops(config, schedule, settings, policy, text_tokens: int) -> dict:
    from infinity_core.sampling.plan import plan_run
    guided = plan_run(schedule, settings, pruning=policy).guided_scales
    return flop_count.model_flops(config, schedule, text_tokens, guided=guided > 0, guided_scales=guided,
                                  pruning=policy)


def run_case(spec: dict) -> dict:
    from infinity_core.sampling.sampler import make_generators, sample
    from infinity_core.sampling.speed import run_memory

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device, dtype = spec["device"], common.DTYPES[spec["dtype"]]
    imports_rss = memory.current_rss()
    config = common.size_config(spec["size"])
    peak = flop_count.matmul_peak(dtype, device, config)
    baseline_rss = memory.current_rss()  # after imports and a first matmul (BLAS/OpenMP warmed up)

    t0 = time.perf_counter()
    model, source = common.build_ours(spec["size"], dtype, device)
    build_s = time.perf_counter() - t0
    weights = memory.tensor_bytes(model.state_dict().values())
    schedule = common.schedule_for(spec["budget"])
    text = common.text_embedding(config)
    mode = spec.get("mode", "exact")
    settings, policy, cfg_list = common.mode_setup(mode, config, schedule)
    gen_device = device if torch.device(device).type == "cuda" else "cpu"

    def run():
        return sample(model, text, schedule, generators=make_generators(0, 1, device=gen_device), settings=settings,
                      device=device, compute_dtype=dtype, pruning=policy)

    out = dict(
        impl="ours", mode=mode, cfg_list=cfg_list, pruning=policy.describe(schedule) if policy else None,
        size=spec["size"], budget=spec["budget"], device=device, dtype=spec["dtype"], source=source,
        config=dict(depth=config.depth, embed_dim=config.embed_dim, heads=config.num_heads, mlp=config.mlp_hidden,
                    bits=config.bits_per_token, text_channels=config.text_channels),
        params=sum(p.numel() for p in model.parameters()), build_s=build_s)
    out.update(timing.measure(run, spec=spec, config=config, schedule=schedule, text_tokens=text.lens[0],
                              weights_bytes=weights, baseline_rss=baseline_rss, imports_rss=imports_rss,
                              peak_before=peak, flops=ours_flops(config, schedule, settings, policy, text.lens[0]),
                              estimate_bytes=run_memory(config, schedule, 1, settings, dtype, policy,
                                                        text_tokens=text.lens[0])))
    return out


# ---- parent: cases, table, JSON ---------------------------------------------------------------------
def _speedup(r: dict, ref: dict | None) -> str:
    if r["impl"] != "ours" or not ref or "error" in ref:
        return ""
    text = f"{ref['s_per_image'] / r['s_per_image']:.2f}x"
    if ref.get("paired"):
        text += f" / {ref['paired']['speedup_median']:.2f}x"
        if "cpu_ratio_median" in ref["paired"]:
            text += f" / {ref['paired']['cpu_ratio_median']:.2f}x"
    return text


def fmt_row(r: dict, ref: dict | None = None) -> str:
    mode = r.get("mode", "exact")
    if "error" in r:
        return (f"| {r.get('size', '?')} | {r.get('budget', '?')} | {mode} | {r.get('impl', '?')} "
                f"| error: {r['error']} |")
    m = r["memory"]
    return (f"| {r['size']} | {r['budget']} | {mode} | {r['impl']} | {r['s_per_image']:.4g} | {r['timing']['runs']} | "
            f"{r['tokens_per_s']:.4g} | {r['flops']['total'] / 1e9:.4g} | {r['flops_per_s'] / 1e9:.4g} | "
            f"{100 * r['frac_of_torch_mm_peak']:.0f}% / {100 * r['frac_of_peak']:.0f}% | "
            f"{100 * r.get('frac_of_local_peak', float('nan')):.0f}% | {common.gib(m['peak'])} | "
            f"{common.gib(m.get('peak_tensors'))} | {common.gib(m.get('estimate'))} | {common.gib(m['bound'])} | "
            f"{m['peak_over_bound']:.2f} / {m.get('tensors_over_bound', float('nan')):.2f} | {_speedup(r, ref)} |")


TABLE_HEAD = ("| model | budget | mode | impl | s/image | runs | tokens/s | GFLOP/image (run) | GFLOP/s | "
              "% of peak (torch.mm / best) | % of local probe | peak mem GiB | peak tensors GiB | estimate GiB | "
              "exact bound GiB | peak/bound (RSS / tensors) | speed-up vs ref, same cfg list (separate / paired wall / "
              "paired CPU time) |\n"
              "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def print_table(results: list[dict]) -> str:
    lines = [TABLE_HEAD]
    refs = {(r.get("size"), r.get("budget"), r.get("mode", "exact")): r
            for r in results if r.get("impl") == "reference"}
    for r in results:
        lines.append(fmt_row(r, refs.get((r.get("size"), r.get("budget"), r.get("mode", "exact")))))
    first = next((r for r in results if "error" not in r), None)
    if first:
        lines.append("")
        loads = [r["loadavg_1min"]["before"] for r in results if "loadavg_1min" in r]
        lines.append(f"machine: {first['machine']}; dtype {first['dtype']}; device {first['device']}; "
                     f"1-min load average before the cases: {', '.join(f'{x:.1f}' for x in loads)}")
        lines.append("modes: " + "; ".join(f"{k} = {v}" for k, v in common.MODES.items()) + " (the reference runs "
                     "the same cfg list, unpruned). tokens/s = the schedule's tokens / s (skipped scales count: "
                     "image throughput); GFLOP = the work that mode runs (bench/common.py model_flops); "
                     "peak mem = " + first["memory"]["peak_kind"] + "; peak tensors = weights + the most bytes "
                     "of tensors the sampler held at once (tests/live_bytes.py, CPU); estimate = weights + "
                     "infinity_core.sampling.speed.run_memory; "
                     "exact bound = 1.1 x (weights + KV cache of the exact run); "
                     "% of peak = GFLOP / s / matmul FLOP/s measured in the same process (torch.mm = MKL sgemm; "
                     "best = max of torch.mm and oneDNN); % of local probe = the same against 1024^3 matmul probes "
                     "right before/after each run; paired speed-up = median t_ref / t_ours of alternating runs "
                     "in one process (reference_timing.py), by wall time and by process CPU time")
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
    p.add_argument("--quick", action="store_true", help="skip the extra untimed run that measures peak tensors, "
                   "and the warm-up pair of the paired runs (for the slow cases)")
    p.add_argument("--pairs", type=int, default=0, help="minimum alternating ours/reference pairs (default: --repeats)")
    p.add_argument("--reference-repo", default=None,
                   help="local checkout of FoundationVision/Infinity: also time its loop on the same weights "
                        "(bench/reference_timing.py), case by case, in the same run")
    p.add_argument("--modes", default="exact", help="comma list of: " + ",".join(common.MODES)
                   + " (exact; cfg 1 on the last two scales; FastVAR's setting; pruning without skip)")
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
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in common.MODES:
            p.error(f"unknown mode {m!r}; use {list(common.MODES)}")
    cases = [(s, b) for s in sizes for b in budgets if args.include_slow or (s, b) not in SLOW_CASES]
    skipped = [(s, b) for s in sizes for b in budgets if (s, b) not in cases]
    if skipped:
        print(f"skipping {skipped} (slow; pass --include-slow)", file=sys.stderr)

    results = []
    for size, budget in cases:
        spec = dict(size=size, budget=budget, device=args.device, dtype=args.dtype, repeats=args.repeats,
                    min_time=args.min_time, max_time=args.max_time, threads=args.threads,
                    quick=args.quick, pairs=args.pairs or args.repeats)
        case = []
        for mode in modes:
            print(f"[bench] ours {size} {budget} {mode} ...", file=sys.stderr, flush=True)
            r = common.run_worker([str(HERE / "bench_sampler.py"), "--worker", json.dumps(dict(spec, mode=mode))])
            r.setdefault("impl", "ours"), r.setdefault("size", size), r.setdefault("budget", budget)
            r.setdefault("mode", mode)
            case.append(r)
        if args.reference_repo:
            print(f"[bench] reference {size} {budget} {','.join(modes)} ...", file=sys.stderr, flush=True)
            rr = common.run_worker([str(HERE / "reference_timing.py"), "--reference-repo", args.reference_repo,
                                    "--worker", json.dumps(dict(spec, modes=modes))], env={"TORCHDYNAMO_DISABLE": "1"})
            case += rr["per_mode"] if "per_mode" in rr else [dict(rr, impl="reference", size=size, budget=budget,
                                                                     mode=mode) for mode in modes]
        for x in case:
            if "error" in x:
                print(f"[bench] {x['impl']} {size} {budget} {x['mode']} failed: {x['error']}\n"
                      f"{x.get('output_tail', '')}", file=sys.stderr)
            else:
                print(f"[bench]   {x['impl']} {x['mode']}: {x['s_per_image']:.4g} s/image, "
                      f"{100 * x['frac_of_torch_mm_peak']:.0f}% of torch.mm peak, peak mem "
                      f"{common.gib(x['memory']['peak'])} GiB"
                      + (f", paired speed-up {x['paired']['speedup_median']:.2f}x" if x.get("paired") else ""),
                      file=sys.stderr, flush=True)
        results += case

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
