"""Multi-scale binary spherical quantisation (BSQ): bits <-> codes <-> summed latent.

Source: FoundationVision/Infinity `infinity/models/bsq_vae/multiscale_bsq.py` (MultiScaleBSQ,
BSQ.indices_to_codes / quantize_new); BSQ is from Zhao et al. 2024 (arXiv 2406.07548).
A latent cell of d channels is a bit vector b in {0,1}^d standing for the unit vector
(2b - 1)/sqrt(d). An image latent is the sum over scales of each scale's codes, upsampled
(trilinear) to the final grid; encoding quantises the residual scale by scale, coarse to fine.
With spatial patchify (Infinity-8B) one transformer token carries the 4d bits of a 2x2 block of
latent cells, in `pixel_unshuffle` order (channel c*4 + 2*dy + dx).
Shape legend: B batch, d bits per latent cell, h/w grid of a scale, H/W final latent grid.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..resize import area_cells, trilinear_cells


def bits_to_codes(bits_B1hwd: torch.Tensor) -> torch.Tensor:
    """Bits `[B, 1, h, w, d]` -> codes `[B, d, 1, h, w]`, each cell l2-normalised (float32)."""
    d = bits_B1hwd.shape[-1]
    s = 1 / math.sqrt(d)
    # the same two float32 operations as the reference (not a constant): entries are +-s/||.||
    codes = F.normalize(bits_B1hwd * s * 2 - s, dim=-1)
    return codes.permute(0, 4, 1, 2, 3)


def upsample_codes(codes_Bd1hw: torch.Tensor, size_HW: tuple[int, int]) -> torch.Tensor:
    if tuple(codes_Bd1hw.shape[-2:]) == tuple(size_HW):
        return codes_Bd1hw
    return trilinear_cells(codes_Bd1hw, size_HW)


def summed_codes(bits_per_scale: list[torch.Tensor], final_HW: tuple[int, int]) -> torch.Tensor:
    """Sum of every scale's codes at the final grid, `[B, d, 1, H, W]` (VAE-layout bits in)."""
    total = 0
    for bits in bits_per_scale:
        total = total + trilinear_cells(bits_to_codes(bits), final_HW)
    return total


def next_scale_input(summed_Bd1HW: torch.Tensor, grid_hw: tuple[int, int], patchify: bool) -> torch.Tensor:
    """Transformer input of the next scale: the running sum resampled to its grid, `[B, h*w, d_t]`."""
    x = trilinear_cells(summed_Bd1HW, grid_hw).squeeze(-3)
    if patchify:
        x = F.pixel_unshuffle(x, 2)
    return x.flatten(2).transpose(1, 2)


def token_bits_to_vae(bits_BLd: torch.Tensor, grid_hw: tuple[int, int], patchify: bool) -> torch.Tensor:
    """Transformer-layout bits `[B, h*w, d_t]` -> VAE layout `[B, 1, h', w', d]`."""
    B = bits_BLd.shape[0]
    x = bits_BLd.reshape(B, *grid_hw, -1)
    if patchify:
        x = F.pixel_shuffle(x.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    return x.unsqueeze(1)


def vae_bits_to_tokens(bits_B1hwd: torch.Tensor, patchify: bool) -> torch.Tensor:
    """VAE-layout bits `[B, 1, h', w', d]` -> transformer layout `[B, h*w, d_t]`."""
    x = bits_B1hwd.squeeze(1)
    if patchify:
        x = F.pixel_unshuffle(x.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    return x.flatten(1, 2)


def _quantize_cells(r_Bd1hw: torch.Tensor):
    """BSQ of one scale: normalise each cell, snap to +-1/sqrt(d) (sign(0) = -1)."""
    d = r_Bd1hw.shape[1]
    u = F.normalize(r_Bd1hw.permute(0, 2, 3, 4, 1), dim=-1)
    zhat = torch.where(u > 0, torch.ones((), dtype=u.dtype), -torch.ones((), dtype=u.dtype)) * (1.0 / d ** 0.5)
    q = u + (zhat - u)  # the reference's straight-through form; equals zhat up to float rounding
    return q.permute(0, 4, 1, 2, 3), (q > 0).to(torch.uint8)


def quantize_multiscale(z_BdHW: torch.Tensor, grids: list[tuple[int, int]]):
    """Encoder features -> (quantised sum `[B, d, H, W]`, VAE-layout bits of every scale).

    Residual quantisation: each scale quantises the area-downsampled residual of the scales before.
    """
    residual = z_BdHW.float().unsqueeze(2)
    H, W = residual.shape[-2:]
    total, bits = 0, []
    for h, w in grids:
        r = residual if (h, w) == (H, W) else area_cells(residual, (h, w))
        q, b = _quantize_cells(r)
        bits.append(b)
        q_up = q if (h, w) == (H, W) else trilinear_cells(q, (H, W)).contiguous()
        residual = residual - q_up
        total = total + q_up
    return total.squeeze(2), bits
