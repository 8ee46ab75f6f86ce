"""Sampler properties on a tiny random model: guidance, masking, seeds, teacher forcing, cancel, memory."""
import gc
import warnings

import pytest
import torch

from infinity_core.model.conditioning import TextEmbedding
from infinity_core.errors import SamplingError
from infinity_core.model.quantizer import bits_to_codes, summed_codes, token_bits_to_vae, vae_bits_to_tokens
from infinity_core.sampling.masks import TeacherForcing
from infinity_core.sampling.sampler import SamplerSettings, draw_bits, make_generators, mask_logits_, sample
from infinity_core.schedules import ScaleSchedule

SQUARE = ScaleSchedule(1.0, "0.06M")


def run(model, text, seed=0, **kw):
    batch = kw.pop("batch", 1)
    return sample(model, text, kw.pop("schedule", SQUARE), generators=make_generators(seed, batch), batch=batch,
                  record_logits=True, **kw)


def test_cfg_one_equals_the_conditional_pass(tiny_transformer, prompt):
    guided = run(tiny_transformer, prompt, settings=SamplerSettings(cfg=1.0, tau=1.0))
    # with cfg 1 everywhere the unconditional half is not even built: compare with a negative that would change it
    other = run(tiny_transformer, prompt, settings=SamplerSettings(cfg=1.0, tau=1.0), negative=prompt.null_like(
        torch.randn(512, 128)))
    assert all(torch.equal(a, b) for a, b in zip(guided.bits, other.bits))


def test_guidance_mixes_the_two_halves_after_temperature(tiny_transformer, prompt):
    tau, cfg = 0.5, 3.0
    cond = run(tiny_transformer, prompt, settings=SamplerSettings(cfg=1.0, tau=tau))
    forced = TeacherForcing.first_scales(cond.bits)
    guided = run(tiny_transformer, prompt, settings=SamplerSettings(cfg=cfg, tau=tau), teacher=forced)
    uncond_text = tiny_transformer.null_text(prompt)
    uncond = run(tiny_transformer, uncond_text, settings=SamplerSettings(cfg=1.0, tau=tau), teacher=forced)
    for si in range(SQUARE.num_scales):
        expected = cfg * cond.logits[si] + (1 - cfg) * uncond.logits[si]
        assert torch.allclose(guided.logits[si], expected, atol=2e-4), si


def test_top_k_one_is_greedy_and_top_p_drops_unlikely_values():
    logits = torch.tensor([[[0.0, 1.0], [2.0, -1.0], [0.0, 0.0], [5.0, 0.0]]])
    greedy = mask_logits_(logits.clone(), top_k=1, top_p=0.0)
    assert torch.equal(greedy.argmax(-1), torch.tensor([[1, 0, 0, 0]]))
    assert torch.isinf(greedy).sum() == 3  # the tie keeps both values
    nucleus = mask_logits_(logits.clone(), top_k=0, top_p=0.97)  # drops a value with probability <= 0.03
    assert torch.isinf(nucleus).tolist() == [[[False, False], [False, False], [False, False], [False, True]]]
    assert torch.equal(mask_logits_(logits.clone(), top_k=900, top_p=0.0), logits)  # the release default: no-op


def test_multinomial_draw_order_is_one_call_for_the_batch():
    probs = torch.rand(2, 50, 2).softmax(-1)
    g = torch.Generator().manual_seed(5)
    expected = torch.multinomial(probs.view(-1, 2), 1, True, generator=g).view(2, 50)
    assert torch.equal(draw_bits(probs, [torch.Generator().manual_seed(5)]), expected)
    per_image = draw_bits(probs, make_generators(5, 2))
    second = torch.multinomial(probs[1], 1, True, generator=torch.Generator().manual_seed(6)).view(50)
    assert torch.equal(per_image[1], second)


def test_same_seed_same_bits_and_batch_image_i_equals_seed_plus_i(tiny_transformer, prompt):
    settings = SamplerSettings(top_p=0.97)
    a, b = run(tiny_transformer, prompt, 11, settings=settings), run(tiny_transformer, prompt, 11, settings=settings)
    assert all(torch.equal(x, y) for x, y in zip(a.bits, b.bits))
    batch = run(tiny_transformer, prompt, 10, settings=settings, batch=3)
    for i in range(3):
        single = run(tiny_transformer, prompt, 10 + i, settings=settings)
        assert all(torch.equal(x[i], y[0]) for x, y in zip(batch.bits, single.bits)), i


