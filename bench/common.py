"""Shared pieces of the sampler benchmarks: model shapes, FLOP count, matmul peak, memory, timing.

Used by `bench_sampler.py` (our sampler), `reference_timing.py` (the reference's loop on the same
weights) and `profile_sampler.py`. Nothing here is imported by `infinity_core`.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from infinity_core.model.config import INFINITY_PRESETS, InfinityConfig  # noqa: E402
from infinity_core.model.conditioning import TextEmbedding  # noqa: E402
from infinity_core.sampling.memory import kv_cache_bytes  # noqa: E402
from infinity_core.sampling.plan import net_scales  # noqa: E402
from infinity_core.schedules import ScaleSchedule  # noqa: E402

TINY_FIXTURE = Path(__file__).resolve().parents[2] / "shared/fixtures/infinity_ref/model_a/infinity_tiny_a.safetensors"
# the public fixture's model A (infinity_tiny_a.json), used when the fixture file is absent
TINY_CONFIG = InfinityConfig(depth=4, embed_dim=64, num_heads=2, bits_per_token=16, text_channels=128)
SIZES = {"tiny": None, "layer12": "infinity_layer12", "2b": "infinity_2b"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SEED = 0            # weights
TEXT_SEED = 21      # text features
TEXT_TOKENS = 32    # ~ a short T5 prompt
SAMPLER = dict(cfg=3.0, tau=0.5, top_k=0, top_p=0.97)   # the released scripts' settings (B = 1)
TEMPLATE = 1.0      # square images
# what our sampler runs (infinity_core.sampling.speed.SpeedSettings fields); the reference gets the same cfg list
MODES = {
    "exact": dict(pruning="off", unguided_last_scales=0),
    "truncated": dict(pruning="off", unguided_last_scales=2),   # cfg 1 on the last two scales
    "fastvar": dict(pruning="fastvar", unguided_last_scales=0),  # FastVAR's setting: prune 2 scales, skip 2
    "prune": dict(pruning="prune", unguided_last_scales=0),      # prune the last 4 scales, skip none
}


# ---- models and inputs ---------------------------------------------------------------------------
def tiny_fixture_path(explicit: str | None = None) -> Path | None:
    path = Path(explicit or os.environ.get("INFINITY_TINY_FIXTURE", TINY_FIXTURE))
    return path if path.exists() else None


def size_config(size: str) -> InfinityConfig:
    if size == "tiny":
        path = tiny_fixture_path()
        if path is not None:
            from infinity_core.files.loading import transformer_state_dict
            return transformer_state_dict(path)[0]
        return TINY_CONFIG
    return INFINITY_PRESETS[SIZES[size]]


def build_ours(size: str, dtype: torch.dtype, device: str):
    """Our transformer with the benchmark's weights: the tiny fixture file, or seeded random weights."""
    from infinity_core.files.random_models import random_transformer
    if size == "tiny" and tiny_fixture_path() is not None:
        from infinity_core.files.loading import load_transformer
        return load_transformer(tiny_fixture_path(), dtype=dtype, device=device), f"fixture {tiny_fixture_path().name}"
    return random_transformer(size_config(size), seed=SEED, dtype=dtype, device=device), f"random weights (seed {SEED})"


def text_features(config: InfinityConfig, tokens: int = TEXT_TOKENS) -> torch.Tensor:
    return torch.randn(tokens, config.text_channels, generator=torch.Generator().manual_seed(TEXT_SEED))


def text_embedding(config: InfinityConfig, tokens: int = TEXT_TOKENS) -> TextEmbedding:
    return TextEmbedding.from_single(text_features(config, tokens))


def schedule_for(budget: str) -> ScaleSchedule:
    return ScaleSchedule(TEMPLATE, budget)


def mode_setup(mode: str, config: InfinityConfig, schedule: ScaleSchedule):
    """(our SamplerSettings, our pruning policy, the reference's cfg list) of a benchmark mode."""
    from infinity_core.sampling.sampler import SamplerSettings
    from infinity_core.sampling.speed import SpeedSettings
    settings, policy = SpeedSettings(**MODES[mode]).apply(SamplerSettings(**SAMPLER), schedule, config.depth)
    return settings, policy, settings.per_scale(schedule.num_scales)[0]


