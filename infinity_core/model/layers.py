"""Building blocks of the Infinity transformer: attention, FFN, the AdaLN block, the text pool.

Source: FoundationVision/Infinity `infinity/models/basic.py` (SelfAttention, CrossAttention, FFN,
CrossAttnBlock, AdaLNBeforeHead) and `infinity.py` (TextAttentivePool). Differences, on purpose:
flash-attn is replaced by `attention.attention` (SDPA, with key-padding masks); the KV cache is
pre-allocated; the cross-attention keys/values of the text are projected once per generation
instead of once per scale; the zero key bias is folded into ordinary Linear biases (see
`checkpoints.remap_transformer_keys`).

Layers are built through an `ops` namespace (`torch.nn` by default; ComfyUI passes `comfy.ops.*`
so weights can live in another dtype or device and be cast per call). Bare parameters are read
with `_at(p, x)` so they follow the input wherever partial offloading left them.
Shape legend: B batch rows (2B with CFG), L tokens, C width, H heads, c head dim, T text tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import attention
from ..devices import ffn_rows_for
from .pruning import all_tokens
from .rope import apply_rope_

MAX_SCALE_MUL = math.log(100.0)  # cosine-attention temperature bound (reference: log(100))


def _at(p: torch.Tensor, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return p.to(device=like.device, dtype=dtype or p.dtype)


def ada_layer_norm(x_BLC: torch.Tensor, scale1p_B1C: torch.Tensor, shift_B1C: torch.Tensor, eps: float):
    """LayerNorm without affine, modulated: LN(x) * (1 + scale) + shift, in float32."""
    x = F.layer_norm(x_BLC.float(), (x_BLC.shape[-1],), eps=eps)
    return x.mul(scale1p_B1C).add_(shift_B1C)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(self.eps))
        return x * _at(self.weight, x, torch.float32)


@dataclass
class KVCache:
    """Pre-allocated keys/values of the scales seen so far (`[B, H, capacity, c]`).

    The capacity covers every scale but the last one run: nothing attends to the final scale's
    keys later, so they are only concatenated for that scale's own attention (39% of the tokens at 1M).
    """

    k: torch.Tensor
    v: torch.Tensor
    length: int = 0

    @classmethod
    def empty(cls, batch: int, heads: int, capacity: int, head_dim: int, device, dtype) -> "KVCache":
        shape = (batch, heads, capacity, head_dim)
        return cls(torch.empty(shape, device=device, dtype=dtype), torch.empty(shape, device=device, dtype=dtype))

    def append(self, k_BHLc: torch.Tensor, v_BHLc: torch.Tensor):
        end = self.length + k_BHLc.shape[2]
        if end > self.k.shape[2]:  # the final scale: attend without storing
            return (torch.cat((self.k[:, :, :self.length], k_BHLc), 2),
                    torch.cat((self.v[:, :, :self.length], v_BHLc), 2))
        self.k[:, :, self.length:end] = k_BHLc
        self.v[:, :, self.length:end] = v_BHLc
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def keep_rows(self, rows: int, capacity: int):
        """Keep the first `rows` rows in new buffers of `capacity` tokens; the old ones are released."""
        B, H, _, c = self.k.shape
        k, v = (torch.empty((rows, H, capacity, c), device=self.k.device, dtype=self.k.dtype) for _ in range(2))
        k[:, :, :self.length] = self.k[:rows, :, :self.length]
        v[:, :, :self.length] = self.v[:rows, :, :self.length]
        self.k, self.v = k, v


class SelfAttention(nn.Module):
    """Cosine attention with a learned per-head temperature, 2D RoPE and a KV cache."""

    def __init__(self, dim: int, heads: int, ops):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.scale_mul_1H11 = nn.Parameter(torch.empty(1, heads, 1, 1), requires_grad=False)
        self.mat_qkv = ops.Linear(dim, 3 * dim, bias=True)  # bias = [q_bias, 0, v_bias]
        self.proj = ops.Linear(dim, dim, bias=True)

    def temperature(self, like: torch.Tensor) -> torch.Tensor:
        """Per-head multiplier of the cosine similarities, exp(min(s, log 100)), `[1, H, 1, 1]`."""
        return _at(self.scale_mul_1H11, like, torch.float32).clamp_max(MAX_SCALE_MUL).exp()  # fp32, as autocast

    def forward(self, h_BLC: torch.Tensor, rot_Lh: torch.Tensor, temperature: torch.Tensor, cache: KVCache,
                cdt: torch.dtype):
        B, L, C = h_BLC.shape
        qkv = self.mat_qkv(h_BLC.to(cdt)).view(B, L, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # q and k: normalised, q scaled, both rotated, in float32 (as the reference, whatever the dtype)
        qk = F.normalize(qkv[:2].float(), dim=-1, eps=1e-12)
        qk[0].mul_(temperature)
        apply_rope_(qk, rot_Lh)  # in place: qk is our own fresh tensor
        k_all, v_all = cache.append(qk[1].to(cache.k.dtype), qkv[2].to(cache.v.dtype))
        o = attention(qk[0].to(cache.k.dtype), k_all, v_all, scale=1.0)
        return self.proj(o.transpose(1, 2).reshape(B, L, C).to(cdt))


class CrossAttention(nn.Module):
    """Softmax attention from image tokens to the (pre-projected) text memory of each row."""

    def __init__(self, dim: int, heads: int, ops):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.mat_q = ops.Linear(dim, dim, bias=True)
        self.mat_kv = ops.Linear(dim, 2 * dim, bias=True)  # bias = [0, v_bias]
        self.proj = ops.Linear(dim, dim, bias=True)

    def text_kv(self, memory_BTC: torch.Tensor, cdt: torch.dtype) -> torch.Tensor:
        """The text keys and values of every row, `[B, T, 2, H, c]` (see `BlockCondition.text_k`)."""
        B, T, C = memory_BTC.shape
        return self.mat_kv(memory_BTC.to(cdt)).view(B, T, 2, self.heads, self.head_dim)

    def forward(self, h_BLC, k_BHTc, v_BHTc, mask_B11T, cdt):
        B, L, C = h_BLC.shape
        q = self.mat_q(h_BLC.to(cdt)).view(B, L, self.heads, self.head_dim).transpose(1, 2)
        o = attention(q, k_BHTc, v_BHTc, attn_mask=mask_B11T)
        return self.proj(o.transpose(1, 2).reshape(B, L, C))


def _resident(linear: nn.Module, like: torch.Tensor) -> bool:
    """True when calling `linear` costs no weight cast or transfer (nor a ComfyUI weight patch)."""
    w = linear.weight
    return (w.dtype == like.dtype and w.device == like.device
            and not getattr(linear, "weight_function", None) and not getattr(linear, "bias_function", None))


class FFN(nn.Module):
    def __init__(self, dim: int, hidden: int, ops):
        super().__init__()
        self.fc1 = ops.Linear(dim, hidden, bias=True)
        self.fc2 = ops.Linear(hidden, dim, bias=True)

    def _mlp(self, x):
        # in place on fc1's fresh output: same kernel as F.gelu, one [rows, 4C] buffer fewer
        return self.fc2(torch._C._nn.gelu_(self.fc1(x), approximate="tanh"))

    # Rows per pass at large scales, so the [rows, 4C] hidden activation never exists whole: on the
    # CPU 512 (layer12 at 0.25M: peak RSS -37 MiB, from 1.04 to 0.99 of the bound; speed unchanged),
    # on accelerators what fits the device's workspace (devices.ffn_rows: few, large matmuls).
    def forward(self, x_BLC):
        rows, chunk = x_BLC.shape[:-1].numel(), ffn_rows_for(x_BLC.device, self.fc1.out_features, x_BLC.dtype)
        if rows < 2 * chunk or not (_resident(self.fc1, x_BLC) and _resident(self.fc2, x_BLC)):
            return self._mlp(x_BLC)  # chunking would cast or move the weights once per chunk
        x_RC = x_BLC.reshape(rows, x_BLC.shape[-1])
        out_RC = torch.cat([self._mlp(x) for x in x_RC.split(chunk)])
        return out_RC.view(*x_BLC.shape[:-1], out_RC.shape[-1])


@dataclass
class BlockCondition:
    """Per-generation constants of one block: AdaLN gates/scales/shifts and the text keys/values."""

    gamma1: torch.Tensor
    gamma2: torch.Tensor
    scale1p1: torch.Tensor
    scale2p1: torch.Tensor
    shift1: torch.Tensor
    shift2: torch.Tensor
    text_kv: torch.Tensor       # [B, T, 2, H, c]: keys and values interleaved, as the projection made them
    temperature: torch.Tensor   # [1, H, 1, 1]: the same for every row

    @property
    def text_k(self) -> torch.Tensor:
        return self.text_kv.permute(2, 0, 3, 1, 4)[0]

    @property
    def text_v(self) -> torch.Tensor:
        return self.text_kv.permute(2, 0, 3, 1, 4)[1]

    def keep_rows(self, rows: int) -> "BlockCondition":
        """The first `rows` rows, copied so that the others' memory is released (guidance truncation)."""
        cut = {f.name: getattr(self, f.name)[:rows].clone() for f in fields(self) if f.name != "temperature"}
        return BlockCondition(**cut, temperature=self.temperature)


