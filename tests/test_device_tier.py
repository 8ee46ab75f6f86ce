"""The nodes on a stand-in accelerator (tests/device_checker.py): 2B and 8B shapes at 1M, batch 1 and 4,
fully and partially loaded. No op may mix devices; syncs and host<->device bytes are bounded by what a
generation inherently moves (text in, bit-draw noise in, small previews and the result out)."""
import pytest
import torch

import device_tier
from device_checker import DEVICE, DeviceMixError, DeviceChecker

MIB = 2**20
# The stand-in builds its released-size models on the stand-in device directly (no checkpoint to load through
# the ops), so it runs on the 0.3.64 double, whose layers are built eagerly; dynamic VRAM's streaming is covered
# by the node tests under the 0.38 double.
eager_comfyui = pytest.mark.parametrize("env", ["0.3.64"], indirect=True, scope="module")


@pytest.fixture
def stand_in(env, monkeypatch):
    """The fake ComfyUI with `meta` as its GPU; everything it was is restored afterwards."""
    for name in ("get_torch_device", "vae_device", "load_models_gpu"):
        monkeypatch.setattr(env.mm, name, getattr(env.mm, name))
    devices = env.core("devices")
    devices.reset()
    yield env
    devices.reset()


def _inherent_bytes(env, model: str, batch: int) -> int:
    """What a guided generation must move: text (once), RoPE table, the draw's noise (B x bits x 2 fp32 per
    scale), the learned null text round trip, one small preview per scale, and the LATENT (codes + bits)."""
    config, vae = device_tier.shapes(env, model)
    schedule = env.core("schedules").ScaleSchedule(1.0, "1M")
    bits = schedule.num_tokens * config.bits_per_token * batch
    H, W = schedule.vae_grids(vae.patchify)[-1]
    text = device_tier.TEXT_TOKENS * config.text_channels * 4 * batch * 2
    rope = max(sum(h * w for h, w in g) for g in env.core("schedules").TEMPLATES.values()) * config.head_dim // 2 * 8
    preview = schedule.num_scales * 3 * H * W * 4
    latent = batch * vae.codebook_dim * H * W * 4 + bits
    return text * 2 + rope + bits * 2 * 4 + preview + latent


def _streamed_bytes(handle, scales: int) -> int:
    """Offloaded blocks cast every layer once per scale; their condition (AdaLN table, temperature, the text
    keys/values projection) once per generation."""
    total = 0
    for block in handle.patcher.model.blocks:
        if block.ada_gss.device != DEVICE:
            once = [block.ada_gss, block.sa.scale_mul_1H11, block.ca.mat_kv.weight, block.ca.mat_kv.bias]
            every = sum(t.numel() * t.element_size() for t in block.state_dict().values())
            total += scales * every - (scales - 1) * sum(t.numel() * t.element_size() for t in once)
    return total


@pytest.mark.parametrize("model", ["2b", "8b"])
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("partial", [False, True], ids=["full", "partial"])
@eager_comfyui
def test_sampler_on_an_accelerator(stand_in, model, batch, partial):
    checker, handle = device_tier.sampler_run(stand_in, model, batch, partial)
    scales = [t for label, t in checker.phases if label.startswith("scale")]
    total, n = checker.total, len(scales)
    assert n == 13 and not any(name.startswith("SYNC aten") for name in total.ops)  # no .item(), nonzero, ...
    assert all(t.d2h_copies == 1 for t in scales[1:])  # per scale only the preview comes back
    # + the null text once, + the LATENT's bits and codes, + the logits guard's one read
    assert total.d2h_copies <= n + 1 + n + 1 + 1
    config = device_tier.shapes(stand_in, model)[0]
    assert all(t.attention == 2 * config.depth for t in scales[1:])  # self + cross: nothing chunked here
    assert max(t.matmuls for t in scales) <= 7 * config.depth + 10  # the FFN runs in one pass per block
    inherent = _inherent_bytes(stand_in, model, batch)
    streamed = _streamed_bytes(handle, n)
    assert (streamed > 0) == partial
    assert 0 <= total.moved_bytes - streamed <= inherent
    if model == "2b" and batch == 4 and not partial:
        assert total.moved_bytes <= 24 * MIB, total.moved_bytes / MIB  # the bound


