"""FastVAR-style cached token pruning: the plans, the token choice and restore, and runs on tiny models
(every template, both model layouts); FastVAR's own numbers are in test_fastvar_parity.py."""
import pytest
import torch
import torch.nn.functional as F

from infinity_core.model.config import INFINITY_PRESETS, InfinityConfig
from infinity_core.model.conditioning import TextEmbedding
from infinity_core.errors import SamplingError
from infinity_core.sampling.masks import TeacherForcing
from infinity_core.sampling.memory import sampling_bytes
from infinity_core.model.pruning import PruningPolicy, ScalePlan, TokenSubset, build_policy, farthest_tokens
from infinity_core.model.quantizer import summed_codes, token_bits_to_vae
from infinity_core.files.random_models import random_transformer
from infinity_core.model.rope import rope_table
from infinity_core.sampling.sampler import SamplerSettings, make_generators, sample
from infinity_core.schedules import PIXEL_BUDGETS, TEMPLATES, ScaleSchedule
from live_bytes import LiveBytes

SQUARE = ScaleSchedule(1.0, "0.06M")
PATCHIFY_TINY = InfinityConfig(depth=4, embed_dim=64, num_heads=2, bits_per_token=64, text_channels=128)


def _run(model, text, schedule=SQUARE, pruning=None, seed=3, batch=1, **kw):
    return sample(model, text, schedule, generators=make_generators(seed, batch), batch=batch, pruning=pruning,
                  settings=kw.pop("settings", SamplerSettings(top_p=0.97)), record_logits=True, **kw)


# ---- plans ------------------------------------------------------------------------------------------
def test_fastvar_preset_is_fastvars_setting_for_2b_at_1m_square():
    policy = build_policy("fastvar", ScaleSchedule(1.0, "1M"), 32)
    assert policy.plans == ((9, ScalePlan(0.4, 3, 28, 8)), (10, ScalePlan(0.5, 3, 28, 8)))
    assert policy.skip_from == 11 and policy.scales_run(13) == 11
    assert [ScaleSchedule(1.0, "1M").grids[si] for si in (8, 9, 10, 11, 12)] == [
        (24, 24), (32, 32), (40, 40), (48, 48), (64, 64)]
    assert policy.plan(9).keep(32 * 32) == 1024 - 409  # FastVAR drops int(1024 * 0.4) tokens


@pytest.mark.parametrize("template", list(TEMPLATES))
@pytest.mark.parametrize("budget", list(PIXEL_BUDGETS))
def test_every_template_and_budget_gets_a_plan(template, budget):
    schedule = ScaleSchedule(template, budget)
    n = schedule.num_scales
    for depth, layers in ((32, (3, 28)), (40, (4, 35))):  # 2B, 8B
        fast = build_policy("fastvar", schedule, depth)
        fast.validate(schedule, depth)
        assert [si for si, _ in fast.plans] == [n - 4, n - 3] and fast.skip_from == n - 2
        assert {(p.first_layer, p.end_layer, p.cache_scale) for _, p in fast.plans} == {(*layers, n - 5)}
        prune = build_policy("prune", schedule, depth, ratio=0.6)
        assert [(si, p.ratio) for si, p in prune.plans] == [(n - 4, 0.6 * 0.8), (n - 3, 0.6), (n - 2, 0.6),
                                                             (n - 1, 0.6)]
        assert prune.skip_from is None


def test_off_ratio_zero_and_bad_input():
    assert build_policy("off", SQUARE, 4) is None
    assert build_policy("prune", SQUARE, 4, ratio=0.0) is None
    skip_only = build_policy("fastvar", SQUARE, 4, ratio=0.0)
    assert skip_only.plans == () and skip_only.skip_from == 5
    with pytest.raises(SamplingError, match="HINT"):
        build_policy("turbo", SQUARE, 4)
    with pytest.raises(SamplingError, match="HINT"):
        build_policy("prune", SQUARE, 4, ratio=1.0)
    with pytest.raises(SamplingError, match="layers"):
        PruningPolicy("x", ((4, ScalePlan(0.5, 2, 9, 3)),)).validate(SQUARE, 4)
    with pytest.raises(SamplingError, match="cache"):
        PruningPolicy("x", ((4, ScalePlan(0.5, 0, 4, 5)),)).validate(SQUARE, 4)


