"""Masked editing through the nodes (fake ComfyUI): noise_mask from Set Latent Noise Mask and Infinity
Encode, mask batches, denoise with a mask, batch_index seeds, outpainting, Infinity Inpaint Composite.

Harness and fixtures: tests/pack_harness.py.
"""
from __future__ import annotations

import pytest
import torch

from pack_harness import SIZE, decode, expect_error, first, needs_shared, run, sampler

pytestmark = needs_shared


def set_latent_noise_mask(latent: dict, mask: torch.Tensor) -> dict:
    """What core Set Latent Noise Mask does to a LATENT (nodes.py SetLatentNoiseMask.set_mask)."""
    out = latent.copy()
    out["noise_mask"] = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1]))
    return out


def rect(hw, top, left, bottom, right, batch=1):
    m = torch.zeros(batch, *hw)
    m[:, top:bottom, left:right] = 1
    return m


def token_masks(env, mask, latent):
    masks, schedules = env.core("sampling.masks"), env.core("schedules")
    info = latent["infinity"]
    return masks.regenerate_masks(mask, schedules.ScaleSchedule(info["template"], info["budget"]))


def kept_and_drawn_match(env, out, image_latent, mask, keep_scales=0):
    """Kept tokens carry the image's bits at every scale; some drawn ones differ."""
    regen = token_masks(env, mask, image_latent)
    grids = [b.shape[2:4] for b in image_latent["infinity"]["bits"]]
    for si, (got, want) in enumerate(zip(out["infinity"]["bits"], image_latent["infinity"]["bits"])):
        drawn = torch.zeros_like(regen[si]) if si < keep_scales else regen[si]
        drawn = drawn.view(-1, *grids[si]).expand(got.shape[0], -1, -1)
        got, want = got[:, 0], want[:, 0].expand_as(got[:, 0])
        assert torch.equal(got[~drawn], want[~drawn]), si
        if drawn.sum() > 4:
            assert not torch.equal(got[drawn], want[drawn]), si


@pytest.fixture(scope="module")
def encoded(env, models, gradient_image):
    return first(run(env, "InfinityEncode", image=gradient_image, vae=models.vae, **SIZE))


def test_set_latent_noise_mask_is_respected(env, models, encoded):
    mask = rect((256, 256), 60, 40, 200, 170)
    plain = sampler(env, models, latent_image=encoded, seed=3)
    out = sampler(env, models, latent_image=set_latent_noise_mask(encoded, mask), seed=3)
    latent = first(out)
    kept_and_drawn_match(env, latent, encoded, mask)
    assert not torch.equal(latent["samples"], first(plain)["samples"])
    assert "the mask regenerates 3" in out.ui.as_dict()["text"][0]  # 30..39% of the final tokens
    assert torch.equal(latent["noise_mask"], mask.reshape(1, 1, 256, 256))  # kept, as KSampler keeps it
    outside = torch.nn.functional.max_pool2d(mask[None], 16)[0, 0] == 0  # latent cells without a painted pixel
    assert torch.equal(latent["samples"][0][:, outside], encoded["samples"][0][:, outside])
    assert not torch.equal(latent["samples"][0][:, ~outside], encoded["samples"][0][:, ~outside])


def test_full_mask_is_text_to_image_and_empty_mask_is_the_image(env, models, encoded):
    full = first(sampler(env, models, latent_image=set_latent_noise_mask(encoded, torch.ones(1, 64, 64)), seed=8))
    t2i = first(sampler(env, models, seed=8))
    assert all(torch.equal(a, b) for a, b in zip(full["infinity"]["bits"], t2i["infinity"]["bits"]))
    assert torch.equal(full["samples"], t2i["samples"])
    out = sampler(env, models, latent_image=set_latent_noise_mask(encoded, torch.zeros(1, 64, 64)), seed=8)
    assert torch.equal(first(out)["samples"], encoded["samples"])
    assert "regenerates nothing" in out.ui.as_dict()["text"][0]


