"""Hostile input at the core's entry points (validation.py): non-finite numbers, odd images, wrong-width
text, broken latents. Each is refused with a named error and a HINT, or handled by the documented policy."""
import copy
import logging

import pytest
import torch

from infinity_core.model.conditioning import TextEmbedding
from infinity_core.errors import IncompatibleModelsError, InputError, NumericalError, PromptError, SamplingError
from infinity_core.images import decode_tiled, from_rgb01
from infinity_core.pipeline import GenerationRequest, generate
from infinity_core.sampling.sampler import SamplerSettings, make_generators, sample
from infinity_core.schedules import ScaleSchedule
from pack_harness import expect_error

SQUARE = ScaleSchedule(1.0, "0.06M")
NAN, INF = float("nan"), float("inf")


def run(model, text, **kw):
    return sample(model, text, SQUARE, generators=make_generators(0, 1), **kw)


def raises(kind, fn, *needles):
    return expect_error(fn, *needles, kind=kind)


# ---- non-finite numbers --------------------------------------------------------------------------------
@pytest.mark.parametrize("settings, needles", [
    (SamplerSettings(cfg=NAN), ("cfg", "finite", "nan")),
    (SamplerSettings(cfg=[3.0, 3.0, NAN, 3.0, 3.0, 3.0, 3.0]), ("cfg", "scale 3")),
    (SamplerSettings(cfg=INF), ("cfg", "inf")),
    (SamplerSettings(tau=INF), ("tau", "uniform random bits")),
    (SamplerSettings(tau=NAN), ("tau", "finite")),
    (SamplerSettings(top_p=NAN), ("top_p", "finite")),
])
def test_non_finite_settings_are_refused_by_name(tiny_transformer, prompt, settings, needles):
    raises(SamplingError, lambda: run(tiny_transformer, prompt, settings=settings), *needles)
    raises(SamplingError, lambda: settings.validate(tiny_transformer.config.depth, SQUARE.num_scales), *needles)


def test_non_finite_text_features_are_refused(tiny_transformer, prompt):
    broken = prompt.features_NC.clone()
    broken[2, 5] = NAN
    raises(PromptError, lambda: run(tiny_transformer, TextEmbedding(broken, prompt.lens)), "text", "1 NaN", "fp16")
    raises(PromptError, lambda: run(tiny_transformer, prompt, negative=TextEmbedding(broken * INF, prompt.lens)),
           "negative text", "NaN")
    integer = TextEmbedding(prompt.features_NC.to(torch.int32), prompt.lens)
    raises(PromptError, lambda: run(tiny_transformer, integer), "torch.int32")


def test_text_features_of_the_wrong_width_are_refused_by_the_core(tiny_transformer, prompt):
    narrow = TextEmbedding(prompt.features_NC[:, :64], prompt.lens)
    raises(IncompatibleModelsError, lambda: run(tiny_transformer, narrow), "64 wide", "128-wide")
    raises(IncompatibleModelsError, lambda: run(tiny_transformer, prompt, negative=narrow), "negative text")


def test_a_model_with_fewer_levels_or_a_shorter_null_text_is_refused(prompt):
    from infinity_core.model.config import InfinityConfig
    from infinity_core.files.random_models import random_transformer
    few = random_transformer(InfinityConfig(depth=1, embed_dim=64, num_heads=2, bits_per_token=16, text_channels=128,
                                            num_levels=3, text_maxlen=4))
    short = TextEmbedding.from_single(prompt.features_NC[:3])
    raises(SamplingError, lambda: run(few, short), "7 scales", "only 3")
    raises(PromptError, lambda: run(few, prompt), "9 text tokens", "at most 4")


def _overflowing(model, factor=1e5):
    """fp16 weights whose FFN outputs exceed fp16's range (65504) but not float32's."""
    low = copy.deepcopy(model).to(torch.float16)
    with torch.no_grad():
        for block in low.blocks:
            block.ffn.fc2.weight.mul_(factor)
    return low


def test_fp16_overflow_is_named_per_scale_instead_of_the_multinomial_crash(tiny_transformer, prompt):
    low = _overflowing(tiny_transformer)
    err = raises(NumericalError, lambda: run(low, prompt, compute_dtype=torch.float16), "scale 1 of 7", "NaN",
                 "float16", "bf16 or fp32")
    assert "probability tensor" not in str(err)
    result = run(low, prompt, compute_dtype=torch.float32)  # the same weights compute fine in float32
    assert len(result.bits) == SQUARE.num_scales


def test_a_tiny_tau_that_overflows_names_the_settings(tiny_transformer, prompt):
    raises(NumericalError, lambda: run(tiny_transformer, prompt, settings=SamplerSettings(tau=1e-38)),
           "scale 1 of 7", "tiny tau")


# ---- images into the tokenizer -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def picture():
    g = torch.Generator().manual_seed(4)
    return torch.rand(1, 3, 64, 48, generator=g) * 2 - 1  # [-1, 1], 64x48 px


GRIDS = [(1, 1), (2, 2), (4, 3)]


