"""Fake `comfy.ops`: `manual_cast` layers (no init, weights cast to the input's dtype/device per call)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _cast(t, x):
    return None if t is None else t.to(device=x.device, dtype=x.dtype)


class manual_cast:
    class Linear(torch.nn.Linear):
        comfy_cast_weights = True

        def reset_parameters(self):
            return None

        def forward(self, x):
            return F.linear(x, _cast(self.weight, x), _cast(self.bias, x))

    class Conv2d(torch.nn.Conv2d):
        comfy_cast_weights = True

        def reset_parameters(self):
            return None

        def forward(self, x):
            return self._conv_forward(x, _cast(self.weight, x), _cast(self.bias, x))

    class GroupNorm(torch.nn.GroupNorm):
        comfy_cast_weights = True

        def reset_parameters(self):
            return None

        def forward(self, x):
            return F.group_norm(x, self.num_groups, _cast(self.weight, x), _cast(self.bias, x), self.eps)

    class LayerNorm(torch.nn.LayerNorm):
        comfy_cast_weights = True

        def reset_parameters(self):
            return None

        def forward(self, x):
            return F.layer_norm(x, self.normalized_shape, _cast(self.weight, x), _cast(self.bias, x), self.eps)

    class Embedding(torch.nn.Embedding):
        comfy_cast_weights = True

        def reset_parameters(self):
            self.bias = None

        def forward(self, idx, out_dtype=None):
            return F.embedding(idx, self.weight.to(idx.device)).to(dtype=out_dtype)
