"""Fake `comfy.ops`: `disable_weight_init` (no init; casts only when told to) and `manual_cast` (always casts the
weights to the input's dtype/device per call).

Newest ComfyUI (0.38) under dynamic VRAM (`memory_management.aimdo_enabled`): a `Linear` of these namespaces
is built without tensors (`weight = None`, `bias = None`) and gets them only while a state dict is loaded
through its `_load_from_state_dict`, which adopts the given tensor as its parameter (a copy unless the load
assigns), reports keys it does not own as unexpected and a weight it did not get as missing (then zeros).
Every op's forward checks the interrupt flag first (`run_every_op`). ComfyUI 0.3.64 builds every layer eagerly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import memory_management, model_management

GENERATION = "0.3.64"  # set by comfy_fakes.install


def _cast(t, x):
    return None if t is None else t.to(device=x.device, dtype=x.dtype)


def _every_op() -> None:
    if GENERATION != "0.3.64":
        model_management.throw_exception_if_processing_interrupted()


class _CastOp:
    comfy_cast_weights = False
    weight_function: list = []
    bias_function: list = []

    def reset_parameters(self):
        return None


def _lazy(module) -> bool:
    """Lazy only for the op classes themselves: a subclass with its own state-dict loader is built eagerly."""
    return (memory_management.aimdo_enabled
            and type(module)._load_from_state_dict is disable_weight_init.Linear._load_from_state_dict)


def _adopt_state_dict(module, state_dict, prefix, local_metadata, missing_keys, unexpected_keys) -> None:
    assign = local_metadata.get("assign_to_params_buffers", False)
    for key, value in state_dict.items():
        name = key[len(prefix):]
        if name == "weight" or (name == "bias" and module.comfy_need_lazy_init_bias and value is not None):
            setattr(module, name, torch.nn.Parameter(value if assign else value.clone(), requires_grad=False))
        else:
            unexpected_keys.append(key)
    if module.weight is None:
        module.weight = torch.nn.Parameter(torch.zeros(module.out_features, module.in_features), requires_grad=False)
        missing_keys.append(prefix + "weight")
    if module.comfy_need_lazy_init_bias and module.bias is None:
        module.bias = torch.nn.Parameter(torch.zeros(module.out_features), requires_grad=False)
        missing_keys.append(prefix + "bias")


class disable_weight_init:
    class Linear(torch.nn.Linear, _CastOp):
        def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
            if not _lazy(self):
                super().__init__(in_features, out_features, bias, device, dtype)
                return
            torch.nn.Module.__init__(self)
            self.in_features, self.out_features = in_features, out_features
            self.weight, self.bias = None, None
            self.comfy_need_lazy_init_bias = bias

        def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                  error_msgs):
            if not _lazy(self):
                return super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                                     unexpected_keys, error_msgs)
            _adopt_state_dict(self, state_dict, prefix, local_metadata, missing_keys, unexpected_keys)

        def forward(self, x):
            _every_op()
            if self.comfy_cast_weights or self.weight_function or self.bias_function:
                return F.linear(x, _cast(self.weight, x), _cast(self.bias, x))
            return super().forward(x)

    class Conv2d(torch.nn.Conv2d, _CastOp):
        def forward(self, x):
            _every_op()
            if self.comfy_cast_weights:
                return self._conv_forward(x, _cast(self.weight, x), _cast(self.bias, x))
            return super().forward(x)

    class GroupNorm(torch.nn.GroupNorm, _CastOp):
        def forward(self, x):
            _every_op()
            if self.comfy_cast_weights:
                return F.group_norm(x, self.num_groups, _cast(self.weight, x), _cast(self.bias, x), self.eps)
            return super().forward(x)

    class LayerNorm(torch.nn.LayerNorm, _CastOp):
        def forward(self, x):
            _every_op()
            if self.comfy_cast_weights and self.weight is not None:
                return F.layer_norm(x, self.normalized_shape, _cast(self.weight, x), _cast(self.bias, x), self.eps)
            return super().forward(x)

    class Embedding(torch.nn.Embedding, _CastOp):
        def reset_parameters(self):
            self.bias = None

        def forward(self, idx, out_dtype=None):
            _every_op()
            if self.comfy_cast_weights:
                return F.embedding(idx, self.weight.to(idx.device)).to(dtype=out_dtype)
            return super().forward(idx)


class manual_cast(disable_weight_init):
    class Linear(disable_weight_init.Linear):
        comfy_cast_weights = True

    class Conv2d(disable_weight_init.Conv2d):
        comfy_cast_weights = True

    class GroupNorm(disable_weight_init.GroupNorm):
        comfy_cast_weights = True

    class LayerNorm(disable_weight_init.LayerNorm):
        comfy_cast_weights = True

    class Embedding(disable_weight_init.Embedding):
        comfy_cast_weights = True
