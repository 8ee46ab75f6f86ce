"""The sampler nodes hand the core exactly the settings their widgets say, defaults included.

Each node result is compared bit for bit with the core's `sample()` called with settings written out
here (from the reference's defaults, not from the pack's constants), and each setting is checked to
change the core's result on this model, so a node that drops it cannot pass. Also: image-to-image
with a batch of different images, the bf16 compute branch, and ComfyUI's partial (low-VRAM) load.
Harness and fixtures: tests/pack_harness.py.
"""
from __future__ import annotations

import pytest
import torch

from pack_harness import SIZE, first, needs_shared, run, sampler

pytestmark = needs_shared

# FoundationVision/Infinity gen_one_img defaults for Infinity-2B: cfg 3, tau 0.5, top_k 900 (keeps both
# values of a bit: off), top_p 0.97, guidance on the logits
REFERENCE = dict(cfg=3.0, tau=0.5, top_k=0, top_p=0.97, cfg_insertion_layer=(0,))
SCHEDULE = (1.0, "0.06M")  # SIZE: 256x256, 7 scales


def core(env, models, seed=7, batch=1, negative=None, teacher=(), stop_after=None, compute_dtype=torch.float32,
         model=None, schedule=SCHEDULE, **settings):
    """The core sampler with the given settings; image i uses a generator seeded seed + i."""
    sampler_module, schedules = env.core("sampling.sampler"), env.core("schedules")
    handle = model or models.model
    return sampler_module.sample(
        handle.patcher.model, models.positive.embedding, schedules.ScaleSchedule(*schedule),
        generators=[torch.Generator().manual_seed(seed + i) for i in range(batch)],
        settings=sampler_module.SamplerSettings(**{**REFERENCE, **settings}), negative=negative, batch=batch,
        teacher=env.core("sampling.masks").TeacherForcing.first_scales(teacher), stop_after=stop_after,
        device=handle.patcher.load_device, compute_dtype=compute_dtype)  # as the node: streamed weights are elsewhere


def same(latent: dict, result) -> bool:
    """A node's LATENT equals a core result: summed codes, and every scale's bits (VAE layout, no patchify)."""
    bits = latent["infinity"]["bits"]
    return (torch.equal(latent["samples"], result.summed_codes) and len(bits) == len(result.bits)
            and all(torch.equal(b.reshape(b.shape[0], -1, b.shape[-1]), r) for b, r in zip(bits, result.bits)))


def differs(a, b) -> bool:
    return len(a.bits) != len(b.bits) or not all(torch.equal(x, y) for x, y in zip(a.bits, b.bits))


@pytest.fixture(scope="module")
def reference_run(env, models):
    return core(env, models)


@pytest.mark.parametrize("node", ["InfinitySampler", "InfinitySamplerAdvanced"])
def test_a_fresh_sampler_node_samples_with_the_reference_defaults(env, models, reference_run, node):
    # only what a user must set (the frontend sends every other widget at its schema default)
    latent = first(run(env, node, model=models.model, positive=models.positive, seed=7, **SIZE))
    assert same(latent, reference_run)
    assert differs(reference_run, core(env, models, top_p=0.0))  # the top_p default matters on this model
    assert differs(reference_run, core(env, models, cfg=1.0)) and differs(reference_run, core(env, models, tau=1.0))


def test_a_fresh_sampler_node_makes_the_reference_default_image(env, models):
    """Nothing set but the seed: 1024x1024 at the 1M budget (13 scales) with the reference's settings."""
    out = run(env, "InfinitySampler", model=models.model, positive=models.positive, seed=7)
    latent = first(out)
    text = out.ui.as_dict()["text"][0]
    assert latent["samples"].shape == (1, 16, 64, 64) and "1024x1024 px" in text and "asked for" not in text
    assert same(latent, core(env, models, schedule=(1.0, "1M")))


def _negative(models):
    return models.negative