def test_teacher_forcing_all_scales_reproduces_the_given_bits(tiny_transformer, prompt):
    source = run(tiny_transformer, prompt, 3)
    vae_bits = [token_bits_to_vae(b, g, False) for b, g in zip(source.bits, SQUARE.grids)]
    forced = run(tiny_transformer, prompt, 99, teacher=TeacherForcing.first_scales(vae_bits))
    assert all(torch.equal(x, y) for x, y in zip(forced.bits, source.bits))
    assert torch.equal(forced.summed_codes, summed_codes(vae_bits, (16, 16)).squeeze(2))
    partly = run(tiny_transformer, prompt, 99, teacher=TeacherForcing.first_scales(vae_bits[:3]))
    assert all(torch.equal(x, y) for x, y in zip(partly.bits[:3], source.bits[:3]))


def test_patchify_bit_layout_round_trips():
    bits = torch.randint(0, 2, (2, 1, 8, 12, 4), dtype=torch.uint8)
    tokens = vae_bits_to_tokens(bits, patchify=True)
    assert tokens.shape == (2, 4 * 6, 16)
    # channel c*4 + 2*dy + dx of token (i, j) is bit c of cell (2i+dy, 2j+dx)
    assert tokens[1, 1 * 6 + 2, 3 * 4 + 2 * 1 + 0] == bits[1, 0, 3, 4, 3]
    assert torch.equal(token_bits_to_vae(tokens, (4, 6), patchify=True), bits)


def test_codes_are_unit_vectors_of_plus_minus_one_over_sqrt_d():
    codes = bits_to_codes(torch.randint(0, 2, (1, 1, 3, 3, 32)))
    assert torch.allclose(codes.norm(dim=1), torch.ones(1, 1, 3, 3))
    assert torch.allclose(codes.abs(), torch.full_like(codes, 32 ** -0.5))


def test_stop_after_keeps_only_the_first_scales(tiny_transformer, prompt):
    full, early = run(tiny_transformer, prompt, 1), run(tiny_transformer, prompt, 1, stop_after=4)
    assert len(early.bits) == 4 and all(torch.equal(x, y) for x, y in zip(early.bits, full.bits))
    vae_bits = [token_bits_to_vae(b, g, False) for b, g in zip(early.bits, SQUARE.grids)]
    assert torch.allclose(early.summed_codes, summed_codes(vae_bits, (16, 16)).squeeze(2))


def test_hidden_state_guidance_and_bad_settings(tiny_transformer, prompt):
    hidden = run(tiny_transformer, prompt, settings=SamplerSettings(cfg_insertion_layer=(-1,)))
    logits = run(tiny_transformer, prompt)
    assert not all(torch.equal(a, b) for a, b in zip(hidden.logits, logits.logits))
    with pytest.raises(SamplingError, match="cfg_insertion_layer"):
        run(tiny_transformer, prompt, settings=SamplerSettings(cfg_insertion_layer=(2,)))
    with pytest.raises(SamplingError, match="HINT"):
        run(tiny_transformer, prompt, settings=SamplerSettings(cfg=[3.0, 3.0]))


class Cancelled(Exception):
    pass


def test_cancel_between_scales_frees_the_cache_and_the_next_run_is_unchanged(tiny_transformer, prompt):
    reference = run(tiny_transformer, prompt, 4)
    seen = []

    def cancel_at_3(progress):
        seen.append(progress.index)
        if progress.index == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        run(tiny_transformer, prompt, 4, callback=cancel_at_3)
    assert seen == [0, 1, 2]
    again = run(tiny_transformer, prompt, 4)
    assert all(torch.equal(x, y) for x, y in zip(again.bits, reference.bits))


def _live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance() pokes deprecated torch objects that gc also lists
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def test_twenty_generations_keep_memory_flat(tiny_transformer, prompt):
    for _ in range(2):
        run(tiny_transformer, prompt)
    before = _live_tensors()
    for i in range(20):
        run(tiny_transformer, prompt, i)
    assert _live_tensors() <= before


def test_negative_prompt_replaces_the_null_text(tiny_transformer, prompt):
    negative = TextEmbedding.from_single(torch.randn(4, 128, generator=torch.Generator().manual_seed(3)))
    with_negative = run(tiny_transformer, prompt, negative=negative)
    without = run(tiny_transformer, prompt)
    assert not torch.allclose(with_negative.logits[0], without.logits[0])


