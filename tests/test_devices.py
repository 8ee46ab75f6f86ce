"""The device policy (infinity_core/devices.py) for every device class, with the device queries mocked."""
import logging

import pytest
import torch

from infinity_core import devices
from infinity_core.devices import DeviceInfo

FP8 = [getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu", "float8_e4m3fnuz",
                                    "float8_e5m2fnuz") if hasattr(torch, n)]
HALF = (torch.bfloat16, torch.float16)


@pytest.fixture(autouse=True)
def _fresh_policy():
    devices.reset()
    yield
    devices.reset()


@pytest.fixture
def cuda(monkeypatch):
    """A CUDA device of a chosen compute capability, as torch would report it (no GPU needed)."""
    def with_capability(major, minor, hip=None):
        monkeypatch.setattr(torch.version, "hip", hip, raising=False)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            lambda device=None: type("Props", (), {"gcnArchName": hip or ""})())
        devices.reset()
        return devices.describe(torch.device("cuda"))
    return with_capability


@pytest.fixture
def mps(monkeypatch):
    def on_macos(major):
        monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda m, n: (major, 0) >= (m, n))
        devices.reset()
        return devices.describe(torch.device("mps"))
    return on_macos


# ---- what the device queries say ------------------------------------------------------------------------
@pytest.mark.parametrize("cap, compute, chunked_bf16", [
    ((7, 5), torch.float16, True),    # Turing (T4, RTX 20xx): bf16 only emulated -> no fused SDPA for it
    ((7, 0), torch.float16, True),    # Volta
    ((6, 1), torch.float32, True),    # consumer Pascal: slow fp16
    ((8, 0), torch.bfloat16, False),  # Ampere
    ((8, 9), torch.bfloat16, False),  # Ada
    ((9, 0), torch.bfloat16, False),  # Hopper
])
def test_nvidia_by_compute_capability(cuda, cap, compute, chunked_bf16):
    info = cuda(*cap)
    assert info == DeviceInfo("cuda", capability=cap) and info.nvidia
    assert devices.compute_dtype(info) == compute
    assert devices.attention_plan(info, torch.bfloat16).chunk is chunked_bf16
    for dtype in (torch.float16, torch.float32):  # memory-efficient / flash kernels exist for these
        assert devices.attention_plan(info, dtype) == devices.FUSED
    assert devices.resize_kernels(info) == devices.ResizeKernels()
    assert devices.storage_dtype(torch.float8_e4m3fn, info, compute) == torch.float8_e4m3fn


