"""The memory estimates that decide refusals and ComfyUI's offloading hold against measured peaks."""
import pytest
import torch

from infinity_core.model.config import InfinityConfig, VAEConfig
from infinity_core.sampling.memory import decode_bytes, encode_bytes, sampling_bytes
from infinity_core.files.random_models import random_tokenizer, random_transformer
from infinity_core.model.rope import rope_table
from infinity_core.sampling.sampler import make_generators, sample
from infinity_core.schedules import ScaleSchedule
from live_bytes import LiveBytes

WIDE = InfinityConfig(depth=4, embed_dim=256, num_heads=4, bits_per_token=32, text_channels=256)


def measured(fn) -> int:
    """Peak of the tensors `fn` allocates, the cached RoPE table included whichever tests ran before
    (the estimate counts it: a generation builds it on first use)."""
    rope_table.cache_clear()
    meter = LiveBytes()
    with meter, torch.no_grad():
        fn()
    return meter.peak


@pytest.mark.parametrize("config", ["tiny", "wide"])
@pytest.mark.parametrize("budget,batch", [("0.06M", 1), ("0.25M", 1), ("0.06M", 2)])
def test_sampling_estimate_bounds_the_peak(config, budget, batch, tiny_config, prompt):
    cfg = tiny_config if config == "tiny" else WIDE
    model = random_transformer(cfg, seed=0)
    text = prompt if cfg.text_channels == 128 else prompt.null_like(torch.randn(512, 256))
    schedule = ScaleSchedule(1.0, budget)
    peak = measured(lambda: sample(model, text, schedule, generators=make_generators(0, batch), batch=batch))
    estimate = sampling_bytes(cfg, schedule, batch, True, torch.float32, text_tokens=text.lens[0])
    assert peak <= estimate <= 1.5 * peak, (peak, estimate)


def test_tokenizer_estimates_bound_the_peaks():
    cfg = VAEConfig(codebook_dim=16, base_ch=32)  # the released layout (1,2,4,4,4) at a quarter width
    vae = random_tokenizer(cfg)
    hw = (256, 256)
    decode_peak = measured(lambda: vae.decode(torch.randn(1, 16, 16, 16)))
    encode_peak = measured(lambda: vae.encode_features(torch.randn(1, 3, *hw)))
    assert decode_peak <= decode_bytes(cfg, hw, 1, torch.float32) <= 2 * decode_peak
    assert encode_peak <= encode_bytes(cfg, hw, 1, torch.float32) <= 2 * encode_peak


def test_sampling_estimate_term_by_term(tiny_config):
    """The estimate for the tiny model (depth 4, C 64, MLP 256, 16 bits, head 32) at 0.06M, guided batch 1
    (2 rows), fp32 (4 bytes), 512 text tokens, by hand: 521 tokens, 256 in the last scale, 265 stored."""
    stored_kv = 2 * 4 * 265 * 64 * 2 * 4
    final_scale_kv = 2 * 2 * 521 * 64 * 2 * 4     # one layer's keys and values of every token
    text_kv = 2 * 4 * 512 * 64 * 2 * 4
    activations = 2 * 256 * (4 * 64 * 4 + (3 * 64 + 256) * 4)
    logits = 2 * 256 * 16 * 2 * 4 * 3
    # RoPE of the longest 1M schedule: template 2.0 (and 0.5), 11269 tokens in the reference's
    # dynamic_resolution.py table, head_dim / 2 complex64 rotations each
    rope = 11269 * 16 * 8
    expected = stored_kv + final_scale_kv + text_kv + activations + logits + rope
    assert sampling_bytes(tiny_config, ScaleSchedule(1.0, "0.06M"), 1, True, torch.float32) == expected == 7_330_432
    unguided = sampling_bytes(tiny_config, ScaleSchedule(1.0, "0.06M"), 1, False, torch.float32)
    halved = expected - (stored_kv + final_scale_kv + text_kv + activations + logits) // 2
    # unguided, building the RoPE table (twice its size, once the caches exist) is the larger moment here
    setup = stored_kv // 2 + text_kv // 2 + 2 * rope
    assert setup > halved and unguided == setup == 4_476_160


def test_tokenizer_estimates_by_hand_on_a_non_square_image():
    """Four maps of the widest full-resolution level (base_ch x max(mult[0], mult[1])) plus RGB, per pixel."""
    cfg = VAEConfig(codebook_dim=16, base_ch=32, encoder_ch_mult=(1, 2, 4), decoder_ch_mult=(2, 1, 4))
    h, w = 128, 320
    assert decode_bytes(cfg, (h, w), 3, torch.float32) == 3 * h * w * (4 * 64 + 3) * 4
    assert encode_bytes(cfg, (h, w), 1, torch.bfloat16) == h * w * (4 * 64 + 3) * 2
    assert encode_bytes(VAEConfig(codebook_dim=16, base_ch=32, encoder_ch_mult=(1, 1, 4)), (h, w), 1,
                        torch.float32) == h * w * (4 * 32 + 3) * 4


def test_the_estimate_counts_what_a_score_matrix_backend_allocates(tiny_config, prompt, monkeypatch):
    """MPS (and bf16 on pre-Ampere NVIDIA) build the whole score matrix: emulated here on CPU. Unchunked
    it lies outside the old estimate; chunked by the device's plan, the plan's estimate bounds the peak."""
    from test_device_paths import _materialising_sdpa
    from infinity_core.model import attention as attention_module
    from infinity_core.devices import AttentionPlan
    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", _materialising_sdpa([]))
    model, schedule = random_transformer(WIDE, seed=0), ScaleSchedule(1.0, "0.25M")
    text = prompt.null_like(torch.randn(512, 256))
    run = lambda: sample(model, text, schedule, generators=make_generators(0, 1))  # noqa: E731
    unchunked = AttentionPlan(chunk=True, score_bytes=8, budget=2**40)
    monkeypatch.setattr(attention_module, "attention_plan_for", lambda device, dtype: unchunked)
    fused_estimate = sampling_bytes(WIDE, schedule, 1, True, torch.float32, text_tokens=text.lens[0])
    assert measured(run) > 1.5 * fused_estimate
    plan = AttentionPlan(chunk=True, score_bytes=8, budget=2 * 2**20)
    monkeypatch.setattr(attention_module, "attention_plan_for", lambda device, dtype: plan)
    peak = measured(run)
    estimate = sampling_bytes(WIDE, schedule, 1, True, torch.float32, text_tokens=text.lens[0], attention=plan)
    assert peak <= estimate <= 1.5 * peak, (peak, estimate)
