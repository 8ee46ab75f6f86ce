"""The speed widgets of both sampler nodes reach the core: the node's latent equals `sample()` with the same
settings and pruning policy, its text says what ran, its memory request knows the mode (fake ComfyUI)."""
from __future__ import annotations

import pytest
import torch

from pack_harness import SCALES, first, needs_shared, sampler

pytestmark = needs_shared


def _core(env, models, pruning="off", ratio=0.5, unguided=0, seed=7, negative=None):
    speed = env.core("sampling.speed").SpeedSettings(pruning, ratio, unguided)
    sampler_mod = env.core("sampling.sampler")
    schedule = env.core("schedules").ScaleSchedule(1.0, "0.06M")
    settings, policy = speed.apply(sampler_mod.SamplerSettings(cfg=3.0, tau=0.5, top_p=0.97), schedule,
                                   models.model.config.depth)
    with torch.inference_mode():
        result = sampler_mod.sample(models.model.patcher.model, models.positive.embedding, schedule,
                                    generators=sampler_mod.make_generators(seed, 1), settings=settings,
                                    negative=negative, pruning=policy, device=models.model.patcher.load_device)
    return result, settings, policy, schedule


@pytest.mark.parametrize("node", ["InfinitySampler", "InfinitySamplerAdvanced"])
@pytest.mark.parametrize("pruning,unguided", [("fastvar", 0), ("prune", 2), ("off", 2)])
def test_node_equals_the_core_with_the_same_settings(env, models, node, pruning, unguided):
    out = sampler(env, models, node=node, pruning=pruning, unguided_last_scales=unguided)
    latent = first(out)
    core, settings, policy, schedule = _core(env, models, pruning, unguided=unguided)
    assert len(latent["infinity"]["bits"]) == len(core.bits) == (SCALES - 2 if pruning == "fastvar" else SCALES)
    assert torch.equal(latent["samples"], core.summed_codes)
    to_vae = env.core("model.quantizer").token_bits_to_vae
    assert all(torch.equal(a, to_vae(b, g, False)) for a, b, g in zip(latent["infinity"]["bits"], core.bits,
                                                                       schedule.grids))
    text = out.ui.as_dict()["text"][0]
    if pruning != "off":
        assert pruning in text and "tokens in layers" in text
    assert ("skipped" in text) == (pruning == "fastvar")
    assert ("unguided" in text) == (unguided > 0)
    updates = env.utils.UPDATES
    assert [u["value"] for u in updates] == list(range(1, len(core.bits) + 1))
    assert {u["total"] for u in updates} == {len(core.bits)}
    expected = env.core("sampling.speed").run_memory(models.model.config, schedule, 1, settings, torch.float32, policy)
    assert env.mm.LOAD_CALLS[0]["memory_required"] == expected


def test_the_ratio_widget_and_a_negative_prompt(env, models):
    out = first(sampler(env, models, node="InfinitySamplerAdvanced", pruning="prune", prune_ratio=0.3,
                        negative=models.negative))
    core = _core(env, models, "prune", ratio=0.3, negative=models.negative.embedding)[0]
    assert torch.equal(out["samples"], core.summed_codes)
    off = first(sampler(env, models, node="InfinitySamplerAdvanced", pruning="prune", prune_ratio=0.0,
                        negative=models.negative))
    exact = first(sampler(env, models, negative=models.negative))
    assert torch.equal(off["samples"], exact["samples"])  # ratio 0 prunes nothing: exact mode


def test_speed_widgets_refuse_what_cannot_run(env, models):
    with pytest.raises(Exception) as err:
        sampler(env, models, unguided_last_scales=SCALES + 1)
    assert "unguided_last_scales" in str(err.value) and "HINT" in str(err.value)
    with pytest.raises(Exception) as err:
        sampler(env, models, node="InfinitySamplerAdvanced", pruning="prune", prune_ratio=1.0)
    assert "prune_ratio" in str(err.value)  # the widget's max: ComfyUI refuses it before the node runs