def test_denoise_keeps_leading_scales_whole_then_the_mask(env, models, encoded):
    mask = rect((256, 256), 0, 128, 256, 256)
    out = sampler(env, models, latent_image=set_latent_noise_mask(encoded, mask), denoise=0.5, seed=2)
    kept_and_drawn_match(env, first(out), encoded, mask, keep_scales=4)  # round(0.5 * 7) = 4
    text = out.ui.as_dict()["text"][0]
    assert "4 of 7 scales from the image" in text and "from scale 5 on" in text
    advanced = first(sampler(env, models, node="InfinitySamplerAdvanced", latent_image=set_latent_noise_mask(
        encoded, mask), regenerate_from_scale=4, seed=2))
    assert torch.equal(advanced["samples"], first(out)["samples"])


def test_encode_mask_in_the_pictures_frame(env, models, gradient_image):
    """Encode's mask is scaled and cropped with the picture: a rectangle painted on the 300x280 original
    lands where the picture's pixels land in the 256x256 frame."""
    mask = rect((300, 280), 100, 50, 200, 150)
    out = run(env, "InfinityEncode", image=gradient_image, vae=models.vae, mask=mask, **SIZE)
    latent = first(out)
    stored = latent["noise_mask"]
    assert stored.shape == (1, 1, 256, 256) and "mask: 13% of the picture" in out.ui.as_dict()["text"][0]
    nh, nw, top, left = env.core("images").cover_box((300, 280), (256, 256))  # 274x256, rows 9.. kept
    s = nh / 300
    rows = (stored[0, 0] > 0.5).any(1).nonzero().flatten()
    cols = (stored[0, 0] > 0.5).any(0).nonzero().flatten()
    assert abs(rows[0] - (100 * s - top)) <= 1 and abs(rows[-1] + 1 - (200 * s - top)) <= 1
    assert abs(cols[0] - 50 * s) <= 1 and abs(cols[-1] + 1 - 150 * s) <= 1
    result = first(sampler(env, models, latent_image=latent, seed=4))
    kept_and_drawn_match(env, result, latent, stored[:, 0])
    empty = run(env, "InfinityEncode", image=gradient_image, vae=models.vae, mask=torch.zeros(1, 64, 64), **SIZE)
    assert "the mask is empty" in empty.ui.as_dict()["text"][0]  # Load Image's mask of an opaque picture


def test_mask_batches(env, models, gradient_image):
    pair = torch.cat([gradient_image, gradient_image.flip(2)])  # two different pictures
    masks = torch.stack([rect((300, 280), 0, 0, 300, 140)[0], rect((300, 280), 150, 0, 300, 280)[0]])
    latent = first(run(env, "InfinityEncode", image=pair, vae=models.vae, mask=masks, **SIZE))
    out = first(sampler(env, models, latent_image=latent, seed=6))
    assert out["samples"].shape[0] == 2
    kept_and_drawn_match(env, out, latent, latent["noise_mask"][:, 0])
    for i in range(2):  # image i with its own mask = a single run with seed + i
        single = dict(latent, samples=latent["samples"][i:i + 1], noise_mask=latent["noise_mask"][i:i + 1])
        assert torch.equal(first(sampler(env, models, latent_image=single, seed=6 + i))["samples"],
                           out["samples"][i:i + 1])
    env.mm.LOAD_CALLS.clear()
    three = torch.zeros(3, 300, 280)
    expect_error(lambda: run(env, "InfinityEncode", image=pair, vae=models.vae, mask=three, **SIZE),
                 "mask: 3 masks for 2 images")
    bad = set_latent_noise_mask(latent, torch.zeros(3, 256, 256))
    expect_error(lambda: sampler(env, models, latent_image=bad), "latent_image (its noise_mask): 3 masks for 2")
    expect_error(lambda: sampler(env, models, latent_image=dict(latent, noise_mask="x")), "noise_mask", "MASK")
    assert not env.mm.LOAD_CALLS


def test_batch_index_reproduces_a_picked_image(env, models):
    batch = first(sampler(env, models, seed=5, batch_size=3))
    picked = dict(batch, samples=batch["samples"][2:3].clone(), batch_index=[2])  # Latent From Batch, index 2
    out = sampler(env, models, latent_image=picked, seed=5)
    again = first(out)
    assert torch.equal(again["samples"], batch["samples"][2:3]) and again["batch_index"] == [2]
    assert "seed + batch_index [2]" in out.ui.as_dict()["text"][0]
    shifted = first(sampler(env, models, latent_image=dict(picked, batch_index=[0]), seed=5))
    assert torch.equal(shifted["samples"], batch["samples"][0:1])


