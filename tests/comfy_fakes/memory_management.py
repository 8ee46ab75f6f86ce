"""Fake `comfy.memory_management` (newest ComfyUI only): the dynamic-VRAM switch.

ComfyUI's main.py sets `aimdo_enabled = True` at start on NVIDIA with torch >= 2.8 and comfy-aimdo installed,
unless `--disable-dynamic-vram`; at the same time it rebinds `comfy.model_patcher.CoreModelPatcher` to
`ModelPatcherDynamic`. `comfy_fakes.install(..., dynamic_vram=True)` does both.
"""
from __future__ import annotations

aimdo_enabled = False