# (node widgets, the same settings for the core); every case differs from the reference defaults
CASES = {
    "cfg": (dict(cfg=5.0), dict(cfg=5.0)),
    "cfg 1": (dict(cfg=1.0), dict(cfg=1.0)),
    "tau": (dict(tau=0.9), dict(tau=0.9)),
    "seed and batch": (dict(seed=1000, batch_size=2), dict(seed=1000, batch=2)),
    "negative": (dict(negative=_negative), dict(negative=lambda m: m.negative.embedding)),
    "top_k": (dict(top_k=1), dict(top_k=1)),
    "top_p": (dict(top_p=0.6), dict(top_p=0.6)),
    "top_p off": (dict(top_p=0.0), dict(top_p=0.0)),
    "hidden-state guidance": (dict(cfg_insertion_layer=-1), dict(cfg_insertion_layer=(-1,))),
    "deeper hidden-state guidance": (dict(cfg_insertion_layer=-3), dict(cfg_insertion_layer=(-3,))),
    "cfg_list": (dict(cfg_list="3, 3, 1, 6, 6, 2, 2"), dict(cfg=(3.0, 3.0, 1.0, 6.0, 6.0, 2.0, 2.0))),
    "tau_list": (dict(tau_list="0.5; 1, 1, 0.3, 0.3, 0.8, 0.8"), dict(tau=(0.5, 1.0, 1.0, 0.3, 0.3, 0.8, 0.8))),
    "stop_after_scale": (dict(stop_after_scale=4), dict(stop_after=4)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_sampler_setting_reaches_the_core(env, models, reference_run, case):
    widgets, settings = CASES[case]
    widgets = {k: v(models) if callable(v) else v for k, v in widgets.items()}
    settings = {k: v(models) if callable(v) else v for k, v in settings.items()}
    simple = {"cfg", "tau", "seed", "batch_size", "negative"}
    node = "InfinitySampler" if set(widgets) <= simple else "InfinitySamplerAdvanced"
    expected = core(env, models, **settings)
    assert differs(expected, reference_run), f"{case}: the setting changes nothing on this model"
    latent = first(sampler(env, models, node=node, **widgets))
    assert same(latent, expected), case


# ---- image to image with different images in one batch ---------------------------------------------
@pytest.fixture(scope="module")
def two_images(env, models, gradient_image):
    y = torch.linspace(0, 1, 300)[:, None, None]
    stripes = torch.cat([(torch.sin(y * 40) + 1) / 2, y.expand(300, 1, 1), 1 - y.expand(300, 1, 1)], -1)
    other = stripes.expand(300, 280, 3)[None]
    latent = first(run(env, "InfinityEncode", image=torch.cat([gradient_image, other]), vae=models.vae, **SIZE))
    bits = latent["infinity"]["bits"]
    assert not torch.equal(bits[2][0], bits[2][1])  # the two images differ from the coarse scales on
    return latent


def test_image_to_image_keeps_each_images_own_scales(env, models, two_images):
    kept = 4  # denoise 0.5 of 7 scales: round(3.5) = 4 scales come from the images
    out = first(sampler(env, models, latent_image=two_images, denoise=0.5, seed=9))
    bits = two_images["infinity"]["bits"]
    for si in range(kept):
        assert torch.equal(out["infinity"]["bits"][si], bits[si]), si  # image i keeps image i's bits
    teacher = [b.reshape(2, -1, b.shape[-1]) for b in bits[:kept]]
    assert same(out, core(env, models, seed=9, batch=2, teacher=teacher))


def test_the_advanced_sampler_follows_denoise_by_default(env, models, two_images):
    out = first(sampler(env, models, node="InfinitySamplerAdvanced", latent_image=two_images, denoise=0.5, seed=9))
    assert same(out, core(env, models, seed=9, batch=2, teacher=[b.reshape(2, -1, b.shape[-1])
                                                                  for b in two_images["infinity"]["bits"][:4]]))


def test_image_to_image_matches_bits_to_images_by_content(env, models, two_images):
    """Stored bits belong to the image whose samples they sum to, whatever order the batch is in now."""
    swapped = dict(two_images, samples=two_images["samples"].flip(0))  # e.g. reordered by a latent node
    out = first(sampler(env, models, node="InfinitySamplerAdvanced", latent_image=swapped, regenerate_from_scale=7))
    assert torch.equal(out["samples"], swapped["samples"])
    for mine, stored in zip(out["infinity"]["bits"], two_images["infinity"]["bits"]):
        assert torch.equal(mine, stored.flip(0))


# ---- the bf16 branch (a GPU where ComfyUI says bf16) -------------------------------------------------
def test_bf16_weights_compute_in_bf16_where_comfyui_says_so(env, models, monkeypatch):
    devices = env.core("devices")  # the device policy computes in fp32 on a CPU: report an Ampere GPU's answers
    monkeypatch.setattr(devices, "_query", lambda d: devices.DeviceInfo("cuda", (8, 0)))
    devices.reset()
    monkeypatch.setattr(devices, "reset", devices.reset)
    env.mm.BF16 = True
    handle = first(run(env, "InfinityTransformerLoader", model_name="infinity_tiny_a.safetensors", weight_dtype="bf16"))
    assert handle.compute_dtype == torch.bfloat16
    fp8 = first(run(env, "InfinityTransformerLoader", model_name="infinity_tiny_a.safetensors",
                    weight_dtype="fp8_e4m3fn"))
    assert fp8.compute_dtype == torch.bfloat16 and fp8.patcher.model.cfg_uncond.dtype == torch.bfloat16
    module = fp8.patcher.model  # fp8 for the big matrices only; embeddings, biases, bare parameters in bf16
    assert module.blocks[0].ffn.fc1.weight.dtype == torch.float8_e4m3fn
    assert module.lvl_embed.weight.dtype == module.blocks[0].ffn.fc1.bias.dtype == torch.bfloat16
    assert module.blocks[0].ada_gss.dtype == module.text_norm.weight.dtype == torch.bfloat16
    default = first(run(env, "InfinityTransformerLoader", model_name="infinity_tiny_a.safetensors"))
    assert default.patcher.model.head.weight.dtype == torch.bfloat16  # ComfyUI's pick of the storage
    fp32 = first(run(env, "InfinityTransformerLoader", model_name="infinity_tiny_a.safetensors", weight_dtype="fp32"))
    assert fp32.compute_dtype == torch.float32  # fp32 weights stay fp32 compute
    seen = []  # the dtype the blocks compute in (fp32 compute gives the same bits on this tiny model)
    hook = handle.patcher.model.blocks[0].ffn.fc1.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    try:
        latent = first(sampler(env, models, node="InfinitySamplerAdvanced", model=handle, stop_after_scale=4))
    finally:
        hook.remove()
    assert seen and set(seen) == {torch.bfloat16}
    assert same(latent, core(env, models, model=handle, stop_after=4, compute_dtype=torch.bfloat16))


# ---- ComfyUI's partial (low-VRAM) load ---------------------------------------------------------------
@pytest.mark.parametrize("budget", [0, 200_000])
def test_sampling_and_decoding_after_a_partial_load_equal_a_full_load(env, models, budget):
    full = first(sampler(env, models, seed=3))
    image = first(run(env, "InfinityDecode", samples=full, vae=models.vae))
    handle = first(run(env, "InfinityTransformerLoader", model_name="infinity_tiny_a.safetensors"))
    vae = first(run(env, "InfinityBitwiseTokenizerLoader", vae_name="vae_tiny_a.safetensors"))
    env.mm.LOWVRAM_BUDGET = budget
    partial = first(sampler(env, models, model=handle, seed=3))
    offloaded = handle.patcher.offloaded_modules
    if env.dynamic_vram:  # no partial load: every comfy.ops layer streamed, the bare parameters on the device
        assert {"blocks.0.sa.mat_qkv", "blocks.0.ffn.fc1", "head", "lvl_embed"} <= set(offloaded)
        assert not isinstance(handle.patcher.model.blocks[0].ada_gss, env.patcher_module.OffloadedParameter)
    else:
        assert {"", "blocks.0", "blocks.0.sa", "text_proj_for_sos.ca"} <= set(offloaded)
        assert isinstance(handle.patcher.model.blocks[0].ada_gss, env.patcher_module.OffloadedParameter)
    assert torch.equal(partial["samples"], full["samples"])
    assert all(torch.equal(a, b) for a, b in zip(partial["infinity"]["bits"], full["infinity"]["bits"]))
    assert torch.equal(first(run(env, "InfinityDecode", samples=partial, vae=vae)), image)
    assert vae.patcher.offloaded_modules  # the decoder ran partly offloaded too
