"""Memory estimates, so a run that cannot fit is refused before anything is allocated."""
from __future__ import annotations

import torch

from ..model.config import InfinityConfig, VAEConfig
from ..devices import AttentionPlan
from ..errors import MemoryBudgetError
from ..model.pruning import PruningPolicy
from ..schedules import TEMPLATES, ScaleSchedule
from .plan import RunPlan, net_scales


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def kv_cache_bytes(config: InfinityConfig, schedule: ScaleSchedule, rows: int, dtype: torch.dtype,
                   stored_only: bool = False) -> int:
    """Keys and values of every layer for every token: rows x depth x L x C x 2. With `stored_only`,
    what the sampler actually keeps: the final scale's keys are never stored."""
    tokens = schedule.num_tokens - (schedule.tokens_per_scale[-1] if stored_only else 0)
    return rows * config.depth * tokens * config.embed_dim * 2 * dtype_bytes(dtype)


def attention_bytes(config: InfinityConfig, schedule: ScaleSchedule, rows: int, dtype: torch.dtype,
                    plan: AttentionPlan | None) -> int:
    """What the attention backend allocates besides its output (devices.AttentionPlan): nothing with a
    fused kernel; where it builds the score matrix, the slice `attention.attention` lets it build (at
    most the plan's budget); where 16-bit inputs are upcast, fp32 copies of q, k and v."""
    if plan is None:
        return 0
    L_last, L, C = max(schedule.tokens_per_scale), schedule.num_tokens, config.embed_dim
    out = 0
    if plan.chunk:
        out += min(rows * config.num_heads * L_last * L * plan.score_bytes, plan.budget)
    if plan.upcast(dtype, L):
        out += rows * (2 * L + L_last) * C * 4
    return out


def sampling_bytes(config: InfinityConfig, schedule: ScaleSchedule, batch: int, guided: bool,
                   dtype: torch.dtype, text_tokens: int = 512, *, guided_scales: int | None = None,
                   pruning: PruningPolicy | None = None, num_scales: int | None = None,
                   attention: AttentionPlan | None = None) -> int:
    """Peak of a run of `num_scales` scales (all by default): at the scale where it is largest, the KV
    cache + text keys/values + that scale's activations (fp32 residual stream, qkv, MLP, logits) +
    pruning's cached outputs, plus the RoPE table. `guided_scales` (SamplerSettings.guided_scales): the
    unconditional rows exist for that many leading scales (default: all when `guided`); `pruning` skips
    scales and computes fewer tokens. `attention` (devices.attention_plan_for): what the device's attention
    backend allocates besides its output (None = a fused kernel, which never holds a score matrix)."""
    n = schedule.num_scales if num_scales is None else min(num_scales, schedule.num_scales)
    n_net = net_scales(pruning, n)
    g = (n_net if guided else 0) if guided_scales is None else min(guided_scales, n_net)
    tokens, C, b = schedule.tokens_per_scale, config.embed_dim, dtype_bytes(dtype)
    layer_kv = lambda rows, t: rows * t * C * 2 * b  # noqa: E731  (K and V of one layer)
    full_kv = layer_kv(batch, sum(tokens[:n_net - 1])) * config.depth
    guided_kv = layer_kv(2 * batch, sum(tokens[:g] if g < n_net else tokens[:n_net - 1])) * config.depth
    cached, cache_scales = 0, range(0)
    if pruning is not None and pruning.plans:  # three fp32 sub-layer outputs per pruned layer, cache scale on
        cache_at = {p.cache_scale for _, p in pruning.plans}
        cached = sum(3 * len(pruning.cache_layers(c)) * tokens[c] * C * 4 for c in cache_at)
        cache_scales = range(min(p.cache_scale for _, p in pruning.plans), pruning.last_use() + 1)
    peak = 0
    for si in range(n_net):
        rows = 2 * batch if si < g else batch
        kv = guided_kv if si < g else full_kv
        plan = pruning.plan(si) if pruning is not None else None
        computed = plan.keep(tokens[si]) if plan is not None else tokens[si]
        text_kv = rows * config.depth * text_tokens * C * 2 * b
        activations = rows * (tokens[si] * 4 * C * 4 + computed * (3 * C + config.mlp_hidden) * b)
        logits = rows * tokens[si] * config.bits_per_token * 2 * 4 * 3
        final_kv = 2 * layer_kv(rows, _attended(tokens, si, pruning, config.depth)) if si == n_net - 1 else 0
        live_cache = cached * rows if si in cache_scales else 0
        peak = max(peak, kv + text_kv + activations + logits + final_kv + live_cache)
        if si + 1 == g < n_net:  # truncation copies one layer's kept rows while the guided cache exists
            peak = max(peak, guided_kv + layer_kv(batch, sum(tokens[:n_net - 1])) + text_kv)
    rope_rows = max(sum(h * w for h, w in grids) for grids in TEMPLATES.values())
    rope_table = rope_rows * config.head_dim // 2 * 8  # complex64 rotations of the 1M schedule
    rows0 = 2 * batch if g else batch  # building the table takes twice its size, once the caches exist
    setup = (guided_kv if g else full_kv) + rows0 * config.depth * text_tokens * C * 2 * b + 2 * rope_table
    scores = attention_bytes(config, schedule, 2 * batch if g else batch, dtype, attention)
    return max(peak + rope_table + scores, setup)