def test_outpainting_from_a_padded_picture(env, models, gradient_image):
    """Pad Image for Outpainting -> Infinity Encode (image + mask) -> Sampler -> Decode -> Composite."""
    picture = gradient_image[:, :256, :192]
    padded = torch.full((1, 256, 256, 3), 0.5)  # 64 px of grey on the right, mask 1 there
    padded[:, :, :192] = picture
    mask = rect((256, 256), 0, 192, 256, 256)
    latent = first(run(env, "InfinityEncode", image=padded, vae=models.vae, mask=mask, **SIZE))
    out = first(sampler(env, models, latent_image=latent, seed=1))
    kept_and_drawn_match(env, out, latent, mask)
    generated = decode(env, models, out)
    composite = run(env, "InfinityInpaintComposite", original=padded, generated=generated, mask=mask, feather=16)
    image = first(composite)
    assert image.shape == padded.shape
    assert torch.equal(image[:, :, :192 - 16], padded[:, :, :192 - 16])  # beyond the feather: the input exactly
    assert torch.equal(image[:, :, 192:], generated[:, :, 192:])  # inside the mask: the generated pixels
    assert not torch.equal(image[:, :, 192 - 16:192], padded[:, :, 192 - 16:192])  # the seam is blended
    assert "exactly the original" in composite.ui.as_dict()["text"][0]


def test_composite_undoes_encodes_scale_and_crop(env, models, gradient_image):
    mask = rect((300, 280), 100, 50, 200, 150)
    latent = first(run(env, "InfinityEncode", image=gradient_image, vae=models.vae, mask=mask, **SIZE))
    generated = decode(env, models, first(sampler(env, models, latent_image=latent, seed=4)))
    image = first(run(env, "InfinityInpaintComposite", original=gradient_image, generated=generated, mask=mask,
                      feather=8))
    assert image.shape == gradient_image.shape  # the original's 300x280, not the template's 256x256
    far = torch.ones(300, 280, dtype=torch.bool)
    far[100 - 8:200 + 8, 50 - 8:150 + 8] = False
    assert torch.equal(image[0][far], gradient_image[0][far])
    inside = image[0, 120:180, 70:130]
    assert (inside - gradient_image[0, 120:180, 70:130]).abs().mean() > 0.02  # the regenerated part
    # the generated frame maps back where Encode took it from: re-fit the composite and compare inside the mask
    refit = env.core("images").from_rgb01(image, (256, 256)).permute(0, 2, 3, 1).add(1).div(2)
    error = [(refit[0, 110:170, 70 + dx:120 + dx] - generated[0, 110:170, 70:120]).abs().mean() for dx in (0, 4)]
    assert error[0] < 0.5 * error[1], error  # aligned to the pixel, not a few pixels off
    batch = torch.cat([generated] * 2)
    expect_error(lambda: run(env, "InfinityInpaintComposite", original=torch.cat([gradient_image] * 3),
                             generated=batch, mask=mask, feather=8), "original: 3")


@pytest.mark.parametrize("pruning", ["fastvar", "prune"])
def test_a_masked_latent_with_pruning_keeps_the_image_outside_the_mask(env, models, encoded, pruning):
    mask = rect((256, 256), 60, 40, 200, 170)
    out = sampler(env, models, latent_image=set_latent_noise_mask(encoded, mask), seed=3, pruning=pruning)
    latent, totals = first(out), {u["total"] for u in env.utils.UPDATES}
    kept_and_drawn_match(env, latent, encoded, mask)  # every scale that yields bits
    outside = torch.nn.functional.max_pool2d(mask[None], 16)[0, 0] == 0
    assert torch.equal(latent["samples"][0][:, outside], encoded["samples"][0][:, outside])
    exact = first(sampler(env, models, latent_image=set_latent_noise_mask(encoded, mask), seed=3))
    assert not torch.equal(latent["samples"][0][:, ~outside], exact["samples"][0][:, ~outside])
    text = out.ui.as_dict()["text"][0]
    assert "the mask regenerates" in text and pruning in text
    if pruning == "fastvar":  # the skipped scales yield no bits; the progress bar counts the others
        assert len(latent["infinity"]["bits"]) == len(encoded["infinity"]["bits"]) - 2
        assert totals == {len(latent["infinity"]["bits"])}
