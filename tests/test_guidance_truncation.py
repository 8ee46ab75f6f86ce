"""Guidance truncation: where cfg is 1 to the end, the unconditional half stops (rows, KV cache, conditions)
and the bits stay those of the full computation the reference does (tiny random models)."""
from dataclasses import replace

import pytest
import torch

from infinity_core.model.conditioning import TextEmbedding
from infinity_core.model.config import InfinityConfig
from infinity_core.errors import SamplingError
from infinity_core.sampling.memory import sampling_bytes
from infinity_core.files.random_models import random_transformer
from infinity_core.model.rope import rope_table
from infinity_core.sampling.sampler import SamplerSettings, make_generators, sample
from infinity_core.schedules import ScaleSchedule
from infinity_core.sampling.speed import SpeedSettings, unguided_last
from live_bytes import LiveBytes

TAIL = [3.0] * 5 + [1.0, 1.0]  # 0.06M: 7 scales, the last two unguided


def _rows_per_scale(model):
    """Rows block 0 sees at each scale (a forward hook), and a remover."""
    seen = []
    handle = model.blocks[0].register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    return seen, handle.remove


def _run(model, text, schedule, settings, batch=2, negative=None, seed=5, **kw):
    return sample(model, text, schedule, generators=make_generators(seed, batch), settings=settings, batch=batch,
                  negative=negative, record_logits=True, **kw)