class Block(nn.Module):
    """Pre-norm block: AdaLN self-attention, LayerNorm cross-attention, AdaLN GELU MLP."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int, eps: float, ops):
        super().__init__()
        self.eps = eps
        self.ada_gss = nn.Parameter(torch.empty(1, 1, 6, dim), requires_grad=False)
        self.sa = SelfAttention(dim, heads, ops)
        self.ca = CrossAttention(dim, heads, ops)
        self.ffn = FFN(dim, mlp_hidden, ops)
        self.ca_norm = ops.LayerNorm(dim, eps=eps, elementwise_affine=True)

    def condition(self, gss_B16C: torch.Tensor, memory_BTC: torch.Tensor, cdt) -> BlockCondition:
        # order of the six rows: gamma1, gamma2, scale1, scale2, shift1, shift2 (reference unbind(2))
        g1, g2, s1, s2, sh1, sh2 = (_at(self.ada_gss, gss_B16C, torch.float32) + gss_B16C).unbind(2)
        kv = self.ca.text_kv(memory_BTC, cdt)
        return BlockCondition(g1, g2, s1.add(1), s2.add(1), sh1, sh2, kv, self.sa.temperature(gss_B16C))

    def forward(self, x_BLC, cond: BlockCondition, text_mask, rot_Lh, cache: KVCache, cdt, tokens=None):
        """`tokens` (a pruning.TokenSubset) decides which tokens each sub-layer computes; None = all."""
        run = all_tokens if tokens is None else tokens.run

        def self_attn(x, rot):
            h = ada_layer_norm(x, cond.scale1p1, cond.shift1, self.eps)
            return self.sa(h, rot, cond.temperature, cache, cdt).float().mul_(cond.gamma1)

        def cross_attn(x, _):
            return self.ca(self.ca_norm(x), cond.text_k, cond.text_v, text_mask, cdt).float()

        def ffn(x, _):
            h = ada_layer_norm(x, cond.scale2p1, cond.shift2, self.eps)
            return self.ffn(h.to(cdt)).float().mul_(cond.gamma2)  # the outputs are fresh tensors

        x_BLC = x_BLC + run(0, x_BLC, rot_Lh, self_attn)
        x_BLC = x_BLC + run(1, x_BLC, None, cross_attn)
        return x_BLC + run(2, x_BLC, None, ffn)


class TextPool(nn.Module):
    """Attention pooling of the text with one learned query per head -> the condition vector."""

    def __init__(self, text_dim: int, dim: int, heads: int, ops):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.mat_q = nn.Parameter(torch.empty(1, heads, dim // heads), requires_grad=False)
        self.mat_kv = ops.Linear(text_dim, 2 * dim, bias=True)  # bias = [0, v_bias]
        self.proj = ops.Linear(dim, dim, bias=True)

    def forward(self, text_BTC: torch.Tensor, mask_B11T, cdt) -> torch.Tensor:
        B, T, _ = text_BTC.shape
        kv = self.mat_kv(text_BTC.to(cdt)).view(B, T, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q = _at(self.mat_q, kv, kv.dtype).unsqueeze(2).expand(B, -1, 1, -1)
        o = attention(q, kv[0], kv[1], attn_mask=mask_B11T)
        return self.proj(o.reshape(B, self.heads * self.head_dim))


class PooledText(nn.Module):
    """Keeps the reference's key names (`text_proj_for_sos.ca.*`)."""

    def __init__(self, text_dim: int, dim: int, heads: int, ops):
        super().__init__()
        self.ca = TextPool(text_dim, dim, heads, ops)

    def forward(self, text_BTC, mask_B11T, cdt):
        return self.ca(text_BTC, mask_B11T, cdt)


class AdaLNHead(nn.Module):
    """Final AdaLN (`head_nm`): scale and shift from the condition vector, in float32."""

    def __init__(self, dim: int, eps: float, ops):
        super().__init__()
        self.eps = eps
        self.ada_lin = nn.Sequential(nn.SiLU(), ops.Linear(dim, 2 * dim, bias=True))

    def modulation(self, cond_BD: torch.Tensor):
        scale, shift = self.ada_lin(cond_BD.float()).float().view(cond_BD.shape[0], 1, 2, -1).unbind(2)
        return scale.add(1), shift

    def forward(self, h_BLC, scale1p, shift):
        return ada_layer_norm(h_BLC, scale1p, shift, self.eps)
