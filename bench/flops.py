"""FLOPs of a run (what each mode computes) and the matmul peak of this machine, for the benchmarks' % of peak."""
from __future__ import annotations

import time

import common
from common import torch
from infinity_core.model.config import InfinityConfig
from infinity_core.sampling.plan import net_scales
from infinity_core.schedules import ScaleSchedule


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


def matmuls(dtype: torch.dtype, device: str) -> dict:
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
    kernels = matmuls(dtype, device)
    out = {}
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device).to(dtype)
        b = torch.randn(k, n, device=device).to(dtype)
        bt = b.t().contiguous()
        for name, fn in kernels.items():
            for _ in range(2):
                fn(a, b, bt)
            common.sync(device)
            best, spent, reps = float("inf"), 0.0, 0
            while reps < 3 or (spent < budget_s / len(shapes) / len(kernels) and reps < 200):
                t0 = time.perf_counter()
                fn(a, b, bt)
                common.sync(device)
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