# ---- FLOPs ---------------------------------------------------------------------------------------
def model_flops(config: InfinityConfig, schedule: ScaleSchedule, text_tokens: int, batch: int = 1,
                guided: bool = True, guided_scales: int | None = None, pruning=None) -> dict[str, float]:
    """Multiply-adds x 2 of one image's sampling loop (the work any implementation must do).

    Notation: R = rows = 2B with CFG (B without), N layers, C width, M MLP width, d bits per token,
    T text tokens, Ct text channels, L_s tokens of scale s, K_s = L_0 + ... + L_s (KV length).

      per scale s, per row:
        blocks     N * [ 2 * L_s * (6 C^2 + 2 C M)    linear layers: SA qkv 3C^2 + proj C^2,
                                                       CA q C^2 + proj C^2, FFN 2 C M
                       + 4 * L_s * K_s * C             self-attention QK^T and AV over the KV cache
                       + 4 * L_s * T * C ]             cross-attention to the text
        head       2 * L_s * C * 2d                  (on R rows: guidance mixes logits)
        word_embed 2 * L_{s+1} * d * C               (next scale's input; B rows, then repeated)
      once per image, per row:
        text       2 T (Ct C + C^2)  [text_proj_for_ca]  + 2 T Ct 2C + 2 C^2  [attention pool]
                   + N * 2 T C 2C    [cross-attention keys/values of every layer]
                   + 2 C 6C + 2 C 2C [shared AdaLN, head AdaLN]

    Norms, RoPE, softmax and sampling are not counted (O(L C), negligible next to the above). The
    reference recomputes the text keys/values at every scale (`reference_extra`), which is not counted
    as useful work. What our faster modes run instead: with `guided_scales` = g, R = B from scale g on
    (and the head on B rows); with `pruning`, skipped scales cost nothing and in a pruned layer L_s is
    the kept count and K_s counts that layer's kept keys.
    """
    N, C, M, d = config.depth, config.embed_dim, config.mlp_hidden, config.bits_per_token
    T, Ct = text_tokens, config.text_channels
    R0 = batch * (2 if guided else 1)
    g = len(schedule.tokens_per_scale) if guided_scales is None else guided_scales
    linear = attn = cross = head = embed = 0.0
    tokens = schedule.tokens_per_scale
    run = net_scales(pruning, len(tokens))
    keys = [0] * N  # keys each layer holds
    per_scale = []
    for s, L in enumerate(tokens[:run]):
        R = R0 if s < g else batch
        plan = pruning.plan(s) if pruning is not None else None
        computed = [plan.keep(L) if plan is not None and plan.prunes(i) else L for i in range(N)]
        keys = [k + c for k, c in zip(keys, computed)]
        scale = dict(linear=R * 2 * sum(computed) * (6 * C * C + 2 * C * M),
                     attn=R * 4 * C * sum(c * k for c, k in zip(computed, keys)),
                     cross=R * 4 * sum(computed) * T * C, head=(R if s < g else batch) * 2 * L * C * 2 * d,
                     embed=batch * 2 * tokens[s + 1] * d * C if s + 1 < run else 0)
        linear, attn, cross = linear + scale["linear"], attn + scale["attn"], cross + scale["cross"]
        head, embed = head + scale["head"], embed + scale["embed"]
        per_scale.append(float(sum(scale.values())))
    R = R0
    text = R * (2 * T * (Ct * C + C * C) + 2 * T * Ct * 2 * C + 2 * C * C + N * 2 * T * C * 2 * C
                + 2 * C * 6 * C + 2 * C * 2 * C)
    total = linear + attn + cross + head + embed + text
    extra = R * N * 2 * T * C * 2 * C * (len(tokens) - 1)
    return dict(total=total, block_linear=linear, self_attention=attn, cross_attention=cross, head=head,
                word_embed=embed, text_setup=text, reference_extra=extra, per_scale=per_scale)


# ---- matmul peak ---------------------------------------------------------------------------------
def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _onednn_linear():
    """oneDNN's fp32 matmul as torch exposes it on CPU (private op used by inductor), or None."""
    op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return None
    try:
        op(torch.ones(2, 2), torch.ones(2, 2), None, "none", [], "")
        return op
    except Exception:
        return None