def test_grayscale_is_repeated_and_alpha_dropped(tiny_tokenizer, picture, caplog):
    gray = picture[:, :1]
    expected = tiny_tokenizer.image_to_bits(gray.repeat(1, 3, 1, 1), GRIDS)
    got = tiny_tokenizer.image_to_bits(gray, GRIDS)
    assert torch.equal(got[0], expected[0]) and all(torch.equal(a, b) for a, b in zip(got[1], expected[1]))
    opaque = torch.cat([picture, torch.ones_like(picture[:, :1])], 1)
    rgb = tiny_tokenizer.encode_features(picture)
    assert torch.equal(tiny_tokenizer.encode_features(opaque), rgb)
    half = torch.cat([picture, torch.full_like(picture[:, :1], 0.5)], 1)
    with caplog.at_level(logging.WARNING):
        assert torch.equal(tiny_tokenizer.encode_features(half), rgb)  # dropped, not composited
    assert "alpha channel is dropped" in caplog.text


@pytest.mark.parametrize("channels", [2, 5])
def test_other_channel_counts_are_refused_by_name(tiny_tokenizer, picture, channels):
    image = picture[:, :1].repeat(1, channels, 1, 1)
    raises(InputError, lambda: tiny_tokenizer.encode_features(image), f"{channels} channels", "MASK")


def test_too_small_and_broken_images_are_refused(tiny_tokenizer, picture):
    least = 2 * tiny_tokenizer.config.patch_size  # 32: below it, torch's GroupNorm fails on this tiny tokenizer
    raises(InputError, lambda: tiny_tokenizer.encode_features(picture[..., :8, :8]), "8x8 px",
           f"at least {least}x{least}")
    raises(InputError, lambda: tiny_tokenizer.encode_features(picture[..., :40, :31]), "31x40")
    assert tiny_tokenizer.encode_features(picture[..., :least, :least]).shape[-2:] == (2, 2)
    raises(InputError, lambda: tiny_tokenizer.encode_features(picture[0]), "[B, 3, H, W]")
    nan = picture.clone()
    nan[0, 1, 3, 3] = NAN
    raises(InputError, lambda: tiny_tokenizer.image_to_bits(nan, GRIDS), "1 NaN", "upstream")
    raises(InputError, lambda: tiny_tokenizer.encode_features(picture.mul(127).to(torch.int16)), "torch.int16", "255")


def test_comfyui_images_get_the_same_policy(picture):
    rgb01 = ((picture + 1) / 2).permute(0, 2, 3, 1)  # [1, 64, 48, 3]
    size = (32, 32)
    expected = from_rgb01(rgb01[..., :1].expand(-1, -1, -1, 3), size)
    assert torch.equal(from_rgb01(rgb01[..., :1], size), expected)
    rgba = torch.cat([rgb01, torch.ones_like(rgb01[..., :1])], -1)
    assert torch.equal(from_rgb01(rgba, size), from_rgb01(rgb01, size))
    for bad, needle in ((rgb01[..., :2], "2 channels"), (rgb01[..., 0], "MASK"), (rgb01[:0], "empty"),
                        (rgb01.mul(255).to(torch.uint8), "255"), (rgb01 * INF, "infinite")):
        raises(InputError, lambda: from_rgb01(bad, size), needle)
    assert from_rgb01(rgb01[:, :1, :1], size).shape == (1, 3, 32, 32)  # any size: it is rescaled to the schedule


def test_encoder_overflow_is_named(tiny_tokenizer, picture):
    broken = copy.deepcopy(tiny_tokenizer)
    with torch.no_grad():
        broken.encoder.conv_out.conv.weight.fill_(3e38)
    raises(NumericalError, lambda: broken.image_to_bits(picture, GRIDS), "encoder output", "float32")


# ---- latents into the decoder --------------------------------------------------------------------------
def test_latents_into_the_decoder_are_checked(tiny_tokenizer):
    z = torch.randn(1, 16, 4, 4)
    assert tiny_tokenizer.decode(z).shape == (1, 3, 64, 64)
    raises(IncompatibleModelsError, lambda: tiny_tokenizer.decode(torch.randn(1, 4, 4, 4)), "4 channels", "16 bits")
    raises(InputError, lambda: tiny_tokenizer.decode(z[0]), "[B, 16, H, W]")
    raises(InputError, lambda: tiny_tokenizer.decode(z[:, :, :0]), "[B, 16, H, W]")
    broken = z.clone()
    broken[0, 0, 0, 0] = NAN
    raises(InputError, lambda: tiny_tokenizer.decode(broken), "1 NaN")
    raises(InputError, lambda: decode_tiled(tiny_tokenizer, broken, tile=8), "NaN")
    raises(InputError, lambda: decode_tiled(tiny_tokenizer, z[0], tile=8), "[B, 16, H, W]")


def test_the_pipeline_passes_the_errors_through(tiny_transformer, tiny_tokenizer, prompt):
    request = GenerationRequest(prompt, width=256, height=256, budget="0.06M", settings=SamplerSettings(cfg=NAN))
    raises(SamplingError, lambda: generate(tiny_transformer, tiny_tokenizer, None, request), "cfg")
