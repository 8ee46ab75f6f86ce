"""Where the sampling loop's time goes: torch.profiler (operators) and cProfile (Python), one case.

    python bench/profile_sampler.py --size tiny --budget 0.06M
    python bench/profile_sampler.py --size layer12 --budget 0.06M --top 25 --trace /tmp/trace.json

Same model, text and settings as bench_sampler.py. One warm-up run, then one profiled run with each
profiler (each profiler slows the run down; compare shares, not absolute times). Prints the top
operators by self CPU time (with input shapes grouped for the matmuls), the per-scale wall time
(through the sampler's callback) and the top Python functions by own time.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import flops as flop_count  # noqa: E402
import timing  # noqa: E402
from common import torch  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="tiny", choices=list(common.SIZES))
    p.add_argument("--budget", default="0.06M")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=list(common.DTYPES))
    p.add_argument("--mode", default="exact", choices=list(common.MODES), help="what our sampler runs (common.MODES)")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--shapes", action="store_true", help="also group operators by input shapes")
    p.add_argument("--trace", default=None, help="write a Chrome trace of the profiled run here")
    p.add_argument("--scales-only", action="store_true", help="only the per-scale timing (no profilers)")
    args = p.parse_args(argv)

    from infinity_core.sampling.sampler import make_generators, sample
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = args.device, common.DTYPES[args.dtype]
    model, source = common.build_ours(args.size, dtype, device)
    config = model.config
    schedule = common.schedule_for(args.budget)
    text = common.text_embedding(config)
    settings, policy, _ = common.mode_setup(args.mode, config, schedule)
    gen_device = device if torch.device(device).type == "cuda" else "cpu"
    marks = []

    def run(callback=None):
        return sample(model, text, schedule, generators=make_generators(0, 1, device=gen_device), settings=settings,
                      device=device, compute_dtype=dtype, callback=callback, pruning=policy)

    run()
    t0 = time.perf_counter()
    run(lambda prog: marks.append(time.perf_counter()))
    total = time.perf_counter() - t0
    print(f"# {args.size} {args.budget} ({source}), {schedule.num_tokens} tokens, plain run {total:.4f} s")
    from infinity_core.sampling.plan import plan_run
    flops = flop_count.model_flops(config, schedule, text.lens[0],
                               guided_scales=plan_run(schedule, settings, pruning=policy).guided_scales, pruning=policy)
    peak = timing.probe_peak(dtype, device)
    print(f"model {flops['total'] / 1e9:.4g} GFLOP -> {flops['total'] / total / 1e9:.4g} GFLOP/s; "
          f"1024^3 mm probe now: {peak / 1e9:.4g} GFLOP/s")
    prev = t0
    rows = []
    for si, t in enumerate(marks):
        f = flops["per_scale"][si] + (flops["text_setup"] if si == 0 else 0)
        rows.append(f"scale {si} ({schedule.tokens_per_scale[si]:>4} tok): {1e3 * (t - prev):9.2f} ms "
                    f"({100 * (t - prev) / total:4.1f}%)  {f / 1e9:8.3f} GFLOP  {f / (t - prev) / 1e9:7.2f} GFLOP/s")
        prev = t
    print("per scale (wall, incl. setup at scale 0 and sampling):\n  " + "\n  ".join(rows))

    if args.scales_only:
        return 0
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.device(device).type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities, record_shapes=args.shapes) as prof:
        run()
    sort = "self_cuda_time_total" if torch.device(device).type == "cuda" else "self_cpu_time_total"
    print("\n## torch.profiler, operators by self time")
    print(prof.key_averages().table(sort_by=sort, row_limit=args.top))
    if args.shapes:
        print(prof.key_averages(group_by_input_shape=True).table(sort_by=sort, row_limit=args.top))
    if args.trace:
        prof.export_chrome_trace(args.trace)

    print("## cProfile, Python functions by own time")
    pr = cProfile.Profile()
    pr.enable()
    run()
    pr.disable()
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(args.top)
    print(buf.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