# ---- token choice and restore ----------------------------------------------------------------------
def test_kept_tokens_are_the_farthest_and_the_rest_come_from_the_cache_scale():
    g = torch.Generator().manual_seed(0)
    B, C, grid, cache_hw = 2, 8, (4, 4), (2, 2)
    x = torch.randn(B, 16, C, generator=g)
    cached = torch.randn(B, 4, C, generator=g)
    plan = ScalePlan(0.5, 0, 1, 0)
    store = {(0, 1): cached}
    seen = {}

    def sublayer(x_BKC, rot):
        seen["x"] = x_BKC
        return x_BKC * 10 + 1

    out = TokenSubset(0, grid, store, plan, cache_hw).run(1, x, None, sublayer)
    dist = (x - x.mean(1, keepdim=True)).pow(2).sum(-1)
    kept = dist.topk(8, dim=1).indices
    assert torch.equal(farthest_tokens(x, grid, 8)[..., 0], kept)
    assert seen["x"].shape == (B, 8, C)
    up = F.interpolate(cached.view(B, 2, 2, C).permute(0, 3, 1, 2), size=grid, mode="area")
    up = up.permute(0, 2, 3, 1).reshape(B, 16, C)
    for b in range(B):
        mask = torch.zeros(16, dtype=torch.bool)
        mask[kept[b]] = True
        assert torch.equal(out[b, mask], x[b, mask] * 10 + 1)  # computed
        assert torch.equal(out[b, ~mask], up[b, ~mask])        # restored from the cache scale
    recorder = TokenSubset(0, cache_hw, store)
    result = recorder.run(2, cached, None, lambda t, rot: t + 1)
    assert store[(0, 2)] is result  # at the cache scale the outputs are remembered


def test_rotations_follow_the_kept_tokens(tiny_transformer):
    """Each kept token's keys and queries are rotated by its own position (per row)."""
    rot = rope_table(32, 1.0)[:16]
    store = {(0, 0): torch.zeros(1, 4, 64)}
    x = torch.randn(1, 16, 64, generator=torch.Generator().manual_seed(1))
    got = {}
    TokenSubset(0, (4, 4), store, ScalePlan(0.5, 0, 1, 0), (2, 2)).run(
        0, x, rot, lambda x_, rot_: got.setdefault("rot", rot_) is None or x_)
    idx = farthest_tokens(x, (4, 4), 8)[0, :, 0]
    assert got["rot"].shape == (1, 1, 8, 16) and torch.equal(got["rot"][0, 0], rot[idx])


# ---- runs -------------------------------------------------------------------------------------------
def test_ratio_zero_is_exact_and_unpruned_scales_are_untouched(tiny_transformer, prompt):
    exact = _run(tiny_transformer, prompt)
    none = _run(tiny_transformer, prompt, pruning=build_policy("prune", SQUARE, 4, ratio=0.0))
    assert all(torch.equal(a, b) for a, b in zip(exact.bits, none.bits))
    pruned = _run(tiny_transformer, prompt, pruning=build_policy("prune", SQUARE, 4))
    first = 3  # 0.06M: scales 3..6 pruned; the cache scale 2 only records
    assert all(torch.equal(a, b) for a, b in zip(exact.bits[:first], pruned.bits[:first]))
    assert all(torch.equal(a, b) for a, b in zip(exact.logits[:first], pruned.logits[:first]))
    assert not torch.equal(exact.logits[first], pruned.logits[first])


def test_pruned_runs_are_deterministic(tiny_transformer, prompt):
    policy = build_policy("fastvar", SQUARE, 4)
    a, b = _run(tiny_transformer, prompt, pruning=policy), _run(tiny_transformer, prompt, pruning=policy)
    assert len(a.bits) == 5 and a.skipped == (5, 6)
    assert all(torch.equal(x, y) for x, y in zip(a.bits, b.bits))
    grids = SQUARE.grids
    assert torch.equal(a.summed_codes, summed_codes([token_bits_to_vae(x, g, False) for x, g in zip(a.bits, grids)],
                                                    grids[-1]).squeeze(2))


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_every_template_runs_with_pruning(tiny_transformer, prompt, template):
    schedule = ScaleSchedule(template, "0.06M")
    for preset in ("prune", "fastvar"):
        res = _run(tiny_transformer, prompt, schedule, pruning=build_policy(preset, schedule, 4), batch=2)
        assert [tuple(b.shape) for b in res.bits] == [(2, h * w, 16) for h, w in
                                                      schedule.grids[:len(res.bits)]]
        assert len(res.bits) == (5 if preset == "fastvar" else 7)
        assert res.summed_codes.shape == (2, 16, *schedule.grids[-1])