def _matmuls(dtype: torch.dtype, device: str) -> dict:
    """name -> f(a [m,k], b [k,n] contiguous, bt [n,k] contiguous): torch.mm (MKL on CPU) and oneDNN.
    CPU bf16/fp16: F.linear (oneDNN), which is what the model runs there; torch.mm has no fast CPU
    kernel for them (~1 GFLOP/s on the 2-core test VM: a 2048^3 probe would take half a minute)."""
    if torch.device(device).type == "cpu" and dtype != torch.float32:
        return {"F.linear": lambda a, b, bt: torch.nn.functional.linear(a, bt)}
    out = {"torch.mm": lambda a, b, bt: torch.mm(a, b)}
    if torch.device(device).type == "cpu" and dtype == torch.float32 and _onednn_linear() is not None:
        op = _onednn_linear()
        out["onednn"] = lambda a, b, bt: op(a, bt, None, "none", [], "")
    return out


def _torch_mm_peak(by_shape: dict) -> float:
    # the BLAS baseline: torch.mm, or the only kernel measured (CPU half precision: F.linear)
    return max((v for k, v in by_shape.items() if k.startswith("torch.mm")), default=max(by_shape.values()))


def matmul_peak(dtype: torch.dtype, device: str, config: InfinityConfig | None = None,
                budget_s: float = 4.0) -> dict:
    """Best achieved FLOP/s of a plain matmul in this process: square 1024/2048 and, given a config, the
    model's FFN shape at a 256-token scale with CFG (512 x C @ C x M). On CPU float32 both torch.mm
    (MKL sgemm) and oneDNN's matmul are measured (on the AMD EPYC test machine oneDNN is ~20% faster);
    the peak is the best of all."""
    shapes = [(1024, 1024, 1024), (2048, 2048, 2048)]
    if config is not None:
        shapes.append((512, config.embed_dim, config.mlp_hidden))
    kernels = _matmuls(dtype, device)
    out = {}
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device).to(dtype)
        b = torch.randn(k, n, device=device).to(dtype)
        bt = b.t().contiguous()
        for name, fn in kernels.items():
            for _ in range(2):
                fn(a, b, bt)
            _sync(device)
            best, spent, reps = float("inf"), 0.0, 0
            while reps < 3 or (spent < budget_s / len(shapes) / len(kernels) and reps < 200):
                t0 = time.perf_counter()
                fn(a, b, bt)
                _sync(device)
                dt = time.perf_counter() - t0
                best, spent, reps = min(best, dt), spent + dt, reps + 1
            out[f"{name} {m}x{k}@{k}x{n}"] = 2 * m * k * n / best
    return dict(peak=max(out.values()), peak_torch_mm=_torch_mm_peak(out),
                by_shape=out)


def merge_peaks(*peaks: dict) -> dict:
    """Best of several `matmul_peak` measurements (before and after the timed runs: the machine is noisy)."""
    by_shape = {k: max(p["by_shape"][k] for p in peaks) for k in peaks[0]["by_shape"]}
    return dict(peak=max(by_shape.values()),
                peak_torch_mm=_torch_mm_peak(by_shape),
                by_shape=by_shape, measurements=[p["peak"] for p in peaks])


# ---- memory --------------------------------------------------------------------------------------
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def current_rss() -> int:
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else 0


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark (VmHWM) to the current RSS; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_since_reset() -> int | None:
    kib = _status_kib("VmHWM")
    return kib * 1024 if kib is not None else None


def process_peak_rss() -> int:
    """Peak RSS of the whole process lifetime (ru_maxrss, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_bound(config: InfinityConfig, schedule: ScaleSchedule, weights_bytes: int, dtype: torch.dtype,
                 batch: int = 1, guided: bool = True) -> dict:
    """The issue's target: weights + theoretical KV cache (2 CFG halves x layers x tokens x width x 2 (K and V)
    in the compute dtype), plus 10%."""
    kv = kv_cache_bytes(config, schedule, batch * (2 if guided else 1), dtype)
    return dict(weights=weights_bytes, kv_cache=kv, bound=int(1.1 * (weights_bytes + kv)))


def tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.device.type)
        if key in seen or t.device.type == "meta":
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    return total


def live_tensor_peak(run) -> int:
    """Peak bytes of the tensors `run` creates and holds at once (one extra, untimed run; CPU)."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from live_bytes import LiveBytes  # the tracker the memory-estimate tests use
    meter = LiveBytes()
    with meter, torch.no_grad():
        run()
    return meter.peak