def _replay_by_hand(model, prompt, bits, cfg, tau, mix_after: int | None):
    """Guided logits of every scale, the network stepped block by block here, given the bits of each scale:
    guidance mixes the hidden states after block `mix_after` (cfg * cond + (1 - cfg) * uncond, then both halves
    continue from the mix), or the tempered logits when `mix_after` is None."""
    full = TextEmbedding.cat([prompt, model.null_text(prompt)])
    state = model.condition(full, SQUARE, "cpu", torch.float32)
    x, summed, out = model.start_tokens(state), 0, []
    try:
        for si, n in enumerate(SQUARE.tokens_per_scale):
            h = x + model.lvl_embed(torch.tensor([si])).float()
            rope = state.rope_Lh[SQUARE.offsets[si]:SQUARE.offsets[si] + n]
            for i, (block, cond, cache) in enumerate(zip(model.blocks, state.blocks, state.caches)):
                h = block(h, cond, state.text_mask, rope, cache, torch.float32)
                if i == mix_after and cfg[si] != 1:
                    mixed = cfg[si] * h[:1] + (1 - cfg[si]) * h[1:]
                    h = torch.cat([mixed, mixed])
            if mix_after is None and cfg[si] != 1:
                both = model.logits(h, state) / tau
                logits = cfg[si] * both[:1] + (1 - cfg[si]) * both[1:]
            else:
                logits = model.logits(h[:1], state, rows=slice(0, 1)) / tau
            out.append(logits.reshape(1, -1, 2))
            codes = bits_to_codes(token_bits_to_vae(bits[si], SQUARE.grids[si], False))
            summed = summed + torch.nn.functional.interpolate(codes, size=(1, 16, 16), mode="trilinear")
            if si + 1 < SQUARE.num_scales:
                h_next, w_next = SQUARE.grids[si + 1]
                nxt = torch.nn.functional.interpolate(summed, size=(1, h_next, w_next), mode="trilinear")
                x = model.word_embed(nxt.squeeze(2).flatten(2).transpose(1, 2)).float().repeat(2, 1, 1)
    finally:
        model.free(state)
    return out


@pytest.mark.parametrize("layer", [-1, -2, -3])
def test_hidden_state_guidance_equals_a_hand_made_mix(tiny_transformer, prompt, layer):
    cfg = [3.0, 1.0, 2.5, 2.5, 4.0, 3.0, 3.0]  # a cfg-1 scale inside: no mix there
    guided = run(tiny_transformer, prompt, 5, settings=SamplerSettings(cfg=cfg, tau=0.7, cfg_insertion_layer=(layer,)))
    by_hand = _replay_by_hand(tiny_transformer, prompt, guided.bits, cfg, 0.7, mix_after=4 + layer)
    for si in range(SQUARE.num_scales):
        torch.testing.assert_close(guided.logits[si], by_hand[si], rtol=1e-5, atol=1e-5, msg=f"scale {si}")
    on_logits = run(tiny_transformer, prompt, 5, settings=SamplerSettings(cfg=cfg, tau=0.7),
                    teacher=TeacherForcing.first_scales(guided.bits))
    assert not torch.allclose(on_logits.logits[2], guided.logits[2], atol=1e-3)  # the layer matters


