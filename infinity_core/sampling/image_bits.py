"""The bits of an image's first scales, for teacher forcing (image-to-image, masks), from its summed codes.

A LATENT may carry the bits the sampler or the encoder made, but ComfyUI's latent nodes copy, slice and
batch the samples without the bits, so stored bits are trusted per image only where they still sum to
that image's samples; every other image is quantised again (the same multi-scale quantisation Encode runs).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..model.quantizer import quantize_multiscale, summed_codes


def teacher_bits(samples_BdHW: torch.Tensor, grids: Sequence[tuple[int, int]],
                 stored: Sequence[torch.Tensor] | None, k: int) -> list[torch.Tensor]:
    """VAE-layout bits `[B, 1, h, w, d]` uint8 of scales < k for every image of `samples_BdHW` (summed codes on
    the final grid of `grids`): the `stored` bits where they still sum to the image's samples (exact, survives
    batch copies and slices), else a fresh multi-scale quantisation."""
    if k <= 0:
        return []
    samples = samples_BdHW.float().cpu()
    B, chosen = samples.shape[0], {}
    if stored and len(stored) >= k and all(tuple(b.shape[2:4]) == g for b, g in zip(stored, grids)):
        ref = summed_codes([b.float() for b in stored], grids[-1]).squeeze(2)
        for i in range(B):
            match = next((j for j in range(ref.shape[0]) if torch.allclose(samples[i], ref[j], atol=1e-5)), None)
            if match is not None:
                chosen[i] = [b[match] for b in stored[:k]]
    missing = [i for i in range(B) if i not in chosen]
    if missing:
        _, derived = quantize_multiscale(samples[missing], list(grids))
        for row, i in enumerate(missing):
            chosen[i] = [b[row] for b in derived[:k]]
    return [torch.stack([chosen[i][si] for i in range(B)]).to(torch.uint8) for si in range(k)]
