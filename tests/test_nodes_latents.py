"""The ComfyUI nodes through a fake ComfyUI: Encode, image-to-image, Decode, latents, bad inputs.

Harness and fixtures: tests/pack_harness.py.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pack_harness import SCALES, SIZE, decode, expect_error, first, needs_shared, run, sampler

pytestmark = needs_shared


@pytest.fixture(scope="module")
def encoded(env, models, gradient_image):
    return first(run(env, "InfinityEncode", image=gradient_image, vae=models.vae, width=256, height=256,
                     budget="0.06M"))


def test_encode_layout(encoded):
    assert encoded["samples"].shape == (1, 16, 16, 16)
    assert len(encoded["infinity"]["bits"]) == SCALES and encoded["infinity"]["budget"] == "0.06M"


def test_encode_size_from_image_aspect(env, models, gradient_image):
    out = run(env, "InfinityEncode", image=gradient_image[:, :, :200], vae=models.vae, width=0, height=0,
              budget="0.06M")  # 300x200 (h x w): h/w 1.5
    assert first(out)["samples"].shape[-2:] == (21, 14) and "224x336 px" in out.ui.as_dict()["text"][0]


def test_encode_width_or_height_alone_is_refused(env, models, gradient_image):
    schema = {i.id: i for i in env.nodes["InfinityEncode"].GET_SCHEMA().inputs}
    max_side = env.core("schedules").MAX_SIDE
    assert (schema["width"].min, schema["width"].max) == (schema["height"].min, schema["height"].max) == (0, max_side)
    resolution = env.core("errors").ResolutionError
    for width, height, named, missing in ((512, 0, "width", "height"), (0, 768, "height", "width")):
        err = expect_error(lambda: run(env, "InfinityEncode", image=gradient_image, vae=models.vae, width=width,
                                       height=height, budget="0.06M"), f"{named}: ", f"set {missing} too",
                           kind=resolution)
        assert "both to 0" in err.hint
    assert not env.mm.LOAD_CALLS


def test_encode_splits_a_batch_to_the_free_memory(env, models, gradient_image, monkeypatch):
    memory, schedules = env.core("sampling.memory"), env.core("schedules")
    pair = torch.cat([gradient_image, gradient_image.flip(1)])
    singles = [first(run(env, "InfinityEncode", image=pair[i:i + 1], vae=models.vae, **SIZE)) for i in range(2)]
    env.mm.LOAD_CALLS.clear()
    env.mm.FREE_MEMORY = 1  # one image per encoder call
    calls, tokenizer = [], models.vae.patcher.model
    image_to_bits = tokenizer.image_to_bits
    monkeypatch.setitem(tokenizer.__dict__, "image_to_bits",
                        lambda x, grids: calls.append(x.shape[0]) or image_to_bits(x, grids))
    both = first(run(env, "InfinityEncode", image=pair, vae=models.vae, **SIZE))
    assert calls == [1, 1]
    per_image = memory.encode_bytes(models.vae.config, schedules.ScaleSchedule(1.0, "0.06M").image_hw, 1,
                                    torch.float32)
    assert [c["memory_required"] for c in env.mm.LOAD_CALLS] == [per_image]
    assert torch.equal(both["samples"], torch.cat([s["samples"] for s in singles]))
    for si, bits in enumerate(both["infinity"]["bits"]):
        assert torch.equal(bits, torch.cat([s["infinity"]["bits"][si] for s in singles]))
    env.mm.interrupt_current_processing(True)  # Cancel is checked after every chunk
    with pytest.raises(env.mm.InterruptProcessingException):
        run(env, "InfinityEncode", image=pair, vae=models.vae, **SIZE)


def test_image_to_image_with_every_scale_kept_reproduces_the_image(env, models, encoded):
    out = first(sampler(env, models, node="InfinitySamplerAdvanced", latent_image=encoded,
                        regenerate_from_scale=SCALES, seed=1))
    assert torch.equal(out["samples"], encoded["samples"])
    assert all(torch.equal(a, b) for a, b in zip(out["infinity"]["bits"], encoded["infinity"]["bits"]))
    assert torch.equal(decode(env, models, out), decode(env, models, encoded))


def test_denoise_keeps_the_coarse_scales(env, models, encoded):
    out = sampler(env, models, latent_image=encoded, denoise=0.5, seed=2)  # round(0.5 * 7) = 4 scales kept
    bits, ref = first(out)["infinity"]["bits"], encoded["infinity"]["bits"]
    assert all(torch.equal(bits[si], ref[si]) for si in range(4))
    assert not all(torch.equal(bits[si], ref[si]) for si in range(4, SCALES))
    assert "4 of 7 scales from the image" in out.ui.as_dict()["text"][0]


def test_bits_survive_core_latent_nodes(env, models, encoded):
    repeated = dict(encoded, samples=encoded["samples"].repeat(3, 1, 1, 1))  # RepeatLatentBatch
    out = first(sampler(env, models, node="InfinitySamplerAdvanced", latent_image=repeated,
                        regenerate_from_scale=SCALES))
    assert out["samples"].shape[0] == 3 and all(torch.equal(s, encoded["samples"][0]) for s in out["samples"])
    sliced = dict(repeated, samples=repeated["samples"][1:2], batch_index=[1])  # LatentFromBatch keeps extras
    out = first(sampler(env, models, node="InfinitySamplerAdvanced", latent_image=sliced,
                        regenerate_from_scale=SCALES))
    assert torch.equal(out["samples"], encoded["samples"])
    loaded = {"samples": encoded["samples"].clone()}  # LoadLatent: extras lost, bits re-quantised
    out = first(sampler(env, models, node="InfinitySamplerAdvanced", latent_image=loaded, regenerate_from_scale=2))
    assert out["samples"].shape == (1, 16, 16, 16) and len(out["infinity"]["bits"]) == SCALES
    single = first(sampler(env, models, latent_image=encoded, denoise=0.6, batch_size=2))
    assert single["samples"].shape[0] == 2


@pytest.mark.parametrize("info", [{"template": 1.0}, "junk",
                                  {"bits": None, "template": 1.0, "budget": "0.06M", "patchify": False},
                                  {"bits": [], "template": 7.0, "budget": "0.06M", "patchify": False},
                                  {"bits": [torch.zeros(1, 1, 16, 16)], "template": 1.0, "budget": "0.06M",
                                   "patchify": False}])
def test_a_damaged_infinity_entry_is_treated_as_missing(env, models, encoded, info, caplog):
    damaged = dict(encoded, infinity=info)  # e.g. written by another pack: schedule and bits re-derived
    out = first(sampler(env, models, node="InfinitySamplerAdvanced", latent_image=damaged, regenerate_from_scale=2))
    assert out["samples"].shape == (1, 16, 16, 16) and len(out["infinity"]["bits"]) == SCALES
    assert "latent_image: ignoring an incomplete 'infinity' entry" in caplog.text
    assert decode(env, models, damaged).shape == (1, 256, 256, 3)


# ---- decode --------------------------------------------------------------------------------------
def test_decode_tiled_and_batched(env, models, encoded):
    whole = decode(env, models, encoded)
    tiled = decode(env, models, encoded, tile_size=8)  # per-tile GroupNorm statistics: close, not equal
    # decoder working memory per call, by hand: the widest full-resolution level of VAE A is base_ch 24 x 1, four
    # maps of it plus RGB, float32, over the whole 256x256 image or one 8-cell (128 px) tile
    assert [c["memory_required"] for c in env.mm.LOAD_CALLS] == [256 * 256 * (4 * 24 + 3) * 4,
                                                                128 * 128 * (4 * 24 + 3) * 4]
    assert tiled.shape == whole.shape and 0 <= tiled.min() and tiled.max() <= 1 and tiled.std() > 0.01
    assert torch.equal(decode(env, models, encoded, tile_size=64), whole)  # a tile covering the grid: exact
    batch = dict(encoded, samples=encoded["samples"].repeat(2, 1, 1, 1))
    env.mm.FREE_MEMORY = 1  # one image per decoder call
    torch.testing.assert_close(decode(env, models, batch), whole.repeat(2, 1, 1, 1))


def test_tiled_decode_of_a_local_decoder_is_exact(env, models, monkeypatch):
    """With a decoder whose every output pixel depends on one latent cell only (nearest upsampling of
    channels 0..2), the blended tiles must give exactly the whole-image decode; values are powers of two
    (or 0), so the linear blend is exact in floating point too."""
    f = models.vae.config.patch_size
    monkeypatch.setitem(models.vae.patcher.model.decoder.__dict__, "forward",
                        lambda z: F.interpolate(z[:, :3], scale_factor=f, mode="nearest"))
    g = torch.Generator().manual_seed(0)
    latent = {"samples": torch.randint(-2, 3, (2, 16, 24, 40), generator=g).float() / 2}  # -1, -0.5, 0, 0.5, 1
    whole = decode(env, models, latent)
    assert whole.shape == (2, 24 * f, 40 * f, 3)
    torch.testing.assert_close(whole, latent["samples"][:, :3].add(1).div(2).repeat_interleave(f, 2)
                               .repeat_interleave(f, 3).permute(0, 2, 3, 1), rtol=0, atol=0)
    for tile in (8, 12, 20):
        assert torch.equal(decode(env, models, latent, tile_size=tile), whole), tile


# ---- bad input: each error names the widget / file and gives a hint --------------------------------
@pytest.mark.parametrize("node, inputs, needles", [
    ("InfinityTransformerLoader", dict(model_name="vae_tiny_a.safetensors"), ("model_name", "vae_tiny_a.safetensors")),
    ("InfinityTransformerLoader", dict(model_name="sd_unet.safetensors"), ("model_name", "sd_unet.safetensors")),
    ("InfinityTransformerLoader", dict(model_name="missing.pth"), ("model_name", "missing.pth", "not found")),
    ("InfinityBitwiseTokenizerLoader", dict(vae_name="infinity_tiny_a.safetensors"),
     ("vae_name", "infinity_tiny_a.safetensors")),
    ("InfinityTextEncoderLoader", dict(text_encoder_name="not_t5.safetensors"), ("text_encoder_name", "not_t5")),
])
def test_loaders_reject_wrong_files(env, node, inputs, needles):
    # as if the name came over a link (the server checks a combo widget's value against its options)
    expect_error(lambda: run(env, node, linked=tuple(inputs), **inputs), *needles)


def test_the_server_refuses_out_of_range_widgets_before_execute(env, models):
    """What the server's validation refuses never reaches execute (the node's own checks serve linked values)."""
    refused = env.execution.PromptValidationError
    cases = [("InfinitySampler", dict(width=8), "width", "value_smaller_than_min"),
             ("InfinitySampler", dict(tau=0.0), "tau", "value_smaller_than_min"),
             ("InfinitySampler", dict(budget="2M"), "budget", "value_not_in_list"),
             ("InfinitySampler", dict(batch_size=65), "batch_size", "value_bigger_than_max"),
             ("InfinitySamplerAdvanced", dict(top_p=1.5), "top_p", "value_bigger_than_max"),
             ("InfinitySamplerAdvanced", dict(top_k=-1), "top_k", "value_smaller_than_min"),
             ("InfinitySamplerAdvanced", dict(cfg_insertion_layer=2), "cfg_insertion_layer", "value_bigger_than_max"),
             ("InfinitySampler", dict(height=63), "height", "value_smaller_than_min"),
             ("InfinitySampler", dict(width=3585), "width", "value_bigger_than_max"),
             ("InfinitySampler", dict(batch_size=0), "batch_size", "value_smaller_than_min"),
             ("InfinitySampler", dict(seed=-1), "seed", "value_smaller_than_min"),
             ("InfinitySampler", dict(seed=2**64), "seed", "value_bigger_than_max"),
             ("InfinitySampler", dict(cfg=-0.5), "cfg", "value_smaller_than_min"),
             ("InfinitySampler", dict(cfg=101.0), "cfg", "value_bigger_than_max"),
             ("InfinitySampler", dict(tau=5.5), "tau", "value_bigger_than_max"),
             ("InfinitySampler", dict(denoise=-0.1), "denoise", "value_smaller_than_min"),
             ("InfinitySampler", dict(denoise=1.1), "denoise", "value_bigger_than_max"),
             ("InfinitySamplerAdvanced", dict(top_p=-0.1), "top_p", "value_smaller_than_min"),
             ("InfinitySamplerAdvanced", dict(top_k=3), "top_k", "value_bigger_than_max"),
             ("InfinitySamplerAdvanced", dict(cfg_insertion_layer=-129), "cfg_insertion_layer",
              "value_smaller_than_min"),
             ("InfinitySamplerAdvanced", dict(regenerate_from_scale=-2), "regenerate_from_scale",
              "value_smaller_than_min"),
             ("InfinitySamplerAdvanced", dict(regenerate_from_scale=17), "regenerate_from_scale",
              "value_bigger_than_max"),
             ("InfinitySamplerAdvanced", dict(stop_after_scale=-1), "stop_after_scale", "value_smaller_than_min"),
             ("InfinitySamplerAdvanced", dict(stop_after_scale=17), "stop_after_scale", "value_bigger_than_max")]
    for node, inputs, widget, kind in cases:
        with pytest.raises(refused) as info:
            sampler(env, models, node=node, **inputs)
        assert (info.value.input_name, info.value.kind) == (widget, kind), (node, inputs)
    for node, inputs in [("InfinityDecode", dict(tile_size=-8)), ("InfinityDecode", dict(tile_size=520)),
                         ("InfinityEncode", dict(width=-16)), ("InfinityEncode", dict(height=3600)),
                         ("InfinityEncode", dict(budget="3M"))]:
        with pytest.raises(refused):
            run(env, node, samples={}, vae=models.vae, **inputs) if node == "InfinityDecode" else \
                run(env, node, image=torch.zeros(1, 8, 8, 3), vae=models.vae, **inputs)
    with pytest.raises(refused, match="value_not_in_list"):
        run(env, "InfinityTransformerLoader", model_name="missing.pth")
    with pytest.raises(refused, match="value_not_in_list"):
        run(env, "InfinityTransformerLoader", model_name="infinity_tiny_a.safetensors", weight_dtype="int8")
    with pytest.raises(refused, match="required_input_missing"):
        run(env, "InfinityDecode", vae=models.vae)
    assert not env.mm.LOAD_CALLS


def test_bad_sampler_inputs(env, models, encoded):
    core_errors = env.core("errors")
    # out-of-range widget values only reach the node over a link (e.g. from a primitive or math node)
    expect_error(lambda: sampler(env, models, width=8, linked=("width",)), "width", kind=core_errors.ResolutionError)
    expect_error(lambda: sampler(env, models, width=16, height=16, linked=("width", "height")), "width/height")
    expect_error(lambda: sampler(env, models, width=100, height=3000), "width/height")
    empty = first(run(env, "InfinityTextEncode", text_encoder=models.t5, text=""))
    expect_error(lambda: sampler(env, models, positive=empty), "positive", "'text'", kind=core_errors.PromptError)
    foreign = {"samples": torch.zeros(1, 4, 32, 32)}
    expect_error(lambda: sampler(env, models, latent_image=foreign), "latent_image", "another model family")
    emb = models.negative.embedding
    three = type(models.negative)(type(emb).cat([emb, emb, emb]), "x")
    expect_error(lambda: sampler(env, models, negative=three, batch_size=2), "negative", "3 prompts")
    narrow = type(models.negative)(type(emb)(emb.features_NC[:, :64], emb.lens), "x")
    expect_error(lambda: sampler(env, models, positive=narrow), "positive", "128")
    advanced = "InfinitySamplerAdvanced"
    expect_error(lambda: sampler(env, models, node=advanced, cfg_list="3, x"), "cfg_list")
    expect_error(lambda: sampler(env, models, node=advanced, tau_list="0.5, 0.5"), "tau_list", "7 scales")
    expect_error(lambda: sampler(env, models, node=advanced, cfg_list="3, 3"), "cfg_list", "7 scales")
    expect_error(lambda: sampler(env, models, node=advanced, cfg_insertion_layer=-9), "cfg_insertion_layer")
    sampling_error = core_errors.SamplingError
    expect_error(lambda: sampler(env, models, tau=0.0, linked=("tau",)), "tau: ", "above 0", kind=sampling_error)
    expect_error(lambda: sampler(env, models, node=advanced, tau_list="0.5, 0.5, 0, 0.5, 0.5, 0.5, 0.5"),
                 "tau_list: ", "above 0", kind=sampling_error)
    expect_error(lambda: sampler(env, models, node=advanced, top_p=1.5, linked=("top_p",)), "top_p 1.5",
                 kind=sampling_error)
    expect_error(lambda: sampler(env, models, node=advanced, top_k=-1, linked=("top_k",)), "top_k -1",
                 kind=sampling_error)
    expect_error(lambda: sampler(env, models, budget="2M", linked=("budget",)), "budget: ", "2M",
                 kind=core_errors.ResolutionError)
    expect_error(lambda: sampler(env, models, denoise=0.5), "denoise", "latent_image")
    expect_error(lambda: sampler(env, models, node=advanced, latent_image=encoded, regenerate_from_scale=9),
                 "regenerate_from_scale")
    two = dict(encoded, samples=encoded["samples"].repeat(2, 1, 1, 1))
    expect_error(lambda: sampler(env, models, latent_image=two, batch_size=3), "batch_size")
    assert not env.mm.LOAD_CALLS  # every error above comes before any model is loaded
    env.mm.TOTAL_MEMORY = 2**20
    expect_error(lambda: sampler(env, models), "MiB", "batch_size", kind=core_errors.MemoryBudgetError)
    assert not env.mm.LOAD_CALLS  # refused before loading anything


def test_vae_that_does_not_match_the_model(env, models, encoded, gradient_image):
    d32 = first(run(env, "InfinityBitwiseTokenizerLoader", vae_name="vae_d32.safetensors"))
    incompatible = env.core("errors").IncompatibleModelsError
    expect_error(lambda: sampler(env, models, node="InfinitySamplerAdvanced", vae=d32), "vae", "32 bits",
                 kind=incompatible)
    expect_error(lambda: run(env, "InfinityDecode", samples=encoded, vae=d32, tile_size=0), "samples", "16 channels",
                 kind=incompatible)
    latent32 = first(run(env, "InfinityEncode", image=gradient_image, vae=d32, width=0, height=0, budget="0.06M"))
    expect_error(lambda: sampler(env, models, latent_image=latent32, denoise=0.5), "latent_image", "32 channels",
                 kind=incompatible)
    expect_error(lambda: run(env, "InfinityDecode", samples={"samples": torch.zeros(1, 4, 8, 8)}, vae=models.vae),
                 "samples", "another model family")
    for broken, shown in (({}, "got None"), ({"samples": torch.zeros(16, 8, 8)}, "got (16, 8, 8)")):
        expect_error(lambda: run(env, "InfinityDecode", samples=broken, vae=models.vae), "samples: ", shown)
    for tile in (1, 3, 7):
        expect_error(lambda: decode(env, models, encoded, tile_size=tile), "tile_size")
    patchified = dict(encoded, infinity=dict(encoded["infinity"], patchify=True))  # same channels, other layout
    expect_error(lambda: sampler(env, models, latent_image=patchified, denoise=0.5), "latent_image: ",
                 "with spatial patchify", kind=incompatible)
    expect_error(lambda: decode(env, models, patchified), "samples: ", "with spatial patchify", kind=incompatible)


def test_memory_figures_are_named_in_mib_or_gib(env):
    size = env.pack.nodes.comfy_glue._size
    assert (size(2**30), size(2**30 - 2**20), size(3 * 2**29)) == ("1.00 GiB", "1023.0 MiB", "1.50 GiB")


def test_a_latent_resized_by_another_node_follows_its_own_grid(env, models, encoded):
    """The stored schedule only holds while the samples still have its final grid (e.g. not after an upscale)."""
    upscaled = dict(encoded, samples=F.interpolate(encoded["samples"], size=(32, 32), mode="nearest"))
    out = first(sampler(env, models, node="InfinitySamplerAdvanced", latent_image=upscaled, regenerate_from_scale=3))
    assert out["samples"].shape == (1, 16, 32, 32) and out["infinity"]["budget"] == "0.25M"
    assert [tuple(b.shape[2:4]) for b in out["infinity"]["bits"]][-1] == (32, 32)


def test_a_fresh_encode_node_keeps_the_images_aspect(env, models, gradient_image):
    out = run(env, "InfinityEncode", image=gradient_image, vae=models.vae)  # 300x280 (h x w): template 1.0
    latent = first(out)
    assert latent["samples"].shape[-1] == latent["samples"].shape[-2] and latent["infinity"]["template"] == 1.0