def test_logit_guidance_with_a_cfg_one_scale_equals_a_hand_made_mix(tiny_transformer, prompt):
    cfg = [3.0, 3.0, 3.0, 1.0, 5.0, 3.0, 3.0]
    guided = run(tiny_transformer, prompt, 8, settings=SamplerSettings(cfg=cfg, tau=0.5))
    by_hand = _replay_by_hand(tiny_transformer, prompt, guided.bits, cfg, 0.5, mix_after=None)
    for si in range(SQUARE.num_scales):
        torch.testing.assert_close(guided.logits[si], by_hand[si], rtol=1e-5, atol=1e-5, msg=f"scale {si}")
    # the cfg-1 scale of a guided run is the conditional pass itself
    cond = run(tiny_transformer, prompt, 8, settings=SamplerSettings(cfg=1.0, tau=0.5),
               teacher=TeacherForcing.first_scales(guided.bits))
    torch.testing.assert_close(guided.logits[3], cond.logits[3], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(guided.logits[4], cond.logits[4], atol=1e-3)


def test_seeds_wrap_at_two_to_the_64():
    """The seed widget reaches 2**64 - 1; image i of a batch uses (seed + i) mod 2**64."""
    def first_draw(g):
        return torch.rand(4, generator=g)
    wrapped = make_generators(2**64 - 1, 2)
    assert torch.equal(first_draw(wrapped[0]), first_draw(torch.Generator().manual_seed(2**64 - 1)))
    assert torch.equal(first_draw(wrapped[1]), first_draw(torch.Generator().manual_seed(0)))
    assert torch.equal(first_draw(make_generators(1000, 1)[0]), first_draw(torch.Generator().manual_seed(1000)))
    shared = make_generators(1000, 3, per_image=False)
    assert len(shared) == 1 and torch.equal(first_draw(shared[0]), first_draw(torch.Generator().manual_seed(1000)))


def test_every_bit_is_drawn_from_the_softmax_of_its_two_logits(tiny_transformer, prompt):
    """Replaying the draws by hand: scale by scale, one multinomial call over the (masked) two-way softmax."""
    for top_k, top_p in ((0, 0.0), (0, 0.9)):
        res = run(tiny_transformer, prompt, 17, settings=SamplerSettings(cfg=2.0, tau=0.8, top_k=top_k, top_p=top_p))
        g = torch.Generator().manual_seed(17)
        for si, logits in enumerate(res.logits):
            probs = logits.softmax(dim=-1)
            if top_p:  # drop the less likely value when its probability is <= 1 - top_p
                probs = torch.where(probs <= 1 - top_p, torch.zeros_like(probs), probs)
            drawn = torch.multinomial(probs.view(-1, 2), 1, replacement=True, generator=g).view(res.bits[si].shape)
            assert torch.equal(drawn.to(torch.uint8), res.bits[si]), (top_p, si)


def test_stop_after_is_at_least_one_scale_and_at_most_all(tiny_transformer, prompt):
    assert len(run(tiny_transformer, prompt, stop_after=0).bits) == 1
    assert len(run(tiny_transformer, prompt, stop_after=99).bits) == SQUARE.num_scales


def test_teacher_bits_of_any_integer_dtype_give_uint8_bits(tiny_transformer, prompt):
    source = run(tiny_transformer, prompt, 3)
    for dtype in (torch.int64, torch.bool, torch.float32):
        forced = run(tiny_transformer, prompt, 4,
                     teacher=TeacherForcing.first_scales([b.to(dtype) for b in source.bits[:3]]))
        assert all(b.dtype == torch.uint8 for b in forced.bits)
        assert all(torch.equal(a, b) for a, b in zip(forced.bits[:3], source.bits[:3]))
        assert torch.equal(forced.summed_codes,
                           run(tiny_transformer, prompt, 4, teacher=TeacherForcing.first_scales(source.bits[:3]))
                           .summed_codes)


def test_text_and_teacher_bits_from_another_device_are_moved(tiny_transformer, prompt):
    """Conditioning and image bits live on the CPU while a GPU samples: stand-ins that fail unless moved."""
    from comfy_fakes.model_patcher import Offloaded
    source = run(tiny_transformer, prompt, 3)
    plain = run(tiny_transformer, prompt, 5, teacher=TeacherForcing.first_scales(source.bits[:2]), negative=prompt)
    elsewhere = TextEmbedding(prompt.features_NC.as_subclass(Offloaded), prompt.lens)
    moved = run(tiny_transformer, elsewhere, 5,
                teacher=TeacherForcing.first_scales([b.as_subclass(Offloaded) for b in source.bits[:2]]),
                negative=elsewhere)
    assert all(type(b) is torch.Tensor and torch.equal(a, b) for a, b in zip(plain.bits, moved.bits))


def test_the_default_settings_are_the_2b_release_settings_with_no_filters(tiny_transformer, prompt):
    """sample() without settings: cfg 3 and tau 0.5 (Infinity-2B), guidance on the logits, top-k/top-p off."""
    default = run(tiny_transformer, prompt, 6)
    explicit = run(tiny_transformer, prompt, 6, settings=SamplerSettings(cfg=3.0, tau=0.5, top_k=0, top_p=0.0,
                                                                        cfg_insertion_layer=(0,)))
    assert all(torch.equal(a, b) for a, b in zip(default.bits, explicit.bits))
    plain = sample(tiny_transformer, prompt, SQUARE, generators=make_generators(6, 1))
    assert plain.logits is None and all(torch.equal(a, b) for a, b in zip(plain.bits, default.bits))  # no copies kept
    for other in (SamplerSettings(cfg=6.0), SamplerSettings(tau=1.0), SamplerSettings(top_k=1)):
        assert not all(torch.equal(a, b) for a, b in zip(run(tiny_transformer, prompt, 6, settings=other).bits,
                                                          default.bits)), other


def test_top_p_one_and_top_k_two_are_valid_and_change_nothing(tiny_transformer, prompt):
    base = run(tiny_transformer, prompt, 2)
    for settings in (SamplerSettings(top_p=1.0), SamplerSettings(top_k=2)):
        settings.validate(4, SQUARE.num_scales)
        assert all(torch.equal(a, b) for a, b in zip(run(tiny_transformer, prompt, 2, settings=settings).bits,
                                                      base.bits))
