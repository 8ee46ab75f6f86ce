"""What each device can do, decided in one place: dtypes, resize kernels, attention, working memory.

The core picks nothing by itself: the command line and `nodes/comfy_glue.py` ask this module, and
the layers ask it about the device their tensors are on. Inside ComfyUI, ComfyUI's own answers
(`should_use_bf16`, `should_use_fp16`, `supports_cast`, its text-encoder dtype) are passed in and
win; outside it the same questions are answered from the device itself. Rules, and why:
- CPU: fp32 compute (bf16/fp16 matmuls are several times slower there); SDPA's CPU kernel never
  holds a score matrix; FFN in 512-row chunks (measured on CPU: bench/README.md).
- NVIDIA with compute capability >= 8.0 (Ampere+): bf16, fused attention (flash / memory-efficient).
  7.x (Volta/Turing) and 6.0 (P100): fp16; bf16 is only emulated there (`is_bf16_supported()` says
  True anyway) and SDPA has no fused kernel for it, so a bf16 run chunks attention by queries.
  Other Pascal and older: fp32.
- AMD (ROCm): bf16 except on RDNA2 and older (fp16); SDPA's fused kernels are trusted, as ComfyUI does.
- Apple MPS: bf16 on macOS 14+ (fp16 before), as ComfyUI; no fp8 and no fp64 tensors (fall back,
  with a warning); no 5-D area / trilinear kernels on older PyTorch and no uneven 4-D area, so those
  resizes take 4-D or host paths; SDPA materialises the whole fp32 score matrix (2.8-5.5 GB per call
  at 1M), so attention is chunked by queries, and upcast to fp32 over long key sets (16-bit softmax
  loses precision beyond ~3k keys there).
Pure PyTorch: never imports ComfyUI.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import torch

log = logging.getLogger(__name__)

CPU_FFN_ROWS = 512              # CPU, layer12 at 0.25M: peak RSS -37 MiB, speed unchanged (bench/README.md)
WORKSPACE_BYTES = 512 * 2**20   # one transient buffer per call on accelerators (FFN hidden, attention scores)
UPCAST_KEYS = 3072              # MPS: 16-bit attention over more keys than this runs in fp32
_OLD_AMD = ("gfx8", "gfx900", "gfx906", "gfx908", "gfx101", "gfx103")  # no bf16 units (up to RDNA2)
SIXTEEN_BIT = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class DeviceInfo:
    """The facts the policy needs; `describe` reads them off torch, tests build them by hand."""

    type: str                                 # cuda, mps, cpu, xpu, meta, ...
    capability: tuple[int, int] | None = None  # NVIDIA compute capability
    hip_arch: str | None = None               # AMD (ROCm): gcnArchName, e.g. gfx1100
    macos: tuple[int, int] | None = None      # MPS: macOS version

    @property
    def nvidia(self) -> bool:
        return self.type == "cuda" and self.hip_arch is None

    @property
    def accelerator(self) -> bool:
        return self.type != "cpu"


def _query(device: torch.device) -> DeviceInfo:
    if device.type == "cuda":
        if getattr(torch.version, "hip", None):
            return DeviceInfo("cuda", hip_arch=torch.cuda.get_device_properties(device).gcnArchName)
        return DeviceInfo("cuda", capability=tuple(torch.cuda.get_device_capability(device)))
    if device.type == "mps":
        macos = next(((m, n) for m, n in ((15, 0), (14, 0), (13, 0)) if torch.backends.mps.is_macos_or_newer(m, n)),
                     (12, 0))
        return DeviceInfo("mps", macos=macos)
    return DeviceInfo(device.type)


@lru_cache(maxsize=None)
def describe(device) -> DeviceInfo:
    return _query(torch.device(device))


def reset() -> None:
    """Forget every cached answer (tests that mock the device queries)."""
    for fn in (describe, attention_plan_for, ffn_rows_for, resize_kernels_for):
        fn.cache_clear()


def is_fp8(dtype: torch.dtype | None) -> bool:
    """Every 8-bit float ComfyUI offers (e4m3fn, e5m2, e8m0fnu, the fnuz variants) is fp8 storage."""
    return dtype is not None and dtype.is_floating_point and dtype.itemsize == 1


# ---- dtypes ------------------------------------------------------------------------------------------
def compute_dtype(info: DeviceInfo, comfy_bf16: bool | None = None, comfy_fp16: bool | None = None,
                  storage: torch.dtype | None = None) -> torch.dtype:
    """The dtype the transformer's matmuls run in. `comfy_bf16` / `comfy_fp16`: ComfyUI's
    should_use_bf16 / should_use_fp16 for the device, authoritative when given; with them, weights
    stored in a 16-bit dtype the device computes in are used as they are (no cast per call, as
    ComfyUI's unet_manual_cast decides). fp32 (or fp64) storage computes in fp32."""
    if not info.accelerator or storage in (torch.float32, torch.float64):
        return torch.float32
    if comfy_bf16 is not None or comfy_fp16 is not None:
        if (storage == torch.bfloat16 and comfy_bf16) or (storage == torch.float16 and comfy_fp16):
            return storage
        return torch.bfloat16 if comfy_bf16 else torch.float16 if comfy_fp16 else torch.float32
    if info.nvidia:
        cap = info.capability or (0, 0)
        return torch.bfloat16 if cap >= (8, 0) else torch.float16 if cap >= (7, 0) or cap == (6, 0) else torch.float32
    if info.type == "cuda":  # ROCm
        return torch.float16 if info.hip_arch.startswith(_OLD_AMD) else torch.bfloat16
    if info.type == "mps":
        return torch.bfloat16 if (info.macos or (0, 0)) >= (14, 0) else torch.float16
    if info.type == "xpu":
        return torch.bfloat16
    return torch.float32


def storage_dtype(requested: torch.dtype, info: DeviceInfo, compute: torch.dtype,
                  can_hold: bool | None = None) -> torch.dtype:
    """The weights' dtype: `requested` where the device can hold it. `can_hold`: ComfyUI's
    supports_cast(device, requested), authoritative when given. MPS holds no fp8 and no fp64."""
    if is_fp8(requested) and (can_hold is False or (can_hold is None and info.type == "mps")):
        log.warning("%s cannot hold %s tensors: the weights stay in %s (about twice the memory of fp8)",
                    info.type, requested, compute)
        return compute
    if requested == torch.float64 and info.type == "mps":
        log.warning("mps has no float64: the weights are stored in float32 instead")
        return torch.float32
    return requested


def text_encoder_dtype(requested: torch.dtype | None, info: DeviceInfo,
                       comfy_default: torch.dtype | None = None) -> torch.dtype:
    """T5's dtype where it runs. Default: fp32 on the CPU, else ComfyUI's text-encoder dtype (fp16
    when that is not a dtype T5 loads in). fp16 on the CPU is loaded in fp32: on CPUs without native fp16
    (AMD, most desktop Intel) T5 ran 5.4x slower in fp16 (the low-VRAM template under --lowvram, measured
    on an AMD EPYC VM); on an AVX512-FP16 Xeon fp16 and fp32 take the same time, so nothing is lost."""
    if not info.accelerator:
        if requested == torch.float16:
            log.warning("fp16 text encoding on the CPU is up to 5x slower than fp32: loading T5 in fp32")
            return torch.float32
        return requested or torch.float32
    if requested is not None:
        return requested
    return comfy_default if comfy_default in (torch.float32, torch.bfloat16, torch.float16) else torch.float16


# ---- attention and the FFN ----------------------------------------------------------------------------
@dataclass(frozen=True)
class AttentionPlan:
    """How `attention.attention` runs on one device and dtype. `chunk`: the backend would build the
    whole score matrix (`score_bytes` per element), so queries go in slices of at most `budget` bytes
    of scores; `upcast_keys`: above this many keys 16-bit inputs are computed in fp32."""

    chunk: bool = False
    score_bytes: int = 4
    budget: int = WORKSPACE_BYTES
    upcast_keys: int | None = None

    def query_rows(self, rows_x_heads: int, keys: int) -> int:
        return max(1, self.budget // max(1, rows_x_heads * keys * self.score_bytes))

    def upcast(self, dtype: torch.dtype, keys: int) -> bool:
        return self.upcast_keys is not None and dtype in SIXTEEN_BIT and keys > self.upcast_keys


FUSED = AttentionPlan()


def attention_plan(info: DeviceInfo, dtype: torch.dtype) -> AttentionPlan:
    if info.type == "mps":
        return AttentionPlan(chunk=True, score_bytes=2 * 4, upcast_keys=UPCAST_KEYS)  # fp32 scores + softmax
    if info.nvidia and dtype == torch.bfloat16 and (info.capability or (0, 0)) < (8, 0):
        return AttentionPlan(chunk=True, score_bytes=2 * 2)  # bf16 math path: scores and their softmax
    return FUSED


@lru_cache(maxsize=None)
def attention_plan_for(device, dtype: torch.dtype) -> AttentionPlan:
    return attention_plan(describe(device), dtype)


def ffn_rows(info: DeviceInfo, hidden: int, dtype: torch.dtype) -> int:
    """Rows per FFN pass: the CPU's measured chunk; on accelerators as many as keep the [rows, hidden]
    activation within the workspace (2B at 1M, batch 4 with cfg: one pass), so matmuls stay large."""
    if not info.accelerator:
        return CPU_FFN_ROWS
    return max(CPU_FFN_ROWS, WORKSPACE_BYTES // (hidden * dtype.itemsize))


@lru_cache(maxsize=None)
def ffn_rows_for(device: torch.device, hidden: int, dtype: torch.dtype) -> int:
    return ffn_rows(describe(device), hidden, dtype)


# ---- resizes ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResizeKernels:
    """Which interpolation kernels the device has; missing ones take 4-D or host paths (resize.py)."""

    trilinear_5d: bool = True
    area_5d: bool = True
    uneven_area_2d: bool = True


def resize_kernels(info: DeviceInfo) -> ResizeKernels:
    if info.type == "mps":  # no adaptive_avg_pool3d; 5-D trilinear only from ~2.8; uneven 4-D area refused
        return ResizeKernels(False, False, False)
    return ResizeKernels()


@lru_cache(maxsize=None)
def resize_kernels_for(device) -> ResizeKernels:
    return resize_kernels(describe(device))