def test_is_bf16_supported_is_not_asked(cuda, monkeypatch):
    """It says True on a T4 (emulation), which made the CLI pick bf16 there: out of memory at 1M."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: pytest.fail("asked is_bf16_supported"))
    from infinity_core import cli
    info = cuda(7, 5)
    assert cli._dtype("auto", torch.device("cuda")) == torch.float16 == devices.compute_dtype(info)


@pytest.mark.parametrize("arch, compute", [("gfx1100", torch.bfloat16), ("gfx90a:sramecc+:xnack-", torch.bfloat16),
                                           ("gfx1030", torch.float16), ("gfx906", torch.float16)])
def test_amd_rocm(cuda, arch, compute):
    info = cuda(11, 0, hip=arch)
    assert info.type == "cuda" and not info.nvidia and info.hip_arch == arch
    assert devices.compute_dtype(info) == compute
    assert devices.attention_plan(info, compute) == devices.FUSED  # SDPA's fused kernels are trusted on ROCm


@pytest.mark.parametrize("macos, compute", [(15, torch.bfloat16), (14, torch.bfloat16), (13, torch.float16)])
def test_apple_mps(mps, macos, compute, caplog):
    info = mps(macos)
    assert info.type == "mps" and info.macos == (macos, 0)
    assert devices.compute_dtype(info) == compute
    plan = devices.attention_plan(info, compute)
    assert plan.chunk and plan.score_bytes == 8  # MPS materialises the whole fp32 score matrix (and its softmax)
    assert plan.upcast(compute, 4096) and not plan.upcast(compute, 3072) and not plan.upcast(torch.float32, 10**5)
    assert devices.resize_kernels(info) == devices.ResizeKernels(False, False, False)
    with caplog.at_level(logging.WARNING, logger="infinity_core.devices"):
        for fp8 in FP8:  # every flavour ComfyUI offers: none can live on MPS
            assert devices.storage_dtype(fp8, info, compute) == compute
        assert devices.storage_dtype(torch.float64, info, compute) == torch.float32
    assert sum("cannot hold" in r.message for r in caplog.records) == len(FP8)
    assert any("float64" in r.message for r in caplog.records)
    assert devices.storage_dtype(torch.bfloat16, info, compute) == torch.bfloat16


def test_cpu():
    info = devices.describe("cpu")
    assert info == DeviceInfo("cpu") and not info.accelerator
    assert devices.compute_dtype(info) == torch.float32
    assert devices.compute_dtype(info, comfy_bf16=True, storage=torch.bfloat16) == torch.float32
    for dtype in (torch.float32, *HALF):
        assert devices.attention_plan(info, dtype) == devices.FUSED  # SDPA's CPU kernel holds no score matrix
    assert devices.ffn_rows(info, 8192, torch.float32) == devices.CPU_FFN_ROWS == 512
    assert devices.storage_dtype(torch.float8_e4m3fn, info, torch.float32) == torch.float8_e4m3fn
    assert devices.storage_dtype(torch.float64, info, torch.float32) == torch.float64


# ---- ComfyUI's answers are inputs, and win --------------------------------------------------------------
@pytest.mark.parametrize("bf16, fp16, storage, compute", [
    (True, True, torch.bfloat16, torch.bfloat16),
    (True, True, torch.float16, torch.float16),    # stored fp16 on a device computing fp16: no cast per call
    (False, True, torch.bfloat16, torch.float16),  # pre-Ampere: fp16, not ComfyUI's old fp32 fallback
    (False, True, torch.float8_e4m3fn, torch.float16),
    (False, False, torch.float16, torch.float32),  # e.g. GTX 16xx: ComfyUI says fp16 is broken there
    (True, True, torch.float32, torch.float32),    # the user asked for fp32 weights
    (True, True, torch.float64, torch.float32),    # --fp64-unet: stored so, computed in fp32
])
def test_comfyui_answers_decide(cuda, bf16, fp16, storage, compute):
    info = cuda(9, 0)  # what the device itself would say is overridden
    assert devices.compute_dtype(info, comfy_bf16=bf16, comfy_fp16=fp16, storage=storage) == compute


def test_comfyui_can_refuse_a_storage_dtype(cuda):
    info = cuda(8, 6)
    assert devices.storage_dtype(torch.float8_e5m2, info, torch.bfloat16, can_hold=False) == torch.bfloat16
    assert devices.storage_dtype(torch.float8_e5m2, info, torch.bfloat16, can_hold=None) == torch.float8_e5m2


def test_every_fp8_flavour_is_fp8():
    assert FP8 and all(devices.is_fp8(d) for d in FP8)
    assert not any(devices.is_fp8(d) for d in (torch.float16, torch.bfloat16, torch.float32, torch.uint8, None))


# ---- the text encoder ----------------------------------------------------------------------------------
def test_text_encoder_dtype(cuda, mps, caplog):
    cpu = DeviceInfo("cpu")
    assert devices.text_encoder_dtype(None, cpu) == torch.float32
    assert devices.text_encoder_dtype(torch.bfloat16, cpu) == torch.bfloat16
    with caplog.at_level(logging.WARNING, logger="infinity_core.devices"):
        assert devices.text_encoder_dtype(torch.float16, cpu, comfy_default=torch.float16) == torch.float32
    assert "5x slower" in caplog.text  # the low-VRAM template's fp16 T5 under --lowvram runs on the CPU
    gpu = cuda(8, 0)
    assert devices.text_encoder_dtype(None, gpu, comfy_default=torch.float16) == torch.float16
    assert devices.text_encoder_dtype(None, gpu, comfy_default=torch.float8_e4m3fn) == torch.float16
    assert devices.text_encoder_dtype(torch.float32, gpu) == torch.float32
    assert devices.text_encoder_dtype(None, mps(14)) == torch.float16


# ---- working memory -------------------------------------------------------------------------------------
def test_chunk_sizes_come_from_the_workspace_budget(mps, cuda):
    plan = devices.attention_plan(mps(14), torch.bfloat16)
    rows = plan.query_rows(2 * 16, 10521)  # 2B, batch 1 with cfg, the last 1M scale's keys
    assert rows * 2 * 16 * 10521 * 8 <= devices.WORKSPACE_BYTES < (rows + 1) * 2 * 16 * 10521 * 8
    assert plan.query_rows(10**6, 10**6) == 1
    gpu = cuda(9, 0)
    rows = devices.ffn_rows(gpu, 8192, torch.bfloat16)  # 2B's hidden width
    assert rows * 8192 * 2 == devices.WORKSPACE_BYTES and rows >= 2 * 4096 * 4  # 1M, batch 4, cfg: one pass
    assert devices.ffn_rows(gpu, 10**7, torch.float32) == devices.CPU_FFN_ROWS  # never below the CPU's chunk


def test_cached_answers_follow_the_device(cuda, mps):
    cuda(7, 5)
    assert devices.attention_plan_for(torch.device("cuda"), torch.bfloat16).chunk
    assert devices.attention_plan_for(torch.device("cuda"), torch.float16) == devices.FUSED
    mps(14)
    assert devices.resize_kernels_for(torch.device("mps")).area_5d is False
    assert devices.resize_kernels_for(torch.device("cpu")).area_5d is True
    assert devices.ffn_rows_for(torch.device("cpu"), 256, torch.float32) == 512


def test_cli_auto_device_prefers_cuda_then_mps(monkeypatch):
    from infinity_core import cli
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert cli._device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert cli._device("auto") == torch.device("cpu") and cli._dtype("auto", torch.device("cpu")) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cli._device("auto") == torch.device("cuda") and cli._device("cuda:1") == torch.device("cuda:1")
