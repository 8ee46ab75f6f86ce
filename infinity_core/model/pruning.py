"""Cached token pruning (FastVAR, Guo et al., ICCV 2025), as a policy the sampler hands the transformer.

Method (csguoh/FastVAR `Infinity/infinity/models/fastvar_utils.py`, `fastvar_basic.py`, re-written): at a
pruned scale, in the pruned layers, each sub-layer (self-attention, cross-attention, FFN) runs only on the
tokens farthest from the scale's mean token (squared distance, per image); the other slots take the same
sub-layer's output at an earlier "cache" scale, area-resampled to the current grid. The kept tokens'
keys are all that enter the KV cache there. A skipped scale is not run at all ("100% pruning"): nothing
is drawn and nothing is added to the latent.

FastVAR hard-codes Infinity-2B at 1M 1:1: token-grid widths 32 and 40 pruned (40% / 50% of the tokens
dropped) in layers 3..27 of 32, the 24x24 scale cached, widths 48 and 64 skipped; other aspect ratios and
budgets miss its width test (its issue #8). Here the same setting is defined by position from the end of
the schedule and by fraction of the depth, so every template, budget and model gets it and the 1:1 1M
2B case is FastVAR's own. `TokenSubset` is the part the blocks call; the plan is data.
Shape legend: B rows, L tokens of the scale, K kept tokens, C width, c/2 complex rotations per head.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import SamplingError
from ..resize import area_2d
from ..schedules import ScaleSchedule

PRESETS = ("off", "prune", "fastvar")
DEFAULT_RATIO = 0.5   # FastVAR's fraction dropped at its second pruned scale (0.4 at the first)
FIRST_SCALE_SHARE = 0.8  # FastVAR's 0.4 / 0.5: the earlier pruned scale drops less
# FastVAR prunes `range(3, 28)` of Infinity-2B's 32 blocks: the first 3 and the last 4 stay exact.
LAYER_SPAN = (3 / 32, 28 / 32)
# positions from the end of the schedule (1M 1:1: widths 24 | 32, 40 | 48, 64)
CACHE_FROM_END, PRUNED_FROM_END, SKIPPED_FROM_END = 5, (4, 3), (2, 1)


@dataclass(frozen=True)
class ScalePlan:
    """One pruned scale: blocks `first_layer <= i < end_layer` drop `int(L * ratio)` of its L tokens and
    restore them from their outputs at `cache_scale`."""

    ratio: float
    first_layer: int
    end_layer: int
    cache_scale: int

    def keep(self, tokens: int) -> int:
        return tokens - int(tokens * self.ratio)  # FastVAR's rounding: the dropped count is truncated

    def prunes(self, layer: int) -> bool:
        return self.first_layer <= layer < self.end_layer


@dataclass(frozen=True)
class PruningPolicy:
    """Per-scale plans (scale index -> ScalePlan) and the first skipped scale (skips are a suffix)."""

    name: str
    plans: tuple[tuple[int, ScalePlan], ...] = ()
    skip_from: int | None = None
    _by_scale: dict = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self):
        object.__setattr__(self, "_by_scale", dict(self.plans))

    def plan(self, si: int) -> ScalePlan | None:
        return self._by_scale.get(si)

    def skips(self, si: int) -> bool:
        return self.skip_from is not None and si >= self.skip_from

    def scales_run(self, n: int) -> int:
        """How many of the first n scales run the network."""
        return n if self.skip_from is None else min(n, self.skip_from)

    def cache_layers(self, si: int) -> frozenset[int]:
        """Blocks that must remember their sub-layer outputs at scale si (a cache scale)."""
        return frozenset(i for _, p in self.plans if p.cache_scale == si for i in range(p.first_layer, p.end_layer))

    def last_use(self) -> int:
        return max((si for si, _ in self.plans), default=-1)

    def validate(self, schedule: ScaleSchedule, depth: int) -> None:
        n = schedule.num_scales
        for si, p in self.plans:
            if not (0 <= p.cache_scale < si < n) or self.plan(p.cache_scale) or not 0 < p.ratio < 1:
                raise SamplingError(f"pruning plan for scale {si} is not valid ({p})",
                                    hint="the cache scale must be an earlier, unpruned scale; 0 < ratio < 1")
            if not 0 <= p.first_layer < p.end_layer <= depth:
                raise SamplingError(f"pruning plan for scale {si}: layers {p.first_layer}..{p.end_layer - 1} "
                                    f"outside a {depth}-layer model", hint="use a preset built for this model")
            if self.skips(si):
                raise SamplingError(f"scale {si} is both pruned and skipped", hint="skip only the last scales")

    def describe(self, schedule: ScaleSchedule, num_scales: int | None = None) -> str:
        """What ran, for the node's text and the CLI log (scales counted from 1, as on the node)."""
        n = schedule.num_scales if num_scales is None else num_scales
        parts = [f"scale {si + 1} ({schedule.grids[si][0]}x{schedule.grids[si][1]}) keeps "
                 f"{p.keep(schedule.tokens_per_scale[si])}/{schedule.tokens_per_scale[si]} tokens in layers "
                 f"{p.first_layer}-{p.end_layer - 1}" for si, p in self.plans if si < n]
        if self.skip_from is not None and self.skip_from < n:
            parts.append(f"scales {self.skip_from + 1}-{n} skipped")
        return f"{self.name}: " + ("; ".join(parts) if parts else "nothing pruned at this schedule")


