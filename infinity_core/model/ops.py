"""Layers that compute in their input's dtype and device, whatever their weights are stored in.

This is what lets a checkpoint be kept in bf16/fp16/fp8 while a layer computes in fp32 (the head
and AdaLN of Infinity always do), or stay on the CPU while the input is on a GPU. ComfyUI's
`comfy.ops.manual_cast` does the same inside ComfyUI; the core uses these outside of it. No
layer initialises its weights: every model here is built and then loaded from a checkpoint.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _cast(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    if t is None or (t.dtype == like.dtype and t.device == like.device):
        return t
    return t.to(device=like.device, dtype=like.dtype)


# oneDNN's matmul runs float32 GEMMs about 1.3x faster than MKL's sgemm on the CPUs we measured
# (bench/README.md; 2B at 0.06M: 1.5x end to end). Small layers stay on F.linear, whose lower
# per-call overhead wins there. The op is private to PyTorch, so any failure falls back for good.
_ONEDNN_MIN_WEIGHTS = 2 ** 18
_onednn_ok = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    global _onednn_ok
    if _onednn_ok and x.dtype == torch.float32 and x.device.type == "cpu" and w.numel() >= _ONEDNN_MIN_WEIGHTS:
        try:
            return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
        except (RuntimeError, NotImplementedError):
            _onednn_ok = False
    return F.linear(x, w, b)


class Linear(nn.Linear):
    def reset_parameters(self):
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _linear(x, _cast(self.weight, x), _cast(self.bias, x))


class LayerNorm(nn.LayerNorm):
    def reset_parameters(self):
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, _cast(self.weight, x), _cast(self.bias, x), self.eps)


class Embedding(nn.Embedding):
    def reset_parameters(self):
        return None

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.weight.to(idx.device))


class Conv2d(nn.Conv2d):
    def reset_parameters(self):
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, _cast(self.weight, x), _cast(self.bias, x))


class GroupNorm(nn.GroupNorm):
    def reset_parameters(self):
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, _cast(self.weight, x), _cast(self.bias, x), self.eps)