# ---- timing ----------------------------------------------------------------------------------------
_PROBE: dict = {}


def probe_peak(dtype: torch.dtype, device: str, n: int = 1024, reps: int = 3) -> float:
    """A quick matmul FLOP/s probe (best of `reps` n^3 matmuls with every kernel of `_matmuls`): the
    machine's speed right now. On a shared host the fp32 matmul rate drifts by 2-3x within seconds,
    so each timed run is compared with probes taken right before and after it."""
    key = (dtype, str(device), n)
    if key not in _PROBE:
        a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
        _PROBE[key] = (a, b, b.t().contiguous())
    a, b, bt = _PROBE[key]
    best = float("inf")
    for fn in _matmuls(dtype, device).values():
        for _ in range(reps):
            _sync(device)
            t0 = time.perf_counter()
            fn(a, b, bt)
            _sync(device)
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
        _sync(device)
    times, probes, spent = [], [], 0.0
    while True:
        if probe is not None:
            probes.append(probe())
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
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
        _sync(device)
    ta, tb, ca, cb, spent = [], [], [], [], 0.0
    while True:
        order = (("a", fn_a), ("b", fn_b)) if len(ta) % 2 == 0 else (("b", fn_b), ("a", fn_a))
        pair, cpu = {}, {}
        for name, fn in order:
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
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
    `flops`: the work this run does (default: `model_flops` of the full guided loop); `estimate_bytes`:
    the core's working-memory estimate, reported next to the peak (weights added)."""
    device, dtype = spec["device"], DTYPES[spec["dtype"]]
    is_cuda = torch.device(device).type == "cuda"
    if is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = current_rss()
    load_before = os.getloadavg()
    hwm_reset = reset_peak_rss()
    timing = time_runs(run, device, spec["repeats"], spec["min_time"], spec["max_time"],
                       probe=lambda: probe_peak(dtype, device))
    hwm = peak_rss_since_reset() if hwm_reset else None          # before anything else allocates
    cuda_peak = torch.cuda.max_memory_allocated() if is_cuda else None
    process_peak = process_peak_rss()
    peak = merge_peaks(peak_before, matmul_peak(dtype, device, config))
    peak["peak"] = max(peak["peak"], *timing["local_peaks"])

    mem = dict(memory_bound(config, schedule, weights_bytes, dtype), baseline_rss=baseline_rss, imports_rss=imports_rss,
               rss_before_sampling=rss_before, process_peak_rss=process_peak)
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
        mem["peak_tensors"] = weights_bytes + live_tensor_peak(run)
        mem["tensors_over_bound"] = mem["peak_tensors"] / mem["bound"]

    flops = flops or model_flops(config, schedule, text_tokens)
    local = [flops["total"] / t / p for t, p in zip(timing["times"], timing["local_peaks"])]
    return dict(
        tokens=schedule.num_tokens, scales=schedule.num_scales, text_tokens=text_tokens, timing=timing,
        s_per_image=timing["median"], tokens_per_s=schedule.num_tokens / timing["median"], flops=flops,
        flops_per_s=flops["total"] / timing["median"], matmul=peak,
        frac_of_peak=flops["total"] / timing["median"] / peak["peak"],
        frac_of_torch_mm_peak=flops["total"] / timing["median"] / peak["peak_torch_mm"],
        frac_of_local_peak=statistics.median(local), memory=mem, machine=machine_info(device),
        loadavg_1min=dict(before=load_before[0], after=os.getloadavg()[0]))


# ---- misc ----------------------------------------------------------------------------------------
def machine_info(device: str) -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    info = dict(cpu=cpu, cores=os.cpu_count(), torch=torch.__version__, threads=torch.get_num_threads(),
                python=platform.python_version())
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "infinity_core"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


RESULT_PREFIX = "BENCH_RESULT "


def emit_result(result: dict) -> None:
    """Workers print their result as one tagged JSON line on stdout."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_worker(argv: list[str], timeout: float | None = None, env: dict | None = None) -> dict:
    """Run a worker in a fresh interpreter (so peak RSS is per case); its stderr passes through."""
    proc = subprocess.run([sys.executable, *argv], stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=str(REPO_ROOT))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stdout.splitlines()[-15:])
        return dict(error=f"worker exited with {proc.returncode}", output_tail=tail)
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def gib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**30:.3f}" if n < 2**30 else f"{n / 2**30:.2f}"
