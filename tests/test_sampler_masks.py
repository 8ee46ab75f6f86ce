"""Masks: the pixel-mask -> token-mask rule, feathering, and masked sampling (per-token teacher forcing)
on tiny random models, in both token layouts and on non-square templates."""
import pytest
import torch

from infinity_core.model.config import InfinityConfig, VAEConfig
from infinity_core.errors import SamplingError
from infinity_core.images import from_rgb01
from infinity_core.sampling.masks import MaskRule, TeacherForcing, as_token_bits, feather, fit_mask, regenerate_masks
from infinity_core.model.quantizer import bits_to_codes, summed_codes, token_bits_to_vae
from infinity_core.files.random_models import random_tokenizer, random_transformer
from infinity_core.sampling.sampler import make_generators, sample
from infinity_core.schedules import TEMPLATES, ScaleSchedule
from tolerances import resize_bound, sum_bound

SQUARE = ScaleSchedule(1.0, "0.06M")  # token grids 1, 2, 4, 6, 8, 12, 16; 256x256 px
WIDE = ScaleSchedule(0.666, "0.06M")  # h/w 2:3, final grid 14x21, 224x336 px


def rect_mask(hw, top, left, bottom, right, batch=1):
    m = torch.zeros(batch, *hw)
    m[:, top:bottom, left:right] = 1
    return m


# ---- the rule ------------------------------------------------------------------------------------
def test_every_template_gives_one_mask_per_scale_in_token_order():
    for template in TEMPLATES:
        schedule = ScaleSchedule(template, "1M")
        H, W = schedule.image_hw
        full = regenerate_masks(torch.ones(1, H, W), schedule)
        none = regenerate_masks(torch.zeros(1, 64, 64), schedule)  # other size: fitted, still empty
        assert [m.shape for m in full] == [(1, n) for n in schedule.tokens_per_scale]
        assert all(m.dtype == torch.bool and m.all() for m in full), template
        assert not any(m.any() for m in none), template
        # token (i, j) is row-major: the top-left 16x16 px only draws token 0 of the last scale
        corner = regenerate_masks(rect_mask((H, W), 0, 0, 16, 16), schedule)
        assert corner[-1].nonzero().flatten().tolist() == [0, 0]
        assert not any(m.any() for m in corner[:-1]), template


def test_the_last_scale_draws_every_token_with_a_painted_pixel():
    mask = rect_mask((256, 256), 40, 100, 41, 180)  # one pixel row, x 100..179
    tokens = regenerate_masks(mask, SQUARE)
    assert tokens[-1].view(16, 16).nonzero().tolist() == [[2, j] for j in range(6, 12)]  # 32..47, 96..191
    assert not any(m.any() for m in tokens[:-1])  # no coarser token's support fits in one row


def test_earlier_scales_draw_a_token_only_when_its_support_is_inside_the_mask():
    mask = rect_mask((256, 256), 60, 40, 200, 170)
    tokens = [t.view(*g) for t, g in zip(regenerate_masks(mask, SQUARE), SQUARE.grids)]
    # 8x8 grid, 32 px tokens: the support of token (i, j) is rows/columns [32i - 16, 32i + 48)
    assert tokens[4].nonzero().tolist() == [[3, 2], [3, 3], [4, 2], [4, 3]]
    assert not tokens[0].any() and not tokens[1].any() and not tokens[2].any()
    left = [t.view(*g) for t, g in zip(regenerate_masks(rect_mask((256, 256), 0, 0, 256, 192), SQUARE),
                                        SQUARE.grids)]
    assert not left[0].any()  # the 1x1 token (the global colour) stays the image's unless all is painted
    assert left[1].tolist() == [[True, False], [True, False]]  # 2x2: support of the left ones = columns 0..191