@pytest.fixture
def negative():
    return TextEmbedding.from_single(torch.randn(4, 128, generator=torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("template", [1.0, 0.5, 1.333, 3.0])
def test_truncated_bits_equal_the_full_cfg_computation(tiny_transformer, prompt, negative, template):
    schedule = ScaleSchedule(template, "0.06M")
    settings = SamplerSettings(cfg=TAIL, tau=0.5, top_p=0.97)
    rows, remove = _rows_per_scale(tiny_transformer)
    try:
        short = _run(tiny_transformer, prompt, schedule, settings, negative=negative)
        assert rows == [4] * 5 + [2] * 2  # B = 2: both halves, then the conditional rows only
        rows.clear()
        full = _run(tiny_transformer, prompt, schedule, SamplerSettings(cfg=TAIL, tau=0.5, top_p=0.97,
                                                                         truncate_guidance=False), negative=negative)
        assert rows == [4] * 7
    finally:
        remove()
    assert all(torch.equal(a, b) for a, b in zip(short.bits, full.bits))
    assert all(torch.allclose(a, b, atol=1e-5, rtol=0) for a, b in zip(short.logits, full.logits))
    assert torch.equal(short.summed_codes, full.summed_codes)


def test_guidance_on_the_first_scale_only_truncates_after_it(tiny_transformer, prompt, negative):
    """The shortest truncation: the unconditional half runs the first scale only (the plan's guided scales = 1),
    and the bits are still those of the full computation."""
    cfg = [3.0] + [1.0] * 6
    schedule = ScaleSchedule(1.0, "0.06M")
    rows, remove = _rows_per_scale(tiny_transformer)
    try:
        short = _run(tiny_transformer, prompt, schedule, SamplerSettings(cfg=cfg), negative=negative)
    finally:
        remove()
    full = _run(tiny_transformer, prompt, schedule, SamplerSettings(cfg=cfg, truncate_guidance=False),
                negative=negative)
    assert rows == [4] + [2] * 6
    assert all(torch.equal(a, b) for a, b in zip(short.bits, full.bits))
    assert torch.equal(short.summed_codes, full.summed_codes)


def test_a_cfg_one_scale_in_the_middle_keeps_both_halves(tiny_transformer, prompt):
    rows, remove = _rows_per_scale(tiny_transformer)
    try:
        _run(tiny_transformer, prompt, ScaleSchedule(1.0, "0.06M"), SamplerSettings(cfg=[3, 3, 1, 3, 3, 1, 1]))
    finally:
        remove()
    assert rows == [4] * 5 + [2] * 2


def test_unguided_from_the_first_scale_never_builds_the_unconditional_half(tiny_transformer, prompt):
    rows, remove = _rows_per_scale(tiny_transformer)
    try:
        _run(tiny_transformer, prompt, ScaleSchedule(1.0, "0.06M"), SamplerSettings(cfg=[1.0] * 7), batch=1)
    finally:
        remove()
    assert rows == [1] * 7


def test_dropped_rows_are_released_not_viewed(tiny_transformer, prompt):
    schedule, B = ScaleSchedule(1.0, "0.06M"), 2
    model = tiny_transformer
    text = TextEmbedding.cat([prompt.expand_to(B), model.null_text(prompt.expand_to(B))])
    state = model.condition(text, schedule, "cpu", torch.float32, kv_scales=3)
    try:
        x = model.start_tokens(state)
        model.forward_scale(x, 0, state)
        old = [c.k for c in state.caches]
        capacity = sum(schedule.tokens_per_scale[:-1])
        model.keep_rows(state, B, capacity)
        H, c = model.config.num_heads, model.config.head_dim
        for cache, before in zip(state.caches, old):
            assert cache.k.shape == (B, H, capacity, c) and cache.length == 1
            assert cache.k.untyped_storage().nbytes() == B * H * capacity * c * 4  # its own, smaller storage
            assert torch.equal(cache.k[:, :, :1], before[:B, :, :1])
        for cond in state.blocks:
            assert cond.text_kv.shape[0] == B
            assert cond.text_kv.untyped_storage().nbytes() == cond.text_kv.numel() * 4
            assert cond.gamma1.untyped_storage().nbytes() == cond.gamma1.numel() * 4
        assert state.rows == B and state.head_shift.shape[0] == B
        assert state.head_scale1p.untyped_storage().nbytes() == state.head_scale1p.numel() * 4
    finally:
        model.free(state)


def test_unguided_last_scales_setting():
    settings = SamplerSettings(cfg=3.0)
    assert unguided_last(settings, 2, 7, 7).per_scale(7)[0] == [3.0] * 5 + [1.0, 1.0]
    assert unguided_last(settings, 2, 7, 5).per_scale(7)[0] == [3.0] * 3 + [1.0, 1.0, 3.0, 3.0]
    assert unguided_last(settings, 0, 7, 7) is settings
    assert unguided_last(settings, 2, 7, 7).guided_scales(7) == 5
    with pytest.raises(SamplingError, match="HINT"):
        unguided_last(settings, 8, 7, 7)
    # counted among the scales that run: with FastVAR's skip, the last two of the five
    fast, policy = SpeedSettings("fastvar", unguided_last_scales=2).apply(settings, ScaleSchedule(1.0, "0.06M"), 4)
    assert fast.per_scale(7)[0] == [3.0, 3.0, 3.0, 1.0, 1.0, 3.0, 3.0] and policy.skip_from == 5


def test_memory_estimate_knows_truncation():
    cfg = InfinityConfig(depth=4, embed_dim=256, num_heads=4, bits_per_token=32, text_channels=256)
    model = random_transformer(cfg, seed=0)
    text = TextEmbedding.from_single(torch.randn(16, 256, generator=torch.Generator().manual_seed(1)))
    schedule = ScaleSchedule(1.0, "0.25M")
    settings = SamplerSettings(cfg=[3.0] * 8 + [1.0, 1.0])

    def peak(settings):
        rope_table.cache_clear()  # the run builds the table, as the estimate assumes
        meter = LiveBytes()
        with meter, torch.no_grad():
            sample(model, text, schedule, generators=make_generators(0, 1), settings=settings)
        return meter.peak

    measured, measured_full = peak(settings), peak(replace(settings, truncate_guidance=False))
    estimate = sampling_bytes(cfg, schedule, 1, True, torch.float32, text_tokens=16,
                              guided_scales=settings.guided_scales(10))
    full = sampling_bytes(cfg, schedule, 1, True, torch.float32, text_tokens=16)
    assert measured <= estimate <= 1.5 * measured, (measured, estimate)
    assert measured_full <= full <= 1.5 * measured_full, (measured_full, full)
    assert measured < 0.7 * measured_full  # the memory of the dropped half is really gone
