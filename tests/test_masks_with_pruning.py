"""Masks and pruning composed: a masked run with FastVAR pruning on keeps the image outside the mask at
every scale (also the skipped ones), an all-drawn mask changes nothing, and pruned scales compute the drawn
tokens first. Tiny random models, both token layouts."""
import pytest
import torch
import torch.nn.functional as F

from infinity_core.model.config import InfinityConfig, VAEConfig
from infinity_core.images import from_rgb01
from infinity_core.sampling.masks import TeacherForcing, regenerate_masks
from infinity_core.model.pruning import build_policy, farthest_tokens
from infinity_core.model.quantizer import summed_codes, token_bits_to_vae
from infinity_core.files.random_models import random_tokenizer, random_transformer
from infinity_core.sampling.plan import plan_run
from infinity_core.sampling.sampler import SamplerSettings, make_generators, sample
from infinity_core.schedules import ScaleSchedule

SQUARE = ScaleSchedule(1.0, "0.06M")  # token grids 1, 2, 4, 6, 8, 12, 16; 256x256 px
PATCHIFY = InfinityConfig(depth=4, embed_dim=64, num_heads=2, bits_per_token=64, text_channels=128)
PATCHIFY_VAE = VAEConfig(codebook_dim=16, base_ch=24, encoder_ch_mult=(1, 1, 1, 2), decoder_ch_mult=(1, 1, 1, 2),
                         patch_size=8)


def picture(hw):
    y, x = torch.meshgrid(torch.linspace(0, 1, hw[0]), torch.linspace(0, 1, hw[1]), indexing="ij")
    return torch.stack([x, y, (x * y) ** 0.5], -1)[None]


def image_bits(tokenizer, schedule):
    x = from_rgb01(picture(schedule.image_hw), schedule.image_hw)
    return tokenizer.image_to_bits(x, schedule.vae_grids(tokenizer.patchify))[1]


def run(model, text, schedule, teacher=None, pruning=None, patchify=False, seed=5):
    return sample(model, text, schedule, generators=make_generators(seed, 1), teacher=teacher, pruning=pruning,
                  patchify=patchify)


def left_mask(schedule, fraction=0.5):
    H, W = schedule.image_hw
    mask = torch.zeros(1, H, W)
    mask[:, :, :int(W * fraction)] = 1
    return mask


def outside_cells(mask, cell_px):
    """Latent cells with no painted pixel: where the latent must be the image's exactly."""
    return F.max_pool2d(mask[:, None], cell_px)[0, 0] == 0


@pytest.mark.parametrize("preset", ["fastvar", "prune"])
def test_a_masked_run_with_pruning_keeps_the_image_outside_the_mask(tiny_transformer, tiny_tokenizer, prompt,
                                                                    preset):
    bits = image_bits(tiny_tokenizer, SQUARE)
    mask = left_mask(SQUARE)
    regenerate = regenerate_masks(mask, SQUARE)
    teacher = TeacherForcing.masked(bits, regenerate, keep_scales=1)
    policy = build_policy(preset, SQUARE, len(tiny_transformer.blocks))
    result = run(tiny_transformer, prompt, SQUARE, teacher, policy)
    skipped = tuple(range(policy.skip_from, SQUARE.num_scales)) if policy.skip_from is not None else ()
    assert result.skipped == skipped and len(result.bits) == SQUARE.num_scales - len(skipped)
    for si, got in enumerate(result.bits):  # every scale that yields bits keeps the image's outside the mask
        kept = ~regenerate[si] if si >= 1 else torch.ones_like(regenerate[si])
        assert torch.equal(got[kept], bits[si].flatten(1, 3)[kept]), si
    image = summed_codes(bits, SQUARE.final_grid).squeeze(2)[0]
    outside = outside_cells(mask, 16)
    assert 0.3 < outside.float().mean() < 0.7
    assert torch.equal(result.summed_codes[0][:, outside], image[:, outside])  # the skipped scales' kept codes too
    assert not torch.equal(result.summed_codes[0][:, ~outside], image[:, ~outside])


def test_a_skipped_scale_adds_only_the_kept_tokens(tiny_transformer, tiny_tokenizer, prompt):
    """Inside the mask a skipped scale adds nothing (FastVAR's skip), outside it adds the image's codes."""
    bits = image_bits(tiny_tokenizer, SQUARE)
    mask = left_mask(SQUARE)
    policy = build_policy("fastvar", SQUARE, len(tiny_transformer.blocks))
    masked = run(tiny_transformer, prompt, SQUARE, TeacherForcing.masked(bits, regenerate_masks(mask, SQUARE)), policy)
    plain = run(tiny_transformer, prompt, SQUARE, None, policy)
    deep_inside = F.max_pool2d(1 - mask[:, None], 16 * 5, stride=16, padding=32)[0, 0] == 0  # far from the edge
    assert deep_inside.any()
    # far inside, every scale's codes are drawn (the same seed draws the same bits there) and the skipped add 0
    drawn_only = summed_codes([token_bits_to_vae(b, g, False) for b, g in zip(masked.bits, SQUARE.grids)],
                              SQUARE.final_grid).squeeze(2)[0]
    torch.testing.assert_close(masked.summed_codes[0][:, deep_inside], drawn_only[:, deep_inside], rtol=0, atol=1e-6)
    assert masked.skipped == plain.skipped == (5, 6)