def test_threshold_and_grow():
    soft = rect_mask((256, 256), 64, 64, 192, 192) * 0.3
    assert regenerate_masks(soft, SQUARE)[-1].sum() == 64
    assert not any(m.any() for m in regenerate_masks(soft, SQUARE, MaskRule(threshold=0.5)))
    square = rect_mask((256, 256), 96, 96, 160, 160)
    plain, grown = regenerate_masks(square, SQUARE), regenerate_masks(square, SQUARE, MaskRule(grow=32))
    assert torch.equal(plain[-1], grown[-1])  # the last scale covers what was painted, grown or not
    assert sum(m.sum() for m in grown[:-1]) > sum(m.sum() for m in plain[:-1]) > 0
    assert all((g | ~p).all() for p, g in zip(plain, grown))  # growing only adds drawn tokens


def test_masks_are_fitted_like_encode_fits_images():
    """A mask drawn on the original picture lines up with the image after Encode's scale-and-crop."""
    picture = torch.zeros(1, 300, 200, 3)  # portrait, into WIDE's landscape frame: scaled x1.68, rows cropped
    picture[:, 120:180, 30:90] = 1
    image = from_rgb01(picture, WIDE.image_hw)[:, 0] > 0
    mask = fit_mask(picture[..., 0], WIDE.image_hw) > 0.5
    assert image.shape == mask.shape == (1, *WIDE.image_hw) and image.any()
    assert (image ^ mask).float().mean() < 0.002
    wide = torch.zeros(1, 100, 400)
    wide[:, :, :50] = 1  # only the left eighth of a 4:1 picture: cropped away in a square frame
    assert fit_mask(wide, (256, 256)).max() == 0


def test_feather_reaches_exactly_zero_at_the_radius():
    mask = rect_mask((64, 64), 20, 20, 30, 30)
    w = feather(mask, 8)
    assert torch.equal(feather(mask, 0), mask)
    assert (w >= mask).all() and w[0, 25, 25] == 1
    assert w[0, 25, 30 + 7] > 0 and w[0, 25, 30 + 8] == 0  # 8 px past the edge: exactly zero
    far = torch.ones_like(w, dtype=torch.bool)
    far[:, 20 - 8:30 + 8, 20 - 8:30 + 8] = False
    assert (w[far] == 0).all()


# ---- masked sampling -----------------------------------------------------------------------------
def encode(tokenizer, images_BHW3, schedule):
    x = from_rgb01(images_BHW3, schedule.image_hw)
    return tokenizer.image_to_bits(x, schedule.vae_grids(tokenizer.patchify))[1]


def pictures(batch, hw):
    y, x = torch.meshgrid(torch.linspace(0, 1, hw[0]), torch.linspace(0, 1, hw[1]), indexing="ij")
    base = torch.stack([x, y, (x * y) ** 0.5], -1)
    return torch.stack([base.roll(37 * i, dims=1).flip(0) if i else base for i in range(batch)])


def masked_run(model, text, schedule, bits, mask, seed=5, keep_scales=0, patchify=False, batch=1):
    teacher = TeacherForcing.for_image(bits, schedule, keep_scales, mask, patchify)
    return sample(model, text, schedule, generators=make_generators(seed, batch), batch=batch, patchify=patchify,
                  teacher=teacher)


def assert_kept_bits_are_the_images(result, bits, masks, patchify, keep_scales=0):
    for si, (got, want) in enumerate(zip(result.bits, bits)):
        want = as_token_bits(want, patchify)
        kept = torch.ones_like(masks[si]) if si < keep_scales else ~masks[si]
        kept = kept.expand(got.shape[0], -1)
        assert torch.equal(got[kept], want.expand_as(got)[kept]), si
        if (~kept).sum() > 4:
            assert not torch.equal(got[~kept], want.expand_as(got)[~kept]), si  # the drawn ones are new


@pytest.fixture(scope="module")
def square_bits(tiny_tokenizer):
    return encode(tiny_tokenizer, pictures(1, (256, 256)), SQUARE)


