"""The Infinity transformer: text conditioning, one scale of next-scale prediction, bit logits.

Source: FoundationVision/Infinity `infinity/models/infinity.py` (Infinity, L75-663), re-written as
a network with step-level methods; the sampling loop lives in `sampler.py`. Module and
parameter names follow the released checkpoints (after `checkpoints.remap_transformer_keys`
flattens `block_chunks.{i}.module.{j}` to `blocks.{n}`), so weights load strictly.
Shape legend: B batch rows, L tokens of a scale, C width, D condition width (= C), T text tokens,
Ct text channels (2048), d bits per token.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from . import ops as default_ops
from .conditioning import TextEmbedding
from .config import InfinityConfig
from .layers import AdaLNHead, Block, BlockCondition, KVCache, PooledText, RMSNorm, _at
from .pruning import PruningPolicy, block_subsets
from .rope import rope_table
from ..schedules import ScaleSchedule


@dataclass
class GenerationState:
    """Everything that is constant during one generation, plus the growing KV caches."""

    cond_BD: torch.Tensor
    blocks: list[BlockCondition]
    text_mask: torch.Tensor | None
    head_scale1p: torch.Tensor
    head_shift: torch.Tensor
    caches: list[KVCache]
    rope_Lh: torch.Tensor
    offsets: tuple[int, ...]
    compute_dtype: torch.dtype
    grids: tuple[tuple[int, int], ...] = ()
    pruned_outputs: dict = field(default_factory=dict)  # (layer, sub-layer) -> output at a cache scale

    def rope_rows(self, si: int, n: int) -> torch.Tensor:
        start = self.offsets[si]
        return self.rope_Lh[start:start + n]

    @property
    def rows(self) -> int:
        return self.cond_BD.shape[0]


class InfinityTransformer(nn.Module):
    def __init__(self, config: InfinityConfig, ops=default_ops, device=None):
        super().__init__()
        self.config = config
        C, Ct = config.embed_dim, config.text_channels
        with torch.device(device) if device is not None else nullcontext():
            # 1. text: learned null text, RMS norm, attention pool (-> condition), projection for cross-attn
            self.cfg_uncond = nn.Parameter(torch.empty(config.text_maxlen, Ct), requires_grad=False)
            self.text_norm = RMSNorm(Ct, config.norm_eps)
            self.text_proj_for_sos = PooledText(Ct, C, config.text_pool_heads, ops)
            self.text_proj_for_ca = nn.Sequential(ops.Linear(Ct, C), nn.GELU(approximate="tanh"), ops.Linear(C, C))
            # 2. inputs: start token, scale-level embedding, bit-vector embedding
            self.pos_start = nn.Parameter(torch.empty(1, 1, C), requires_grad=False)
            self.lvl_embed = ops.Embedding(config.num_levels, C)
            self.word_embed = ops.Linear(config.bits_per_token, C)
            # 3. shared AdaLN modulation and the blocks
            self.shared_ada_lin = nn.Sequential(nn.SiLU(), ops.Linear(C, 6 * C))
            self.blocks = nn.ModuleList(
                Block(C, config.num_heads, config.mlp_hidden, config.norm_eps, ops) for _ in range(config.depth))
            # 4. head: AdaLN then one Linear to two logits per bit
            self.head_nm = AdaLNHead(C, config.norm_eps, ops)
            self.head = ops.Linear(C, 2 * config.bits_per_token)

    # ---- per-generation setup -------------------------------------------------------------
    def null_text(self, text: TextEmbedding) -> TextEmbedding:
        return text.null_like(self.cfg_uncond.float())

    def condition(self, text: TextEmbedding, schedule: ScaleSchedule, device, compute_dtype: torch.dtype,
                  num_scales: int | None = None, kv_scales: int | None = None) -> GenerationState:
        """Encode the (already CFG-doubled) text batch and allocate the KV caches on `device` for a run
        of the first `num_scales` scales (all by default): they hold the keys of the first `kv_scales`
        scales (default: all but the last one run, whose keys nothing attends to later)."""
        dev = torch.device(device)
        text_BTC, mask_BT = text.to(device=dev, dtype=torch.float32).padded()
        mask = None if min(text.lens) == max(text.lens) else mask_BT[:, None, None, :]
        text_BTC = self.text_norm(text_BTC)
        cond_BD = self.text_proj_for_sos(text_BTC, mask, compute_dtype).float()
        memory_BTC = self.text_proj_for_ca(text_BTC.to(compute_dtype))
        gss_B16C = self.shared_ada_lin(cond_BD).float().view(text.batch, 1, 6, -1)
        scale1p, shift = self.head_nm.modulation(cond_BD)
        cfg = self.config
        kv_scales = (num_scales or schedule.num_scales) - 1 if kv_scales is None else kv_scales
        capacity = sum(schedule.tokens_per_scale[:kv_scales])
        caches = [KVCache.empty(text.batch, cfg.num_heads, capacity, cfg.head_dim, dev, compute_dtype)
                  for _ in self.blocks]
        return GenerationState(
            cond_BD=cond_BD,
            blocks=[b.condition(gss_B16C, memory_BTC, compute_dtype) for b in self.blocks],
            text_mask=mask,
            head_scale1p=scale1p,
            head_shift=shift,
            caches=caches,
            rope_Lh=rope_table(cfg.head_dim, schedule.template).to(dev),
            offsets=schedule.offsets,
            compute_dtype=compute_dtype,
            grids=schedule.grids,
        )

    def keep_rows(self, state: GenerationState, rows: int, kv_tokens: int) -> None:
        """Drop the rows from `rows` on (guidance truncation: the unconditional half) from every
        per-generation tensor, copying the kept rows so that the dropped rows' memory is released; the
        KV caches get room for `kv_tokens` tokens."""
        state.cond_BD = state.cond_BD[:rows].clone()
        for i, cond in enumerate(state.blocks):  # in place: the old conditions go one by one
            state.blocks[i] = cond.keep_rows(rows)
        del cond
        state.text_mask = None if state.text_mask is None else state.text_mask[:rows].clone()
        state.head_scale1p, state.head_shift = state.head_scale1p[:rows].clone(), state.head_shift[:rows].clone()
        for cache in state.caches:  # one layer at a time: at most one layer's copy is extra
            cache.keep_rows(rows, max(kv_tokens, cache.length))
        state.pruned_outputs = {key: out[:rows].clone() for key, out in state.pruned_outputs.items()}

    def start_tokens(self, state: GenerationState) -> torch.Tensor:
        """Scale 0 input: the pooled text plus the learned start position, `[B, 1, C]`."""
        return state.cond_BD.unsqueeze(1) + _at(self.pos_start, state.cond_BD, torch.float32)

    def embed_bits(self, codes_BLd: torch.Tensor, state: GenerationState) -> torch.Tensor:
        return self.word_embed(codes_BLd.to(state.compute_dtype)).float()

    # ---- one scale ---------------------------------------------------------------------------
    def forward_scale(self, x_BLC: torch.Tensor, si: int, state: GenerationState,
                      mix_after_layers: frozenset[int] = frozenset(), mix=None,
                      pruning: PruningPolicy | None = None, compute_first: torch.Tensor | None = None) -> torch.Tensor:
        """Run every block on the tokens of scale `si` (appending them to the KV caches).

        `mix(x)` is applied after the layers in `mix_after_layers` (hidden-state guidance). `pruning`
        decides, per block, which tokens are computed (None: all, exact mode); `compute_first` (`[rows, L]`
        bool) are the tokens it computes before any other (a masked run's drawn tokens).
        """
        lvl = self.lvl_embed(torch.full((1,), si, dtype=torch.long, device=x_BLC.device))
        x_BLC = x_BLC.float() + lvl.float()
        rope = state.rope_rows(si, x_BLC.shape[1])
        subsets = block_subsets(pruning, si, state.grids, state.pruned_outputs, len(self.blocks), compute_first)
        for i, (block, cond, cache) in enumerate(zip(self.blocks, state.blocks, state.caches)):
            x_BLC = block(x_BLC, cond, state.text_mask, rope, cache, state.compute_dtype, subsets[i])
            if i in mix_after_layers:
                x_BLC = mix(x_BLC)
        if pruning is not None and si >= pruning.last_use():
            state.pruned_outputs.clear()  # no later scale restores from them
        return x_BLC

    def logits(self, h_BLC: torch.Tensor, state: GenerationState, rows: slice = slice(None)) -> torch.Tensor:
        """Bit logits `[B, L, 2d]` in float32; `[..., 2j]` scores bit j = 0, `[..., 2j+1]` bit j = 1."""
        h = self.head_nm(h_BLC.float(), state.head_scale1p[rows], state.head_shift[rows])
        return self.head(h)

    def free(self, state: GenerationState):
        for cache in state.caches:
            cache.k = cache.v = None
        state.pruned_outputs.clear()

    # ---- teacher forcing (tests, image-to-image diagnostics) -----------------------------------
    @torch.no_grad()
    def forward_teacher_forced(self, text: TextEmbedding, x_BLd_wo_first: torch.Tensor, schedule: ScaleSchedule,
                               compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Logits of every scale given the inputs of scales 1.. (the reference's `forward`), `[B, L, 2d]`."""
        device = x_BLd_wo_first.device
        state = self.condition(text, schedule, device, compute_dtype)
        outputs, x = [], self.start_tokens(state)
        inputs = self.embed_bits(x_BLd_wo_first, state)
        try:
            for si, n in enumerate(schedule.tokens_per_scale):
                if si > 0:
                    start = schedule.offsets[si] - 1
                    x = inputs[:, start:start + n]
                outputs.append(self.logits(self.forward_scale(x, si, state), state))
        finally:
            self.free(state)
        return torch.cat(outputs, 1)
