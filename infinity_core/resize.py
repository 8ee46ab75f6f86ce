"""The latent resizes of the quantizer and the previews, with paths for devices that lack a kernel.

Where the device has the kernel (CPU, CUDA, ROCm, XPU) these are exactly today's `F.interpolate`
calls, so results are bit-identical. Apple MPS has no 5-D kernels on older PyTorch and refuses
uneven 4-D area pooling (64 -> 6, 12, 20, ...): trilinear with a single depth slice is the 4-D bilinear
resize (the same function; on CPU it differs from the 5-D kernel by float rounding, < 1e-6), and area
pooling runs on the host (the CPU's own numbers; only the encoder and decoded previews use it).
Shape legend: B batch, d channels, h/w grids.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .devices import resize_kernels_for


def trilinear_cells(x_Bd1hw: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """`F.interpolate(x, size=(1, h, w), mode="trilinear")` of a one-slice 5-D latent."""
    if resize_kernels_for(x_Bd1hw.device).trilinear_5d:
        return F.interpolate(x_Bd1hw, size=(1, *size_hw), mode="trilinear")
    return F.interpolate(x_Bd1hw.squeeze(2), size=tuple(size_hw), mode="bilinear").unsqueeze(2)


def area_cells(x_Bd1hw: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """`F.interpolate(x, size=(1, h, w), mode="area")` of a one-slice 5-D latent."""
    if resize_kernels_for(x_Bd1hw.device).area_5d:
        return F.interpolate(x_Bd1hw, size=(1, *size_hw), mode="area")
    return F.interpolate(x_Bd1hw.cpu(), size=(1, *size_hw), mode="area").to(x_Bd1hw.device)


def area_2d(x_BdHW: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """`F.interpolate(x, size=(h, w), mode="area")`; uneven sizes on the host where the device refuses them."""
    H, W = x_BdHW.shape[-2:]
    even = H % size_hw[0] == 0 and W % size_hw[1] == 0
    if even or resize_kernels_for(x_BdHW.device).uneven_area_2d:
        return F.interpolate(x_BdHW, size=tuple(size_hw), mode="area")
    return F.interpolate(x_BdHW.cpu(), size=tuple(size_hw), mode="area").to(x_BdHW.device)
