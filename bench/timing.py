"""Timing of the benchmarks: matmul probes around each run, repeated and paired (ours/reference) runs, and
`measure`, which puts FLOPs, peaks, memory and times of one case together."""
from __future__ import annotations

import os
import statistics
import time

import common
import flops as flop_count
import memory
from common import torch
from infinity_core.model.config import InfinityConfig
from infinity_core.schedules import ScaleSchedule


_PROBE: dict = {}


def probe_peak(dtype: torch.dtype, device: str, n: int = 1024, reps: int = 3) -> float:
    """A quick matmul FLOP/s probe (best of `reps` n^3 matmuls with every kernel of `flop_count.matmuls`): the
    machine's speed right now. On a shared host the fp32 matmul rate drifts by 2-3x within seconds,
    so each timed run is compared with probes taken right before and after it."""
    key = (dtype, str(device), n)
    if key not in _PROBE:
        a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
        _PROBE[key] = (a, b, b.t().contiguous())
    a, b, bt = _PROBE[key]
    best = float("inf")
    for fn in flop_count.matmuls(dtype, device).values():
        for _ in range(reps):
            common.sync(device)
            t0 = time.perf_counter()
            fn(a, b, bt)
            common.sync(device)
            best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def _enough(n: int, spent: float, last: float, repeats: int, min_time: float, max_time: float) -> bool:
    return n >= 100 or (n >= 1 and spent + last > max_time) or (n >= repeats and spent >= min_time)


def time_runs(fn, device: str, repeats: int, min_time: float, max_time: float, warmup: int = 1,
              probe=None) -> dict:
    """`warmup` untimed runs, then at least `repeats` timed runs (more, up to 100, until `min_time`
    seconds were spent; fewer, but at least one, once `max_time` would be exceeded). Median and min.
    With `probe` (a callable returning FLOP/s), each run also gets `local_peaks[i]` = the better of
    the probes right before and right after it."""
    for _ in range(warmup):
        fn()
        common.sync(device)
    times, probes, spent = [], [], 0.0
    while True:
        if probe is not None:
            probes.append(probe())
        common.sync(device)
        t0 = time.perf_counter()
        fn()
        common.sync(device)
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
        if _enough(len(times), spent, dt, repeats, min_time, max_time):
            break
    out = dict(median=statistics.median(times), min=min(times), runs=len(times), times=times)
    if probe is not None:
        probes.append(probe())
        out["local_peaks"] = [max(probes[i], probes[i + 1]) for i in range(len(times))]
    return out


def paired_runs(fn_a, fn_b, device: str, repeats: int, min_time: float, max_time: float, warmup: int = 1) -> dict:
    """Alternate a and b (a b, b a, a b, ...) in one process and report the per-pair ratios t_b / t_a:
    robust against the host's speed drifting between runs."""
    for _ in range(warmup):
        fn_a(), fn_b()
        common.sync(device)
    ta, tb, ca, cb, spent = [], [], [], [], 0.0
    while True:
        order = (("a", fn_a), ("b", fn_b)) if len(ta) % 2 == 0 else (("b", fn_b), ("a", fn_a))
        pair, cpu = {}, {}
        for name, fn in order:
            common.sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            common.sync(device)
            pair[name], cpu[name] = time.perf_counter() - t0, time.process_time() - c0
        ta.append(pair["a"]), tb.append(pair["b"]), ca.append(cpu["a"]), cb.append(cpu["b"])
        spent += pair["a"] + pair["b"]
        if _enough(len(ta), spent, pair["a"] + pair["b"], repeats, min_time, max_time):
            break
    ratios = [b / a for a, b in zip(ta, tb)]
    # CPU-time ratios too: on a host shared with other jobs a run is descheduled for seconds at a time,
    # which wall time counts and process CPU time (all threads of this process) does not
    cpu_ratios = [b / a for a, b in zip(ca, cb)]
    return dict(ratio_median=statistics.median(ratios), ratios=ratios, times_a=ta, times_b=tb,
                median_a=statistics.median(ta), median_b=statistics.median(tb), cpu_a=ca, cpu_b=cb,
                cpu_ratios=cpu_ratios, cpu_ratio_median=statistics.median(cpu_ratios))


def measure(run, *, spec: dict, config: InfinityConfig, schedule: ScaleSchedule, text_tokens: int,
            weights_bytes: int, baseline_rss: int, peak_before: dict, imports_rss: int | None = None,
            flops: dict | None = None, estimate_bytes: int | None = None) -> dict:
    """Time `run` (see `time_runs`, with matmul probes), read its peak memory, and derive the rates.
    `flops`: the work this run does (default: `flop_count.model_flops` of the full guided loop);
    `estimate_bytes`: the core's working-memory estimate, reported next to the peak (weights added)."""
    device, dtype = spec["device"], common.DTYPES[spec["dtype"]]
    is_cuda = torch.device(device).type == "cuda"
    if is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = memory.current_rss()
    load_before = os.getloadavg()
    hwm_reset = memory.reset_peak_rss()
    timing = time_runs(run, device, spec["repeats"], spec["min_time"], spec["max_time"],
                       probe=lambda: probe_peak(dtype, device))
    hwm = memory.peak_rss_since_reset() if hwm_reset else None          # before anything else allocates
    cuda_peak = torch.cuda.max_memory_allocated() if is_cuda else None
    process_peak = memory.process_peak_rss()
    peak = flop_count.merge_peaks(peak_before, flop_count.matmul_peak(dtype, device, config))
    peak["peak"] = max(peak["peak"], *timing["local_peaks"])

    mem = dict(memory.memory_bound(config, schedule, weights_bytes, dtype), baseline_rss=baseline_rss,
               imports_rss=imports_rss, rss_before_sampling=rss_before, process_peak_rss=process_peak)
    if is_cuda:
        mem["peak"], mem["peak_kind"] = cuda_peak, "torch.cuda.max_memory_allocated during sampling"
    elif hwm_reset:
        mem["peak_rss_sampling"] = hwm
        mem["peak"] = hwm - baseline_rss
        mem["peak_kind"] = "peak RSS while sampling minus RSS before building the model"
    else:
        mem["peak"] = process_peak - baseline_rss
        mem["peak_kind"] = "process peak RSS minus RSS before building the model"
    mem["peak_over_bound"] = mem["peak"] / mem["bound"]
    if estimate_bytes is not None:
        mem["estimate"] = weights_bytes + estimate_bytes
    if not is_cuda and not spec.get("quick"):  # what the sampler itself holds, without the allocator's slack
        mem["peak_tensors"] = weights_bytes + memory.live_tensor_peak(run)
        mem["tensors_over_bound"] = mem["peak_tensors"] / mem["bound"]

    flops = flops or flop_count.model_flops(config, schedule, text_tokens)
    local = [flops["total"] / t / p for t, p in zip(timing["times"], timing["local_peaks"])]
    return dict(
        tokens=schedule.num_tokens, scales=schedule.num_scales, text_tokens=text_tokens, timing=timing,
        s_per_image=timing["median"], tokens_per_s=schedule.num_tokens / timing["median"], flops=flops,
        flops_per_s=flops["total"] / timing["median"], matmul=peak,
        frac_of_peak=flops["total"] / timing["median"] / peak["peak"],
        frac_of_torch_mm_peak=flops["total"] / timing["median"] / peak["peak_torch_mm"],
        frac_of_local_peak=statistics.median(local), memory=mem, machine=common.machine_info(device),
        loadavg_1min=dict(before=load_before[0], after=os.getloadavg()[0]))