def fastvar_layers(depth: int) -> tuple[int, int]:
    """FastVAR's pruned blocks scaled to the depth: 3..27 of 32 (2B), 4..34 of 40 (8B)."""
    return round(depth * LAYER_SPAN[0]), round(depth * LAYER_SPAN[1])


def build_policy(preset: str, schedule: ScaleSchedule, depth: int, ratio: float = DEFAULT_RATIO,
                 layers: tuple[int, int] | None = None) -> PruningPolicy | None:
    """A preset for this schedule and model, or None for exact mode.

    fastvar: FastVAR's setting, by position from the end: scales -4 and -3 drop 0.8 x ratio and ratio of
             their tokens (0.4 / 0.5), -5 is the cache, -2 and -1 are skipped.
    prune:   the same pruning without the skip: -2 and -1 run too, dropping `ratio` of their tokens.
    ratio 0 prunes nothing (exact mode; with fastvar, the skip alone)."""
    if preset not in PRESETS:
        raise SamplingError(f"unknown speed preset {preset!r}", hint=f"use one of {', '.join(PRESETS)}")
    if not 0 <= ratio < 1:
        raise SamplingError(f"prune ratio {ratio} is outside 0..1", hint="0.5 is FastVAR's; 0 prunes nothing")
    n = schedule.num_scales
    if preset == "off" or n < CACHE_FROM_END:
        return None
    first, end = layers or fastvar_layers(depth)
    first, end = max(0, first), min(depth, end)
    pruned = PRUNED_FROM_END if preset == "fastvar" else PRUNED_FROM_END + SKIPPED_FROM_END
    plans = []
    for k, pos in enumerate(pruned):
        drop = ratio * FIRST_SCALE_SHARE if k == 0 else ratio
        if drop > 0 and first < end:
            plans.append((n - pos, ScalePlan(drop, first, end, n - CACHE_FROM_END)))
    skip = n - SKIPPED_FROM_END[0] if preset == "fastvar" else None
    if not plans and skip is None:
        return None
    return PruningPolicy(f"{preset} (ratio {ratio:g})", tuple(plans), skip)


