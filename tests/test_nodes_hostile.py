"""Hostile input through the nodes: the core's checks (validation.py) with the widget or socket named,
all raised before any model is loaded. Harness and fixtures: tests/pack_harness.py."""
from __future__ import annotations

import pytest
import torch

from pack_harness import SIZE, decode, expect_error, first, needs_shared, run, sampler

pytestmark = needs_shared


def encode(env, models, image):
    return first(run(env, "InfinityEncode", image=image, vae=models.vae, **SIZE))


def test_grayscale_and_rgba_images_encode_like_rgb(env, models, gradient_image):
    rgb = encode(env, models, gradient_image[..., :1].expand(-1, -1, -1, 3))
    gray = encode(env, models, gradient_image[..., :1])
    assert torch.equal(gray["samples"], rgb["samples"])
    rgba = torch.cat([gradient_image, torch.ones_like(gradient_image[..., :1])], -1)
    assert torch.equal(encode(env, models, rgba)["samples"], encode(env, models, gradient_image)["samples"])


@pytest.mark.parametrize("make, needles", [
    (lambda img: img[..., :2], ("image: ", "2 channels")),
    (lambda img: img[..., 0], ("image: ", "MASK")),
    (lambda img: img.clone().index_fill_(1, torch.tensor([5]), float("nan")), ("image: ", "NaN")),
    (lambda img: (img * 255).to(torch.uint8), ("image: ", "255")),
])
def test_unusable_images_are_refused_before_loading(env, models, gradient_image, make, needles):
    expect_error(lambda: encode(env, models, make(gradient_image)), *needles, kind=env.core("errors").InputError)
    assert not env.mm.LOAD_CALLS


def test_non_finite_numbers_are_refused_by_widget(env, models):
    errors = env.core("errors")
    advanced = "InfinitySamplerAdvanced"
    expect_error(lambda: sampler(env, models, cfg=float("nan")), "cfg: ", "finite", kind=errors.SamplingError)
    expect_error(lambda: sampler(env, models, node=advanced, cfg_list="3, 3, nan, 3, 3, 3, 3"), "cfg_list: ",
                 "scale 3", kind=errors.SamplingError)
    expect_error(lambda: sampler(env, models, node=advanced, tau_list="inf"), "tau_list: ", "uniform random bits",
                 kind=errors.SamplingError)
    expect_error(lambda: sampler(env, models, node=advanced, top_p=float("nan")), "top_k/top_p: ", "top_p",
                 kind=errors.SamplingError)
    emb = models.positive.embedding
    broken = type(models.positive)(type(emb)(emb.features_NC * float("inf"), emb.lens), "x")
    expect_error(lambda: sampler(env, models, positive=broken), "positive: ", "NaN or infinite",
                 kind=errors.PromptError)
    expect_error(lambda: sampler(env, models, negative=broken), "negative: ", kind=errors.PromptError)
    assert not env.mm.LOAD_CALLS


def test_broken_latents_are_refused_by_socket(env, models, gradient_image):
    latent = encode(env, models, gradient_image)
    broken = dict(latent, samples=latent["samples"].clone())
    broken["samples"][0, 3, 2, 2] = float("nan")
    input_error = env.core("errors").InputError
    env.mm.LOAD_CALLS.clear()
    expect_error(lambda: decode(env, models, broken), "samples: ", "1 NaN", kind=input_error)
    expect_error(lambda: sampler(env, models, latent_image=broken, denoise=0.5), "latent_image: ", "NaN",
                 kind=input_error)
    assert not env.mm.LOAD_CALLS