def plan_bytes(config: InfinityConfig, plan: RunPlan, batch: int, dtype: torch.dtype, text_tokens: int = 512,
               attention: AttentionPlan | None = None) -> int:
    """Peak working memory of the run `plan` describes (`sampling_bytes` with the plan's numbers)."""
    return sampling_bytes(config, plan.schedule, batch, plan.guided_scales > 0, dtype, text_tokens,
                          guided_scales=plan.guided_scales, pruning=plan.pruning, num_scales=plan.scales,
                          attention=attention)


def _attended(tokens, si: int, pruning: PruningPolicy | None, depth: int) -> int:
    """The most keys one layer attends to at scale si (its cache plus its own computed tokens)."""
    def kept(s, layer):
        plan = pruning.plan(s) if pruning is not None else None
        return plan.keep(tokens[s]) if plan is not None and plan.prunes(layer) else tokens[s]
    return max(sum(kept(s, layer) for s in range(si + 1)) for layer in range(depth))


def _full_resolution_peak(ch_mult, base_ch: int, image_hw, batch: int, dtype) -> int:
    # The first full-resolution ResnetBlock receives the upsampled maps of the next level (mult[1]) and
    # keeps its input, the normalised and activated copies and the conv output alive at once: four maps,
    # next to the RGB image going in or out.
    widest = base_ch * max(ch_mult[:2])
    return batch * image_hw[0] * image_hw[1] * (4 * widest + 3) * dtype_bytes(dtype)


def decode_bytes(config: VAEConfig, image_hw: tuple[int, int], batch: int, dtype: torch.dtype) -> int:
    """Peak working memory of the decoder (its full-resolution stage dominates)."""
    return _full_resolution_peak(config.decoder_ch_mult, config.base_ch, image_hw, batch, dtype)


def encode_bytes(config: VAEConfig, image_hw: tuple[int, int], batch: int, dtype: torch.dtype) -> int:
    """Peak working memory of the encoder (its full-resolution stage dominates)."""
    return _full_resolution_peak(config.encoder_ch_mult, config.base_ch, image_hw, batch, dtype)


def available_bytes(device) -> int | None:
    """Free memory of a device (CUDA: driver's free memory; MPS: Metal's recommended working set minus what is
    allocated; CPU: MemAvailable), or None if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "mps" and hasattr(torch.mps, "recommended_max_memory"):  # unified memory Metal allows us
        return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def require_memory(needed: int, available: int | None, what: str, hint: str) -> None:
    if available is not None and needed > available:
        raise MemoryBudgetError(f"{what} needs about {needed / 2**30:.2f} GiB but only {available / 2**30:.2f} GiB "
                                f"is free", hint=hint)
