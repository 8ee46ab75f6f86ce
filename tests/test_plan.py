"""The run plan (infinity_core/sampling/plan.py): the numbers every part of a run reads from it."""
from infinity_core.model.pruning import build_policy
from infinity_core.sampling.plan import net_scales, plan_run
from infinity_core.sampling.sampler import SamplerSettings
from infinity_core.schedules import ScaleSchedule

SQUARE = ScaleSchedule(1.0, "0.06M")  # 7 scales: 1, 4, 16, 36, 64, 144, 256 tokens


def test_an_exact_run_runs_and_yields_every_scale_with_guidance_throughout():
    plan = plan_run(SQUARE, SamplerSettings())
    assert (plan.scales, plan.net_scales, plan.output_scales, plan.guided_scales) == (7, 7, 7, 7)
    assert not plan.truncates and list(plan.skipped_scales) == []
    assert plan.kv_tokens == 1 + 4 + 16 + 36 + 64 + 144  # the last scale run is never attended to later
    assert plan.cfg == (3.0,) * 7 and plan.tau == (0.5,) * 7


def test_fastvar_skips_the_last_scales_and_the_kv_cache_ends_before_them():
    policy = build_policy("fastvar", SQUARE, 4)
    plan = plan_run(SQUARE, SamplerSettings(), pruning=policy)
    assert plan.net_scales == net_scales(policy, 7) == 5 and list(plan.skipped_scales) == [5, 6]
    assert plan.output_scales == 5 and plan.kv_tokens == 1 + 4 + 16 + 36


def test_truncation_from_the_first_scale_on_and_a_stop_after():
    plan = plan_run(SQUARE, SamplerSettings(cfg=[3.0] + [1.0] * 6))
    assert plan.guided_scales == 1 and plan.truncates
    assert not plan_run(SQUARE, SamplerSettings(cfg=[1.0] * 7)).truncates  # no guidance at all: nothing to drop
    short = plan_run(SQUARE, SamplerSettings(), stop_after=3)
    assert (short.scales, short.net_scales, short.output_scales, short.kv_tokens) == (3, 3, 3, 1 + 4)
    assert plan_run(SQUARE, SamplerSettings(), stop_after=0).scales == 1  # at least one scale, as sample() runs
