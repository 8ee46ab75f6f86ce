"""Fake `comfy.model_patcher`: ModelPatcher keeps the module and its devices, and loads it fully or partly.

A partial load follows ComfyUI's low-VRAM load (`ModelPatcher._load_list` / `load`): modules that own
all their parameters are moved to the load device largest first while the budget lasts; the other
`comfy_cast_weights` layers keep their weights on the offload device and cast them per call, and the
bare parameters of non-leaf modules (a module with both its own parameters and children: ComfyUI
skips it) always stay on the offload device. On this CPU-only double the offload device is a tag:
such parameters are `OffloadedParameter`s, which report `OFFLOAD_DEVICE` and fail, like a tensor on
another device, in any op that mixes them with ordinary tensors unless moved with `.to(device=...)`.
"""
from __future__ import annotations

import torch
import torch.nn as nn

OFFLOAD_DEVICE = torch.device("meta")  # stands for the CPU holding offloaded weights while a GPU computes


class _Elsewhere:
    """Tensor semantics of 'on another device': `.to(device=...)` brings it over; mixing raises."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func == torch.Tensor.device.__get__:
            return OFFLOAD_DEVICE
        with torch._C.DisableTorchFunctionSubclass():
            if func is torch.Tensor.to:
                device, dtype, _, _ = torch._C._nn._parse_to(*args[1:], **kwargs)
                out = args[0] if dtype is None else args[0].to(dtype=dtype)
                here = device is not None and device != OFFLOAD_DEVICE
                return out.as_subclass(torch.Tensor) if here else out.as_subclass(Offloaded)
            flat = [*args, *kwargs.values()]
            flat += [t for a in flat if isinstance(a, (list, tuple)) for t in a]
            if any(isinstance(t, torch.Tensor) and not isinstance(t, _Elsewhere) and t.dim() > 0 for t in flat):
                raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                                   f"{OFFLOAD_DEVICE} (a weight the low-VRAM load left on the offload device) and "
                                   f"cpu! ({getattr(func, '__name__', func)})")
            out = func(*args, **kwargs)

        def wrap(t):
            return t.as_subclass(Offloaded) if type(t) is torch.Tensor else t
        if isinstance(out, (list, tuple)) and not isinstance(out, torch.Size):
            return type(out)([wrap(t) for t in out])
        return wrap(out)


class Offloaded(_Elsewhere, torch.Tensor):
    pass


class OffloadedParameter(_Elsewhere, nn.Parameter):
    pass


def module_size(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _load_list(model: nn.Module):
    """ComfyUI's: modules owning every parameter below them (largest first); non-leaf owners are skipped."""
    loading = []
    for name, m in model.named_modules():
        own = [n for n, _ in m.named_parameters(recurse=False)]
        if any(n not in own for n, _ in m.named_parameters(recurse=True)):
            continue
        if hasattr(m, "comfy_cast_weights") or own:
            loading.append((module_size(m), name, m))
    return sorted(loading, key=lambda x: (x[0], x[1]), reverse=True)


def _set_params(module: nn.Module, offloaded: bool) -> None:
    with torch._C.DisableTorchFunctionSubclass():
        for name, p in list(module._parameters.items()):
            if p is None or isinstance(p, OffloadedParameter) == offloaded:
                continue
            cls = OffloadedParameter if offloaded else nn.Parameter
            module._parameters[name] = cls(p.as_subclass(torch.Tensor).detach(), requires_grad=p.requires_grad)


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model, self.load_device, self.offload_device = model, load_device, offload_device
        self.size = size or module_size(model)
        self.loaded = False
        self.offloaded_modules: list[str] = []  # after a partial load: names of modules left (partly) offloaded
        if not hasattr(model, "device"):
            model.device = offload_device  # as ComfyUI: fails on modules whose `.device` is a read-only property

    def model_size(self) -> int:
        return self.size

    def load_fully(self) -> None:
        for m in self.model.modules():
            _set_params(m, offloaded=False)
        self.model.to(self.load_device)
        self.model.device, self.loaded, self.offloaded_modules = self.load_device, True, []

    def load_partially(self, budget: int) -> None:
        """As `ModelPatcher.load(lowvram_model_memory=budget)`: what does not fit stays on the offload device."""
        self.load_fully()
        loaded, used = set(), 0
        for size, name, m in _load_list(self.model):
            if used + size < budget:
                used += size
                loaded.add(name)
        self.offloaded_modules = []
        for name, m in self.model.named_modules():
            if name not in loaded and any(True for _ in m.parameters(recurse=False)):
                _set_params(m, offloaded=True)
                self.offloaded_modules.append(name)


def _streamed(module: nn.Module) -> bool:
    """A layer dynamic VRAM streams: a comfy.ops leaf with weights (ComfyUI gives it a vbar and casts per call)."""
    own = [n for n, _ in module.named_parameters(recurse=False)]
    return hasattr(module, "comfy_cast_weights") and bool(own) and len(own) == len(list(module.parameters()))


class ModelPatcherDynamic(ModelPatcher):
    """Newest ComfyUI's patcher under dynamic VRAM: the weights of comfy.ops layers stay where they were loaded
    (host memory) and are brought to the device per call (`comfy_cast_weights = True`); everything else, the
    bare parameters of non-leaf modules and plain torch layers, is put on the device when the model loads
    (ComfyUI's force-load of non-leaf weights). A budget changes nothing: streaming needs no partial load."""

    def is_dynamic(self) -> bool:
        return True

    def get_free_memory(self, device) -> int:
        """As ComfyUI's (every patcher has it in the newest ComfyUI): the device's free memory plus what
        streamed weights hold and would give up; here the fake's figure."""
        from . import model_management
        return model_management.get_free_memory(device)

    def load_fully(self) -> None:
        super().load_fully()
        self.offloaded_modules = []
        for name, m in self.model.named_modules():
            if _streamed(m):
                m.comfy_cast_weights = True
                _set_params(m, offloaded=True)
                self.offloaded_modules.append(name)

    def load_partially(self, budget: int) -> None:
        self.load_fully()


CoreModelPatcher = ModelPatcher  # newest ComfyUI: rebound to ModelPatcherDynamic at start under dynamic VRAM