def test_bits_outside_the_mask_are_the_images_at_every_scale(tiny_transformer, tiny_tokenizer, prompt, square_bits):
    mask = rect_mask((256, 256), 30, 150, 220, 250)
    result = masked_run(tiny_transformer, prompt, SQUARE, square_bits, mask)
    masks = regenerate_masks(mask, SQUARE)
    assert masks[-1].float().mean() == pytest.approx(0.4, abs=0.1) and not masks[0].any() and masks[4].any()
    assert_kept_bits_are_the_images(result, square_bits, masks, patchify=False)


@pytest.mark.parametrize("grow", [0, 24])
def test_the_latent_outside_the_allowed_region_is_the_images_exactly(tiny_transformer, prompt, square_bits, grow):
    mask = torch.zeros(1, 256, 256)
    mask[:, 50:170, 70:230] = 1
    mask[:, 200:210, 20:40] = 0.5
    rule = MaskRule(grow=grow)
    teacher = TeacherForcing.masked(square_bits, regenerate_masks(mask, SQUARE, rule))
    result = sample(tiny_transformer, prompt, SQUARE, generators=make_generators(5, 1), teacher=teacher)
    image = summed_codes(square_bits, SQUARE.final_grid).squeeze(2)
    allowed = torch.nn.functional.max_pool2d((mask > 0).float()[None], 2 * grow + 1, 1, grow)[0] if grow else mask > 0
    cells_allowed = torch.nn.functional.max_pool2d(allowed.float()[None], 16)[0, 0] > 0  # 16 px per cell
    assert 0 < cells_allowed.float().mean() < 0.8
    outside = ~cells_allowed
    assert torch.equal(result.summed_codes[0][:, outside], image[0][:, outside])
    assert not torch.equal(result.summed_codes[0][:, cells_allowed], image[0][:, cells_allowed])


def test_all_drawn_mask_is_text_to_image_bit_for_bit(tiny_transformer, prompt, square_bits):
    plain = sample(tiny_transformer, prompt, SQUARE, generators=make_generators(5, 1))
    masked = masked_run(tiny_transformer, prompt, SQUARE, square_bits, torch.ones(1, 256, 256))
    assert all(torch.equal(a, b) for a, b in zip(plain.bits, masked.bits))
    assert torch.equal(plain.summed_codes, masked.summed_codes)


def test_all_kept_mask_reproduces_the_encoded_image(tiny_transformer, prompt, square_bits):
    masked = masked_run(tiny_transformer, prompt, SQUARE, square_bits, torch.zeros(1, 300, 280))
    assert all(torch.equal(a, as_token_bits(b, False)) for a, b in zip(masked.bits, square_bits))
    assert torch.equal(masked.summed_codes, summed_codes(square_bits, SQUARE.final_grid).squeeze(2))


def test_leading_scales_whole_then_the_mask(tiny_transformer, prompt, square_bits):
    mask = rect_mask((256, 256), 0, 0, 256, 100)
    result = masked_run(tiny_transformer, prompt, SQUARE, square_bits, mask, keep_scales=3)
    assert_kept_bits_are_the_images(result, square_bits, regenerate_masks(mask, SQUARE), False, keep_scales=3)
    img2img = TeacherForcing.for_image(square_bits, SQUARE, 3)  # no mask: the first 3 scales, then free
    assert img2img.num_scales == 3 and img2img.keep == (None, None, None)


