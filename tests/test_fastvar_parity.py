"""Parity of the "fastvar" pruning preset with FastVAR's own Infinity code on its golden fixtures.

Runs every generation case in `$FASTVAR_REF_FIXTURES` (default: shared/fixtures/fastvar_ref; format in
its README: the `gen_*` layout of infinity_ref, with only the scales FastVAR ran). Our preset, with the
fixture's literal layer range (FastVAR's `range(3, 28)` on a 4-layer model is layer 3 alone; our depth
scaling would prune all four), must describe the same plan as the case JSON and reproduce it: free-running
bits of the fp32_cross_attn variant identical at every scale that ran, its logits replayed with the
reference bits within 1e-4 of max|logits|, the skipped scales absent, and the final summed codes to 1e-5.
(The bf16-round-trip variant is not compared: its rounding changes which tokens the pruned scales keep.)
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import reference_cases as rc
from infinity_core.sampling.masks import TeacherForcing
from infinity_core.model.pruning import build_policy
from infinity_core.sampling.sampler import sample
from shared_paths import SHARED

FOLDER = Path(os.environ.get("FASTVAR_REF_FIXTURES") or SHARED / "fixtures" / "fastvar_ref")
TIGHT = 1e-4  # logits, relative to max|ref|
pytestmark = pytest.mark.skipif(not FOLDER.is_dir(), reason=f"FastVAR fixtures not found at {FOLDER}")
LITERAL_LAYERS = (3, 28)  # FastVAR: layer_idx in range(3, 28)


def _cases():
    paths = [p for p in sorted(FOLDER.glob("*.json")) if "kind" in json.loads(p.read_text())] if FOLDER.is_dir() else []
    return [pytest.param(p, id=p.stem) for p in paths] or [pytest.param(None, id="no-cases")]


def _model_path(case: rc.Case) -> Path:
    entry = case.meta["model"]
    ref = entry.get("safetensors") or entry.get("pth")
    return case.resolve(ref.get("path") if isinstance(ref, dict) else ref)


def _policy(case: rc.Case, depth: int):
    policy = build_policy("fastvar", case.schedule, depth, layers=LITERAL_LAYERS)
    spec, grids = case.meta["fastvar"], case.schedule.grids
    widths = {str(grids[si][1]): p.ratio for si, p in policy.plans}
    assert widths == {k: float(v) for k, v in spec["pruned_widths_and_ratios"].items()}, (widths, spec)
    assert {tuple(grids[p.cache_scale]) for _, p in policy.plans} == {tuple(spec["cached_scale_hw"])}
    assert all((p.first_layer, p.end_layer) == (3, depth) for _, p in policy.plans)
    run = [si for si in range(case.schedule.num_scales) if not policy.skips(si)]
    assert run == spec["scales_run"], (run, spec["scales_run"])
    return policy


@pytest.mark.parametrize("path", _cases())
def test_fastvar_case(path):
    assert path is not None, f"no case JSON in {FOLDER}"
    case = rc.load_case(path)
    check = rc.Checker(case.name)
    model = rc.transformer(str(_model_path(case)))
    policy = _policy(case, len(model.blocks))
    settings, seed, schedule = case.settings(), case.g_seed, case.schedule
    text, negative = case.text(), case.text(negative=True)

    def run(teacher=()):
        teacher = TeacherForcing.first_scales(teacher)
        return sample(model, text, schedule, generators=[torch.Generator().manual_seed(seed)], settings=settings,
                      negative=negative, batch=case.batch, teacher=teacher, record_logits=True, pruning=policy)

    variants, ran = case.variants(), case.meta["fastvar"]["scales_run"]
    with torch.no_grad():
        fp32 = variants[rc.FP32]
        assert sorted(fp32["bits"]) == ran, f"the fixture's scales {sorted(fp32['bits'])} != {ran}"
        replay = run(teacher=[fp32["bits"][si] for si in ran])
        check.true(replay.skipped == tuple(si for si in range(schedule.num_scales) if si not in ran),
                   f"skipped scales {replay.skipped}")
        for k, si in enumerate(ran):
            check.close(f"{rc.FP32} scale{si:02d}.logits (replay with FastVAR bits)", replay.logits[k],
                        fp32["logits"][si], rel=TIGHT)
        free = run()
        check.true(len(free.bits) == len(ran), f"free-running run drew {len(free.bits)} scales, FastVAR {len(ran)}")
        for k, si in enumerate(ran):
            wrong = check.equal(f"{rc.FP32} scale{si:02d}.bits (free-running)", free.bits[k], fp32["bits"][si])
            if wrong is None or wrong.any():
                break
        else:
            final = case.variant_tensor(rc.FP32, "final_summed_codes")
            check.close(f"{rc.FP32} final_summed_codes (free-running)", free.summed_codes, final, atol=1e-5)
    check.finish()