def test_an_all_drawn_mask_with_pruning_is_the_pruned_text_to_image_run(tiny_transformer, tiny_tokenizer, prompt):
    bits = image_bits(tiny_tokenizer, SQUARE)
    teacher = TeacherForcing.masked(bits, regenerate_masks(torch.ones(1, 256, 256), SQUARE))
    for preset in ("fastvar", "prune"):
        policy = build_policy(preset, SQUARE, len(tiny_transformer.blocks))
        plain, masked = run(tiny_transformer, prompt, SQUARE, None, policy), run(tiny_transformer, prompt, SQUARE,
                                                                                 teacher, policy)
        assert all(torch.equal(a, b) for a, b in zip(plain.bits, masked.bits)), preset
        assert torch.equal(plain.summed_codes, masked.summed_codes) and plain.skipped == masked.skipped


def test_patchify_masked_run_with_pruning(prompt):
    model, tokenizer = random_transformer(PATCHIFY, 3), random_tokenizer(PATCHIFY_VAE, 4)
    schedule = ScaleSchedule(0.666, "0.06M")
    bits = image_bits(tokenizer, schedule)
    mask = left_mask(schedule, 0.4)
    teacher = TeacherForcing.masked(bits, regenerate_masks(mask, schedule), patchify=True)
    result = run(model, prompt, schedule, teacher, build_policy("fastvar", schedule, 4), patchify=True)
    plain = run(model, prompt, schedule, teacher, None, patchify=True)  # no pruning: the reference for outside
    outside = outside_cells(mask, 16).repeat_interleave(2, 0).repeat_interleave(2, 1)  # 16 px tokens, 8 px cells
    outside = outside[None].expand_as(result.summed_codes[0])
    assert outside.any() and torch.equal(result.summed_codes[0][outside], plain.summed_codes[0][outside])


def output_scales(n, policy, teacher):
    return plan_run(SQUARE, SamplerSettings(), pruning=policy, teacher=teacher, stop_after=n).output_scales


def test_output_scales_counts_what_yields_bits(tiny_tokenizer):
    """The run plan's output_scales: the scales that run, and skipped ones a teacher forces whole."""
    bits = image_bits(tiny_tokenizer, SQUARE)
    policy = build_policy("fastvar", SQUARE, 4)  # scales 5 and 6 skipped
    masked = TeacherForcing.masked(bits, regenerate_masks(left_mask(SQUARE), SQUARE), keep_scales=2)
    assert output_scales(7, policy, None) == 5 and output_scales(7, policy, masked) == 5
    assert output_scales(7, policy, TeacherForcing.first_scales(bits[:6])) == 6  # whole scales yield bits
    assert output_scales(7, None, masked) == 7


def test_pruned_scales_compute_the_drawn_tokens_first():
    x_BLC = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(0))
    plain = farthest_tokens(x_BLC, (4, 4), 6)
    assert torch.equal(farthest_tokens(x_BLC, (4, 4), 6, torch.zeros(2, 16, dtype=torch.bool)), plain)
    first = torch.zeros(2, 16, dtype=torch.bool)
    first[0, :4], first[1, 8:] = True, True  # 4 and 8 drawn tokens
    chosen = farthest_tokens(x_BLC, (4, 4), 6, first)[..., 0]
    assert set(chosen[0, :4].tolist()) == {0, 1, 2, 3} and set(chosen[1].tolist()) <= set(range(8, 16))
    # inside each group the farthest come first: the rest of row 0 is the plain order without the drawn ones
    rest = [i for i in farthest_tokens(x_BLC, (4, 4), 16)[0, :, 0].tolist() if i >= 4][:2]
    assert chosen[0, 4:].tolist() == rest
    dist = ((x_BLC[1] - x_BLC[1].mean(0)) ** 2).sum(-1)
    assert chosen[1].tolist() == (torch.argsort(dist[8:], descending=True)[:6] + 8).tolist()


def test_the_sampler_hands_the_drawn_tokens_to_the_pruned_blocks(tiny_transformer, tiny_tokenizer, prompt,
                                                                  monkeypatch):
    import infinity_core.model.pruning as pruning
    seen, real = [], pruning.farthest_tokens

    def spy(x_BLC, grid_hw, keep, first_BL=None):
        seen.append((grid_hw, first_BL))
        return real(x_BLC, grid_hw, keep, first_BL)

    monkeypatch.setattr(pruning, "farthest_tokens", spy)
    bits = image_bits(tiny_tokenizer, SQUARE)
    regenerate = regenerate_masks(left_mask(SQUARE), SQUARE)
    run(tiny_transformer, prompt, SQUARE, TeacherForcing.masked(bits, regenerate), build_policy("prune", SQUARE, 4))
    pruned = {SQUARE.grids.index(g) for g, _ in seen}
    assert pruned == {3, 4, 5, 6}  # the prune preset's scales, in each pruned block (cfg: 2 rows per image)
    for grid, first in seen:
        si = SQUARE.grids.index(grid)
        assert first is not None and torch.equal(first, regenerate[si].repeat(2, 1)), si
    seen.clear()
    run(tiny_transformer, prompt, SQUARE, None, build_policy("prune", SQUARE, 4))  # unmasked: FastVAR's ranking
    assert seen and all(first is None for _, first in seen)