def test_patchify_non_square_and_a_batch_of_different_images_with_their_own_masks(prompt):
    config = InfinityConfig(depth=2, embed_dim=64, num_heads=2, bits_per_token=64, text_channels=128)
    vae = VAEConfig(codebook_dim=16, base_ch=24, encoder_ch_mult=(1, 1, 1, 2), decoder_ch_mult=(1, 1, 1, 2),
                    patch_size=8)
    model, tokenizer = random_transformer(config, 3), random_tokenizer(vae, 4)
    assert tokenizer.patchify
    H, W = WIDE.image_hw
    bits = encode(tokenizer, pictures(2, (H, W)), WIDE)  # two different pictures
    assert not torch.equal(bits[-1][0], bits[-1][1])
    mask = torch.stack([rect_mask((H, W), 0, 0, H, W // 3)[0], rect_mask((H, W), H // 2, 0, H, W)[0]])
    result = masked_run(model, prompt, WIDE, bits, mask, seed=9, patchify=True, batch=2)
    masks = regenerate_masks(mask, WIDE)
    assert not torch.equal(masks[-1][0], masks[-1][1])
    assert_kept_bits_are_the_images(result, bits, masks, patchify=True)
    for si, grid in enumerate(WIDE.grids):  # the same in the VAE layout: a kept token = its 2x2 latent cells
        cells = masks[si].view(2, *grid).repeat_interleave(2, 1).repeat_interleave(2, 2)
        got = token_bits_to_vae(result.bits[si], grid, True)[:, 0]
        assert torch.equal(got[~cells], bits[si][:, 0][~cells]), si
    # outside the mask the latent (8 px cells) is exactly what the sampler gives for the image itself (in this
    # layout the sampler's running sum and summed_codes() resize the same codes through other kernels, so they
    # differ by float rounding: each of the S resized terms by resize_bound, their sum by sum_bound, twice)
    latent = masked_run(model, prompt, WIDE, bits, torch.zeros(2, H, W), seed=9, patchify=True, batch=2).summed_codes
    final = WIDE.vae_grids(True)[-1]
    code, S = bits_to_codes(bits[0]).abs().max().item(), len(bits)
    bound = 2 * (S * resize_bound(max(final), code) + sum_bound(S, S * code))
    torch.testing.assert_close(latent, summed_codes(bits, final).squeeze(2), rtol=0, atol=bound)
    outside = (torch.nn.functional.max_pool2d(mask[:, None], 8)[:, 0] == 0)[:, None].expand_as(latent)
    assert outside.any() and torch.equal(result.summed_codes[outside], latent[outside])
    for i in range(2):  # each image equals its own single run with seed + i
        single = masked_run(model, prompt, WIDE, [b[i:i + 1] for b in bits], mask[i:i + 1], seed=9 + i, patchify=True)
        assert all(torch.equal(a[i:i + 1], b) for a, b in zip(result.bits, single.bits)), i


def test_teacher_forcing_that_does_not_fit_the_run_is_refused(tiny_transformer, prompt, square_bits):
    wrong = TeacherForcing.for_image(square_bits, SQUARE, 3)  # scale 2: 4x4 here, 2x3 in WIDE
    with pytest.raises(SamplingError, match="HINT"):
        sample(tiny_transformer, prompt, WIDE, generators=make_generators(0, 1), teacher=wrong)
    with pytest.raises(SamplingError, match="needs"):
        sample(tiny_transformer, prompt, SQUARE, generators=make_generators(0, 3), batch=3,
               teacher=TeacherForcing.first_scales([torch.cat([b] * 2) for b in square_bits[:2]]))
    with pytest.raises(SamplingError, match="token masks"):
        TeacherForcing.masked(square_bits, regenerate_masks(torch.ones(1, 8, 8), SQUARE)[:3])


def test_keep_mask_tells_a_pruning_policy_which_tokens_are_forced(square_bits):
    teacher = TeacherForcing.for_image(square_bits, SQUARE, 1, rect_mask((256, 256), 0, 0, 256, 128))
    assert teacher.keep_mask(0, 2, 1).all()
    final = teacher.keep_mask(SQUARE.num_scales - 1, 2, 256)
    assert final.shape == (2, 256) and final.float().mean() == 0.5
    assert not teacher.keep_mask(SQUARE.num_scales - 2, 2, 144).all()
    assert not teacher.keep_mask(SQUARE.num_scales, 2, 10).any()