@pytest.mark.parametrize("template", [1.0, 0.333, 2.5])
def test_patchify_layout_runs_with_pruning(prompt, template):
    model = random_transformer(PATCHIFY_TINY, seed=4)
    schedule = ScaleSchedule(template, "0.06M")
    exact = _run(model, prompt, schedule, patchify=True)
    for preset in ("prune", "fastvar"):
        res = _run(model, prompt, schedule, pruning=build_policy(preset, schedule, 4), patchify=True)
        assert res.summed_codes.shape == (1, 16, *schedule.vae_grids(True)[-1])
        assert all(torch.equal(a, b) for a, b in zip(exact.bits[:3], res.bits[:3]))
        assert not torch.equal(exact.summed_codes, res.summed_codes)


def test_a_skipped_scale_keeps_the_teachers_tokens(tiny_transformer, prompt):
    source = _run(tiny_transformer, prompt, seed=8)
    forced = _run(tiny_transformer, prompt, seed=9, teacher=TeacherForcing.first_scales(source.bits),
                  pruning=build_policy("fastvar", SQUARE, 4))
    assert forced.skipped == () and all(torch.equal(a, b) for a, b in zip(forced.bits, source.bits))
    assert torch.equal(forced.summed_codes, source.summed_codes)


def test_pruning_with_truncated_guidance_equals_the_full_computation(tiny_transformer, prompt):
    """The cache scale's outputs lose their unconditional rows with everything else."""
    policy = build_policy("prune", SQUARE, 4)
    cfg = [3.0, 3.0, 3.0, 1.0, 1.0, 1.0, 1.0]  # truncation right after the cache scale (2)
    short = _run(tiny_transformer, prompt, pruning=policy, batch=2, settings=SamplerSettings(cfg=cfg))
    full = _run(tiny_transformer, prompt, pruning=policy, batch=2,
                settings=SamplerSettings(cfg=cfg, truncate_guidance=False))
    assert all(torch.equal(a, b) for a, b in zip(short.bits, full.bits))


def test_policy_for_another_model_is_refused(tiny_transformer, prompt):
    with pytest.raises(SamplingError, match="HINT"):
        _run(tiny_transformer, prompt, pruning=build_policy("prune", SQUARE, 32))


@pytest.mark.parametrize("budget", ["0.06M", "0.25M"])
def test_memory_estimate_knows_pruning(budget):
    cfg = InfinityConfig(depth=4, embed_dim=256, num_heads=4, bits_per_token=32, text_channels=256)
    model = random_transformer(cfg, seed=0)
    text = TextEmbedding.from_single(torch.randn(16, 256, generator=torch.Generator().manual_seed(1)))
    schedule = ScaleSchedule(1.0, budget)
    for preset in ("prune", "fastvar"):
        policy = build_policy(preset, schedule, 4)
        rope_table.cache_clear()  # the run builds the table, as the estimate assumes
        meter = LiveBytes()
        with meter, torch.no_grad():
            sample(model, text, schedule, generators=make_generators(0, 1), pruning=policy)
        estimate = sampling_bytes(cfg, schedule, 1, True, torch.float32, text_tokens=16, pruning=policy)
        assert meter.peak <= estimate <= 1.5 * meter.peak, (preset, meter.peak, estimate)
    full = sampling_bytes(cfg, schedule, 1, True, torch.float32, text_tokens=16)
    assert estimate < 0.6 * full  # fastvar never runs the two largest scales


def test_layer_span_of_the_released_models():
    from infinity_core.model.pruning import fastvar_layers
    assert fastvar_layers(INFINITY_PRESETS["infinity_2b"].depth) == (3, 28)
    assert fastvar_layers(INFINITY_PRESETS["infinity_8b"].depth) == (4, 35)


