"""Scaled dot-product attention that never builds more of the score matrix than the device allows.

Where SDPA has a fused kernel (CPU, CUDA flash / memory-efficient) this is exactly
`F.scaled_dot_product_attention`. Where the backend would materialise the whole `[B, H, Lq, Lk]`
score matrix (MPS; bf16 on pre-Ampere NVIDIA, see devices.py) the queries go in slices sized from
the device's workspace budget: each query row's softmax only sees its own scores, so a slice gives
the same rows as the whole call. Shape legend: B batch rows, H heads, Lq/Lk queries/keys, c head dim.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..devices import attention_plan_for


def attention(q_BHLc: torch.Tensor, k_BHLc: torch.Tensor, v_BHLc: torch.Tensor, attn_mask=None,
              scale: float | None = None) -> torch.Tensor:
    plan = attention_plan_for(q_BHLc.device, q_BHLc.dtype)
    keys = k_BHLc.shape[-2]
    upcast = plan.upcast(q_BHLc.dtype, keys)
    if not plan.chunk and not upcast:
        return F.scaled_dot_product_attention(q_BHLc, k_BHLc, v_BHLc, attn_mask=attn_mask, scale=scale)
    out_dtype = q_BHLc.dtype
    if upcast:  # 16-bit softmax over this many keys loses precision there
        q_BHLc, k_BHLc, v_BHLc = q_BHLc.float(), k_BHLc.float(), v_BHLc.float()
    B, H, L, _ = q_BHLc.shape
    step = plan.query_rows(B * H, keys) if plan.chunk else L
    if step >= L:
        o = F.scaled_dot_product_attention(q_BHLc, k_BHLc, v_BHLc, attn_mask=attn_mask, scale=scale)
        return o.to(out_dtype)
    out = q_BHLc.new_empty(B, H, L, v_BHLc.shape[-1], dtype=out_dtype)
    per_query = attn_mask is not None and attn_mask.shape[-2] != 1  # else one mask row serves every slice
    for start in range(0, L, step):
        rows = slice(start, min(start + step, L))
        mask = attn_mask[..., rows, :] if per_query else attn_mask
        out[:, :, rows] = F.scaled_dot_product_attention(q_BHLc[:, :, rows], k_BHLc, v_BHLc, attn_mask=mask,
                                                         scale=scale)
    return out
