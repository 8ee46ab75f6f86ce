"""Memory estimates, so a run that cannot fit is refused before anything is allocated."""
from __future__ import annotations

import torch

from .config import InfinityConfig, VAEConfig
from .devices import AttentionPlan
from .errors import MemoryBudgetError
from .schedules import TEMPLATES, ScaleSchedule


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
                   dtype: torch.dtype, text_tokens: int = 512, attention: AttentionPlan | None = None) -> int:
    """KV cache + text keys/values + the largest scale's activations (fp32 residual stream, qkv, MLP,
    logits) + what the device's attention backend allocates (`attention`: devices.attention_plan_for;
    None = a fused kernel, which never holds a score matrix)."""
    rows = batch * (2 if guided else 1)
    L_last, L, C = max(schedule.tokens_per_scale), schedule.num_tokens, config.embed_dim
    text_kv = rows * config.depth * text_tokens * C * 2 * dtype_bytes(dtype)
    activations = rows * L_last * (4 * C * 4 + (3 * C + config.mlp_hidden) * dtype_bytes(dtype))
    logits = rows * L_last * config.bits_per_token * 2 * 4 * 3
    final_scale_kv = 2 * rows * L * C * 2 * dtype_bytes(dtype)  # one layer's concatenated keys/values
    stored_kv = kv_cache_bytes(config, schedule, rows, dtype, stored_only=True)
    rope_rows = max(sum(h * w for h, w in grids) for grids in TEMPLATES.values())
    rope_table = rope_rows * config.head_dim // 2 * 8  # complex64 rotations of the 1M schedule
    scores = attention_bytes(config, schedule, rows, dtype, attention)
    return stored_kv + final_scale_kv + text_kv + activations + logits + rope_table + scores


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