@pytest.mark.parametrize("model", ["2b", "8b"])
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("partial", [False, True], ids=["full", "partial"])
@eager_comfyui
def test_decode_and_encode_on_an_accelerator(stand_in, model, batch, partial):
    config = device_tier.shapes(stand_in, model)[1]
    schedule = stand_in.core("schedules").ScaleSchedule(1.0, "1M")
    H, W = schedule.vae_grids(config.patchify)[-1]
    image, latent = batch * 1024 * 1024 * 3 * 4, batch * config.codebook_dim * H * W * 4
    bits = sum(batch * h * w * config.codebook_dim for h, w in schedule.vae_grids(config.patchify))
    # Decode runs one image at a time (progress and Cancel per image): host-resident weights go up once per
    # image (2B's decoder: 85 MB, a few ms of PCIe against a 1024^2 decode), the rest stays on the device
    checker, vae = device_tier.decode_run(stand_in, model, batch, partial)
    assert checker.total.h2d_bytes == latent + batch * device_tier.host_bytes(vae.patcher.model.decoder)
    assert checker.total.d2h_bytes == image
    checker, vae = device_tier.encode_run(stand_in, model, batch, partial)
    assert checker.total.h2d_bytes == image + device_tier.host_bytes(vae.patcher.model.encoder)
    assert checker.total.d2h_bytes == latent + bits
    assert (device_tier.host_bytes(vae.patcher.model) > 0) == partial
    syncs = {name: n for name, n in checker.total.ops.items() if name.startswith("SYNC aten")}
    # only the finiteness checks of the image going in and the features coming out (validation.py), per call
    assert set(syncs) <= {"SYNC aten._local_scalar_dense.default"} and sum(syncs.values()) <= 2 * batch, syncs


@eager_comfyui
def test_mps_paths_on_an_accelerator(stand_in, monkeypatch):
    """With the policy answering as for Apple MPS: attention in query slices, no 5-D resize on the
    device, area pooling on the host; still no op mixing devices."""
    devices = stand_in.core("devices")
    monkeypatch.setattr(devices, "_query", lambda device: devices.DeviceInfo("mps", macos=(14, 0))
                        if device == DEVICE else devices.DeviceInfo(device.type))
    devices.reset()
    checker, _ = device_tier.sampler_run(stand_in, "2b", 1, False, vae_preview=True)
    ops = checker.total.ops
    assert "upsample_trilinear3d" not in ops and "upsample_bilinear2d" in ops
    last = [t for label, t in checker.phases if label.startswith("scale")][-1]
    rows = devices.attention_plan_for(DEVICE, torch.bfloat16).query_rows(2 * 16, 10521)
    assert last.attention == 32 * -(-4096 // rows) + 32  # self-attention sliced, cross-attention whole
    checker, _ = device_tier.encode_run(stand_in, "2b", 1, False)
    assert "adaptive_avg_pool3d" not in checker.total.ops and "upsample_trilinear3d" not in checker.total.ops
    assert checker.total.ops["upsample_bilinear2d"] == 12 + 13  # quantised residuals up, the codes summed


def test_the_checker_fails_on_mixed_devices():
    with pytest.raises(DeviceMixError):
        with DeviceChecker():
            torch.empty(3, device=DEVICE) + torch.ones(3)
    with DeviceChecker() as checker:
        x = torch.empty(3, device=DEVICE) * torch.tensor(2.0)  # a 0-dim host tensor is a scalar: allowed
        host = x.cpu()
        bool(x.sum())
    assert host.tolist() == [0.5] * 3 and checker.total.d2h_bytes == 12 and checker.total.syncs == 2