def test_pipeline_and_cli_take_the_speed_settings(tiny_transformer, tiny_tokenizer, prompt, monkeypatch):
    from infinity_core import cli, pipeline
    from infinity_core.sampling.speed import SpeedSettings, run_memory
    needed = []
    monkeypatch.setattr(pipeline, "require_memory", lambda need, *a, **k: needed.append(need))
    speed = SpeedSettings("fastvar", 0.4, 1)
    request = pipeline.GenerationRequest(prompt, width=256, height=256, budget="0.06M", seed=2, speed=speed)
    _, result = pipeline.generate(tiny_transformer, tiny_tokenizer, None, request)
    settings, policy = speed.apply(request.settings, SQUARE, 4)
    core = sample(tiny_transformer, prompt, SQUARE, generators=make_generators(2, 1), settings=settings,
                  pruning=policy)
    assert result.skipped == (5, 6) and torch.equal(result.summed_codes, core.summed_codes)
    assert needed == [run_memory(tiny_transformer.config, SQUARE, 1, settings, torch.float32, policy)]
    args = cli.build_parser().parse_args(["generate", "--prompt", "x", "--pruning", "prune", "--prune-ratio", "0.3",
                                          "--unguided-last-scales", "2"])
    assert (args.pruning, args.prune_ratio, args.unguided_last_scales) == ("prune", 0.3, 2)


def test_cli_generate_with_pruning(tmp_path, tiny_transformer, tiny_tokenizer, prompt, caplog, monkeypatch):
    from infinity_core import cli, pipeline
    from infinity_core.model import text_encoder
    from infinity_core.files import loading

    class Encoder:
        def encode(self, prompts):
            return prompt

        def to(self, device):
            return self

    monkeypatch.setattr(loading, "load_transformer", lambda *a, **k: tiny_transformer)
    monkeypatch.setattr(loading, "load_tokenizer", lambda *a, **k: tiny_tokenizer)
    monkeypatch.setattr(text_encoder.T5TextEncoder, "from_folder", classmethod(lambda cls, *a, **k: Encoder()))
    seen = []
    real = pipeline.generate
    monkeypatch.setattr(pipeline, "generate", lambda *a, **k: seen.append(a[3]) or real(*a, **k))
    for name in ("t.pth", "v.pth"):
        (tmp_path / name).touch()
    (tmp_path / "t5").mkdir()
    caplog.set_level("INFO")
    assert cli.main(["generate", "--prompt", "a fox", "--transformer", str(tmp_path / "t.pth"), "--vae",
                     str(tmp_path / "v.pth"), "--text-encoder", str(tmp_path / "t5"), "--width", "256", "--height",
                     "256", "--budget", "0.06M", "--pruning", "fastvar", "--prune-ratio", "0.4",
                     "--unguided-last-scales", "2", "--device", "cpu", "--out", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "x.png").is_file()
    assert seen[0].speed == pipeline.SpeedSettings("fastvar", 0.4, 2)
    assert "fastvar (ratio 0.4)" in caplog.text and "skipped" in caplog.text


def test_fastvar_with_ratio_zero_is_the_skip_alone(tiny_transformer, prompt):
    """No scale pruned, the last two skipped: the first five scales are the exact run's, bit for bit."""
    policy = build_policy("fastvar", SQUARE, 4, ratio=0.0)
    assert policy.plans == () and policy.skip_from == 5
    exact, skipped = _run(tiny_transformer, prompt), _run(tiny_transformer, prompt, pruning=policy)
    assert skipped.skipped == (5, 6) and len(skipped.bits) == 5
    assert all(torch.equal(a, b) for a, b in zip(exact.bits, skipped.bits))


def test_a_plan_without_layers_is_refused(tiny_transformer, prompt):
    empty = PruningPolicy("hand-made", ((4, ScalePlan(0.5, 2, 2, 2)),))
    with pytest.raises(SamplingError, match="layers"):
        _run(tiny_transformer, prompt, pruning=empty)


def test_progress_counts_the_scales_that_yield_bits(tiny_transformer, prompt):
    seen = []
    _run(tiny_transformer, prompt, pruning=build_policy("fastvar", SQUARE, 4), callback=seen.append)
    assert [(p.index, p.total) for p in seen] == [(si, 5) for si in range(5)]
