"""The loaders ask the device policy with ComfyUI's answers: what a Mac, a T4 or a --fp8/--fp64 flag gets."""
import logging

import pytest
import torch

from pack_harness import first, run

FP8_SUPPORTED = (torch.float8_e4m3fn, torch.float8_e5m2)


@pytest.fixture
def device_as(env, monkeypatch):
    """Make the fake ComfyUI report `kind` as its GPU, answering as ComfyUI 0.3.64 does for it."""
    devices = env.core("devices")

    def setup(kind: str, capability=(8, 0), unet_dtype=None):
        gpu = torch.device(kind)
        infos = {"mps": devices.DeviceInfo("mps", macos=(14, 0)), "cuda": devices.DeviceInfo("cuda", capability)}
        monkeypatch.setattr(devices, "_query", lambda d: infos.get(d.type, devices.DeviceInfo(d.type)))
        monkeypatch.setattr(env.mm, "get_torch_device", lambda: gpu)
        monkeypatch.setattr(env.mm, "should_use_bf16", lambda device=None, **kw: kind == "mps" or capability >= (8, 0))
        monkeypatch.setattr(env.mm, "should_use_fp16", lambda device=None, **kw: True)
        monkeypatch.setattr(env.mm, "supports_cast",  # ComfyUI's table: no fp8 on MPS
                            lambda device, dtype: dtype in (torch.float32, torch.float16, torch.bfloat16)
                            or (device.type != "mps" and dtype in FP8_SUPPORTED))
        asked = []

        def comfy_unet_dtype(device=None, model_params=0, supported_dtypes=(), weight_dtype=None):
            asked.append(list(supported_dtypes))
            if unet_dtype is not None:  # a command-line flag
                return unet_dtype
            return next(d for d in supported_dtypes if d == torch.float32 or env.mm.should_use_bf16(device)
                        or (d == torch.float16 and env.mm.should_use_fp16(device)))
        monkeypatch.setattr(env.mm, "unet_dtype", comfy_unet_dtype)
        devices.reset()
        return asked
    yield setup
    devices.reset()


def _load(env, weight_dtype="default"):
    return first(run(env, "InfinityTransformerLoader", model_name="infinity_tiny_a.safetensors",
                     weight_dtype=weight_dtype, spatial_patchify="auto"))


def test_fp8_on_a_mac_falls_back_and_says_so(env, device_as, caplog):
    device_as("mps")
    with caplog.at_level(logging.WARNING):
        handle = _load(env, "fp8_e4m3fn")
    module = handle.patcher.model
    assert handle.compute_dtype == torch.bfloat16 and module.blocks[0].ffn.fc1.weight.dtype == torch.bfloat16
    assert "mps cannot hold torch.float8_e4m3fn" in caplog.text


def test_fp64_flag_on_a_mac_stores_fp32(env, device_as, caplog):
    device_as("mps", unet_dtype=torch.float64)  # ComfyUI started with --fp64-unet
    with caplog.at_level(logging.WARNING):
        handle = _load(env)
    assert handle.patcher.model.blocks[0].sa.proj.weight.dtype == torch.float32
    assert handle.compute_dtype == torch.float32 and "no float64" in caplog.text


def test_turing_computes_in_fp16_not_fp32(env, device_as):
    """ComfyUI's should_use_bf16 is False there; offered fp16, unet_dtype picks it: KV cache half of fp32's."""
    asked = device_as("cuda", capability=(7, 5))
    handle = _load(env)
    assert torch.float16 in asked[0] and asked[0].index(torch.bfloat16) < asked[0].index(torch.float16)
    assert handle.compute_dtype == torch.float16
    assert handle.patcher.model.blocks[0].sa.mat_qkv.weight.dtype == torch.float16  # no cast per call


def test_ampere_keeps_bf16(env, device_as):
    device_as("cuda", capability=(8, 6))
    handle = _load(env)
    assert handle.compute_dtype == torch.bfloat16 == handle.patcher.model.head.weight.dtype


@pytest.mark.parametrize("flag", [torch.float8_e8m0fnu, torch.float8_e5m2])
def test_every_fp8_flag_quantises_only_the_block_matrices(env, device_as, flag):
    device_as("cuda", capability=(8, 9), unet_dtype=flag)  # --fp8_e8m0fnu-unet / --fp8_e5m2-unet
    module = _load(env).patcher.model
    block = module.blocks[0]
    assert block.sa.mat_qkv.weight.dtype == flag and block.ffn.fc2.weight.dtype == flag
    for t in (block.sa.mat_qkv.bias, block.ca_norm.weight, block.ada_gss, module.shared_ada_lin[1].weight,
              module.head_nm.ada_lin[1].weight, module.head.weight, module.word_embed.weight, module.lvl_embed.weight):
        assert t.dtype == torch.bfloat16


def test_text_encoder_on_the_cpu_runs_fp32_and_counts_its_embedding_once(env, caplog):
    with caplog.at_level(logging.WARNING):
        handle = first(run(env, "InfinityTextEncoderLoader", text_encoder_name="t5_tiny_encoder.safetensors",
                           dtype="fp16"))
    assert handle.encoder.dtype == torch.float32 and "5x slower" in caplog.text
    model = handle.encoder.model
    assert model.encoder.embed_tokens.weight is model.shared.weight  # tied: one tensor, two state-dict keys
    state_dict_sum = sum(t.numel() * t.element_size() for t in handle.patcher.model.state_dict().values())
    assert handle.patcher.model_size() == state_dict_sum - model.shared.weight.numel() * 4