# ---- what the blocks call ---------------------------------------------------------------------------
def farthest_tokens(x_BLC: torch.Tensor, grid_hw: tuple[int, int], keep: int,
                    first_BL: torch.Tensor | None = None) -> torch.Tensor:
    """Indices `[B, K, 1]` of the K tokens farthest (squared distance) from the scale's mean token,
    farthest first (the order their keys enter the cache). With `first_BL` (bool), those tokens rank
    before all others, each group farthest first: a masked run computes the tokens it draws."""
    B, L, C = x_BLC.shape
    # the grid mean through adaptive pooling and a descending argsort over [B, L, 1], as FastVAR ranks
    mean_B1C = F.adaptive_avg_pool2d(x_BLC.view(B, *grid_hw, C).permute(0, 3, 1, 2), (1, 1)).view(B, 1, C)
    dist_BL1 = torch.sum((x_BLC - mean_B1C) ** 2, dim=-1, keepdim=True)
    order_BL1 = torch.argsort(dist_BL1, dim=1, descending=True)
    if first_BL is not None:  # a stable sort on the group keeps the distance order inside each group
        group_BL1 = first_BL.to(order_BL1.device)[..., None].gather(1, order_BL1).to(torch.uint8)
        order_BL1 = order_BL1.gather(1, torch.sort(group_BL1, dim=1, descending=True, stable=True)[1])
    return order_BL1[:, :keep]


def restore(out_BKC: torch.Tensor, idx_BK1: torch.Tensor, cached_BlC: torch.Tensor,
            cache_hw: tuple[int, int], grid_hw: tuple[int, int]) -> torch.Tensor:
    """The cached scale's output area-resampled to the grid, with the computed tokens written in."""
    B, _, C = cached_BlC.shape
    up = area_2d(cached_BlC.view(B, *cache_hw, C).permute(0, 3, 1, 2), grid_hw)  # MPS: uneven sizes on the host
    full_BLC = up.permute(0, 2, 3, 1).reshape(B, grid_hw[0] * grid_hw[1], C)
    return full_BLC.scatter_(1, idx_BK1.expand(-1, -1, C), out_BKC)


SubLayer = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


class TokenSubset:
    """How one block runs its sub-layers (0 self-attention, 1 cross-attention, 2 FFN) at one scale: on
    every token while remembering the outputs (at a cache scale), or on the farthest tokens with the
    rest restored from that memory (at a pruned scale). `store` lives in the generation state."""

    def __init__(self, layer: int, grid_hw, store: dict, plan: ScalePlan | None = None, cache_hw=None,
                 first_BL: torch.Tensor | None = None):
        self.layer, self.grid_hw, self.store, self.plan, self.cache_hw = layer, tuple(grid_hw), store, plan, cache_hw
        self.first_BL = first_BL

    def run(self, sub: int, x_BLC: torch.Tensor, rot_Lh: torch.Tensor | None, fn: SubLayer) -> torch.Tensor:
        if self.plan is None:  # a cache scale
            out = fn(x_BLC, rot_Lh)
            self.store[(self.layer, sub)] = out
            return out
        idx_BK1 = farthest_tokens(x_BLC, self.grid_hw, self.plan.keep(x_BLC.shape[1]), self.first_BL)
        x_BKC = x_BLC.gather(1, idx_BK1.expand(-1, -1, x_BLC.shape[-1]))
        rot_B1Kh = None if rot_Lh is None else rot_Lh[idx_BK1[..., 0]].unsqueeze(1)  # each row its positions
        return restore(fn(x_BKC, rot_B1Kh), idx_BK1, self.store[(self.layer, sub)], self.cache_hw, self.grid_hw)


def all_tokens(sub: int, x_BLC: torch.Tensor, rot_Lh: torch.Tensor | None, fn: SubLayer) -> torch.Tensor:
    """Exact mode: the sub-layer on every token."""
    return fn(x_BLC, rot_Lh)


def block_subsets(policy: PruningPolicy | None, si: int, schedule_grids, store: dict, depth: int,
                  first_BL: torch.Tensor | None = None) -> list:
    """`TokenSubset` per block for scale si (None where the block runs exactly); `first_BL`: the tokens
    pruned scales compute first (farthest_tokens)."""
    out = [None] * depth
    if policy is None:
        return out
    plan = policy.plan(si)
    if plan is not None:
        cache_hw = schedule_grids[plan.cache_scale]
        for i in range(plan.first_layer, plan.end_layer):
            out[i] = TokenSubset(i, schedule_grids[si], store, plan, cache_hw, first_BL)
    for i in policy.cache_layers(si):
        out[i] = TokenSubset(i, schedule_grids[si], store)
    return out
