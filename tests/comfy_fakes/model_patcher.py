"""Fake `comfy.model_patcher`: ModelPatcher keeps the module and its devices (what the pack reads)."""
from __future__ import annotations


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model, self.load_device, self.offload_device = model, load_device, offload_device
        self.size = size or sum(t.numel() * t.element_size() for t in model.state_dict().values())
        self.loaded = False
        if not hasattr(model, "device"):
            model.device = offload_device  # as ComfyUI: fails on modules whose `.device` is a read-only property

    def model_size(self) -> int:
        return self.size
