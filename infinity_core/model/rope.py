"""2D rotary position embedding of Infinity's self-attention ("star" normalisation, mode 2).

Source: FoundationVision/Infinity `infinity/models/basic.py` (precompute_rope2d_freqs_grid,
apply_rotary_emb). Every token of every scale is placed on the template's 1M final grid:
row r = round(y * H1M / h), col q = round(x * W1M / w), products in float32 and rounding half to
even (both matter: ties are common on non-square templates). The first half of each head's
channel pairs rotates with the row, the second half with the column; pairs are interleaved.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from ..schedules import TEMPLATES

ROPE_BASE = 10000.0


def _positions(n: int, full: int) -> torch.Tensor:
    # float32 product then round-half-even, exactly as the reference computes its indices
    return (torch.arange(n) * (full / n)).round().long()


@lru_cache(maxsize=64)
def rope_table(head_dim: int, template: float) -> torch.Tensor:
    """Rotations of every token of the template's 13-scale 1M schedule: `[L_1M, head_dim // 2]` complex64
    (cos + i sin of float32 angles). Shorter budgets use a prefix of these rows."""
    half = head_dim // 2
    inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, half, 2, dtype=torch.int64).float() / half))
    grids = TEMPLATES[template]
    full_h, full_w = grids[-1]
    r = torch.cat([_positions(h, full_h).reshape(h, 1).expand(h, w).reshape(-1) for h, w in grids])
    q = torch.cat([_positions(w, full_w).reshape(1, w).expand(h, w).reshape(-1) for h, w in grids])
    angles_Lh = torch.cat([torch.outer(r.float(), inv_freq), torch.outer(q.float(), inv_freq)], dim=-1)
    cos_Lh = angles_Lh.cos()
    sin_Lh = angles_Lh.sin_()  # in place: at most cos, sin and the result exist at once (2x the table)
    return torch.complex(cos_Lh, sin_Lh)


def apply_rope_(x: torch.Tensor, rot_Lh: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs (x[2m], x[2m+1]) by each position's angles, in place: one
    complex product, (x0 cos - x1 sin, x0 sin + x1 cos). `x` is float32 `[..., L, c]` with a
    contiguous last dim and even strides elsewhere; returns `x`."""
    torch.view_as_complex(x.unflatten(-1, (-1, 2))).mul_(rot_Lh)
    return x
