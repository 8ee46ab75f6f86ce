"""Fake `comfy.model_management`: a CPU-only machine whose memory figures and interrupt flag tests set.

`LOAD_CALLS` records every `load_models_gpu` call (patchers, memory_required, force_full_load).
Tests may also set `BF16 = True` (answer `should_use_bf16` as a GPU with bf16 does; ComfyUI says False
for a CPU) and `LOWVRAM_BUDGET` (bytes: load models partly, as ComfyUI's low-VRAM mode does, unless
`force_full_load`; see model_patcher).
"""
from __future__ import annotations

import torch

CPU = torch.device("cpu")
TOTAL_MEMORY = 64 * 2**30
FREE_MEMORY = 32 * 2**30
LOAD_CALLS: list[dict] = []
BF16 = False
LOWVRAM_BUDGET: int | None = None
_interrupt = False


class InterruptProcessingException(Exception):
    pass


def reset() -> None:
    global TOTAL_MEMORY, FREE_MEMORY, BF16, LOWVRAM_BUDGET, _interrupt
    TOTAL_MEMORY, FREE_MEMORY, BF16, LOWVRAM_BUDGET, _interrupt = 64 * 2**30, 32 * 2**30, False, None, False
    LOAD_CALLS.clear()


def get_torch_device():
    return CPU


def intermediate_device():
    return CPU


def unet_offload_device():
    return CPU


def vae_device():
    return CPU


def vae_offload_device():
    return CPU


def text_encoder_device():
    return CPU


def text_encoder_offload_device():
    return CPU


def unet_dtype(device=None, model_params=0, supported_dtypes=(torch.float16, torch.bfloat16, torch.float32),
               weight_dtype=None):
    """ComfyUI's choice without command-line flags: an fp8 file stays fp8 when the weights would not fit
    in bf16 (no fp8 compute here); else bf16 where should_use_bf16 and the model supports it; else fp32."""
    if weight_dtype in (torch.float8_e4m3fn, torch.float8_e5m2) and model_params * 2 > FREE_MEMORY:
        return weight_dtype
    if torch.bfloat16 in supported_dtypes and should_use_bf16(device, model_params=model_params):
        return torch.bfloat16
    return torch.float32


def should_use_bf16(device=None, model_params=0, prioritize_performance=True, manual_cast=False):
    return BF16  # ComfyUI: False for every CPU device; True stands for a GPU with bf16


def should_use_fp16(device=None, model_params=0, prioritize_performance=True, manual_cast=False):
    return False  # False for every CPU device in ComfyUI


def supports_cast(device, dtype):
    return dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2)


def vae_dtype(device=None, allowed_dtypes=()):
    return torch.float32


def text_encoder_dtype(device=None):
    return torch.float16  # ComfyUI's answer even on a CPU


def get_total_memory(dev=None, torch_total_too=False):
    return TOTAL_MEMORY


def get_free_memory(dev=None, torch_free_too=False):
    return FREE_MEMORY


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False):
    LOAD_CALLS.append({"models": list(models), "memory_required": memory_required, "force_full_load": force_full_load})
    for patcher in models:
        if LOWVRAM_BUDGET is None or force_full_load:
            patcher.load_fully()
        else:
            patcher.load_partially(LOWVRAM_BUDGET)


def archive_model_dtypes(model):
    """Newest ComfyUI only (removed by comfy_fakes.install for 0.3.64): each parameter's storage dtype, recorded as
    `<name>_comfy_model_dtype` on its module."""
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            setattr(module, f"{name}_comfy_model_dtype", p.dtype)


def interrupt_current_processing(value=True):
    global _interrupt
    _interrupt = value


def processing_interrupted():
    return _interrupt


def throw_exception_if_processing_interrupted():
    global _interrupt
    if _interrupt:
        _interrupt = False
        raise InterruptProcessingException()
