"""Parity with the reference implementation (FoundationVision/Infinity) on its golden fixtures.

Runs every case in `$INFINITY_REF_FIXTURES` (default: shared/fixtures/infinity_ref, the public set;
format in its README). Float32 results are held to the `fp32_cross_attn` reference variant:
- generation: free-running bits identical at every scale; logits replayed with the reference bits of
  earlier scales within 1e-4 of max|logits|; the sampler applied to the reference logits (one
  generator seeded g_seed) reproduces the reference bits; summed codes to 1e-5; the image decoded
  from the reference's final codes within 1 of `image_bgr_uint8`;
- teacher forcing: inputs and bit targets rebuilt from `vae_raw_features`; logits and intermediates;
- VAE: features, bits, quantised latents, reconstruction.
Each case runs once per model file format: fully with the first, and with the other only the
checks that the file matters for (identical state dicts, first scales of the network).
"""
from __future__ import annotations

import pytest
import torch

import reference_cases as rc
from infinity_core.images import to_uint8_bgr
from infinity_core.files.loading import pair
from infinity_core.sampling.masks import TeacherForcing
from infinity_core.model.quantizer import quantize_multiscale, summed_codes, token_bits_to_vae
from infinity_core.sampling.sampler import draw_bits, mask_logits_, sample

FOLDER = rc.fixtures_dir()
TIGHT, LOOSE = 1e-4, 5e-2   # logits, relative to max|ref|: float32 variant / bf16-round-trip variant
pytestmark = pytest.mark.skipif(not FOLDER.is_dir(), reason=f"reference fixtures not found at {FOLDER} "
                                                            "(set INFINITY_REF_FIXTURES to a fixture folder)")


def _params():
    if not FOLDER.is_dir():
        return []
    paths = rc.case_paths(FOLDER)
    stems = [p.stem for p in paths]
    out = []
    for path in paths:
        cid = path.stem if stems.count(path.stem) == 1 else str(path.relative_to(FOLDER).with_suffix(""))
        formats = rc.load_case(path).formats() or ["missing-model-files"]
        out += [pytest.param(path, fmt, id=f"{cid}-{fmt}") for fmt in formats]
    return out or [pytest.param(None, None, id="no-cases")]


@pytest.mark.parametrize("path,fmt", _params())
def test_reference_case(path, fmt, record_property):
    assert path is not None, f"no case JSON (a file with a 'kind' key) in {FOLDER}"
    case = rc.load_case(path)
    check = rc.Checker(f"{case.name} [{fmt}]")
    runner = {"vae": _vae_case, "teacher_forcing": _teacher_forcing_case, "generation": _generation_case}.get(case.kind)
    assert runner is not None, f"{case.name}: unknown case kind {case.meta['kind']!r}"
    missing = [str(p) for _, m in case.needed() if m for p in m.files.values() if not p.is_file()]
    assert fmt in case.formats(), f"{case.name}: model files missing: {missing or 'no model entry in the JSON'}"
    full = fmt == case.formats()[0]
    _model_files(case, fmt, check)
    with torch.no_grad():
        runner(case, fmt, check, full)
    record_property("max_diffs", check.stats)
    check.finish()


def _model_files(case: rc.Case, fmt: str, check: rc.Checker):
    """sha256 as recorded; the other format's state dict equal to the primary one's."""
    primary = case.formats()[0]
    for what, files in case.needed():
        path = files.files[fmt]
        if files.sha.get(fmt):
            check.true(rc.sha256(path) == files.sha[fmt], f"{what} file {path}: sha256 differs from the case JSON")
        if fmt == primary:
            continue
        cfg_a, sd_a = rc.raw_state_dict(str(files.files[primary]), what)
        cfg_b, sd_b = rc.raw_state_dict(str(path), what)
        if cfg_a != cfg_b or sd_a.keys() != sd_b.keys():
            check.fail(f"{what}: {path.name} reads as {cfg_b} with keys {sorted(sd_a.keys() ^ sd_b.keys())[:5]} "
                       f"differing from {primary} ({cfg_a})")
            continue
        for key, t in sd_a.items():
            if t.dtype != sd_b[key].dtype or not torch.equal(t, sd_b[key]):
                check.fail(f"{what} tensor {key}: {fmt} ({sd_b[key].dtype}) differs from {primary} ({t.dtype})")
    if case.model and case.vae and all(fmt in m.files and m.files[fmt].is_file() for m in (case.model, case.vae)):
        paired = pair(rc.raw_state_dict(str(case.model.files[fmt]), "model")[0],
                      rc.raw_state_dict(str(case.vae.files[fmt]), "vae")[0])
        check.true(paired.patchify == case.patchify,
                   f"spatial patchify: the model JSON says {case.patchify}, the file shapes {paired.patchify}")


# ---- VAE ------------------------------------------------------------------------------------------
def _vae_case(case: rc.Case, fmt: str, check: rc.Checker, full: bool):
    vae = case.load("vae", fmt)
    ref_bits = case.scale_tensors("bits")
    grids = [tuple(ref_bits[si].shape[2:4]) for si in sorted(ref_bits)] or case.vae_only_grids()
    raw, z_ref, codes_ref = case.tensor("raw_features"), case.tensor("z_quantized"), case.tensor("summed_codes")
    image, recon_ref = case.tensor("image_rgb_uint8"), case.tensor("recon_from_bits")
    if raw is not None:  # the quantizer alone, on the reference's own features
        z, bits = quantize_multiscale(raw, grids)
        for si in sorted(ref_bits):
            check.equal(f"bits.scale{si:02d} quantised from reference raw_features", bits[si], ref_bits[si])
        if z_ref is not None:
            check.close("z_quantized from reference raw_features", z, z_ref, atol=1e-5)
    if codes_ref is not None and ref_bits:
        codes = summed_codes([ref_bits[si] for si in sorted(ref_bits)], grids[-1])
        check.close("summed_codes from reference bits", codes, codes_ref, atol=1e-5)
    if not full:
        return
    if image is not None:
        x = image.permute(0, 3, 1, 2).float() / 255
        feats = vae.encode_features(x + x - 1)
        if raw is not None:
            check.close("raw_features (encoder)", feats, raw, atol=1e-4)
        z, bits = quantize_multiscale(feats, grids)
        for si in sorted(ref_bits):
            check.equal(f"bits.scale{si:02d} (encoder + quantizer)", bits[si], ref_bits[si])
        if z_ref is not None:
            check.close("z_quantized (encoder + quantizer)", z, z_ref, atol=1e-4)
    if codes_ref is not None and recon_ref is not None:
        latent = codes_ref.squeeze(2) if codes_ref.ndim == 5 else codes_ref
        check.close("recon_from_bits (decoder)", vae.decode(latent), recon_ref, atol=1e-4)


# ---- teacher forcing ------------------------------------------------------------------------------
def _teacher_forcing_case(case: rc.Case, fmt: str, check: rc.Checker, full: bool):
    model, text, schedule = case.load("model", fmt), case.text(), case.schedule
    assert text is not None, f"{case.name}: no text embedding found (tensors {sorted(case.tensors)[:8]}...)"
    raw, x_ref, gt_ref = case.tensor("vae_raw_features"), case.tensor("x_BLC_wo_prefix"), case.tensor("gt_bits")
    text = text.expand_to(next((t.shape[0] for t in (x_ref, raw, gt_ref) if t is not None), text.batch))
    x = x_ref
    if raw is not None:
        x, gt = rc.teacher_inputs(raw, case.vae_grids, case.patchify)
        if x_ref is not None:
            check.close("x_BLC_wo_prefix rebuilt from vae_raw_features", x, x_ref, atol=1e-5)
            x = x_ref
        if gt_ref is not None:
            check.equal("gt_bits rebuilt from vae_raw_features", gt, gt_ref)
    assert x is not None, f"{case.name}: neither x_BLC_wo_prefix nor vae_raw_features"
    variants = {name: (t, TIGHT if rc.FP32 in name else LOOSE) for name, t in case.tensors.items()
                if name.startswith("logits")}
    if not full:  # the KV-cached path on the first two scales, fed the target bits
        if gt_ref is None or not variants:
            return
        n = sum(schedule.tokens_per_scale[:2])
        teacher = list(gt_ref.split(list(schedule.tokens_per_scale), dim=1))[:2]
        res = sample(model, text, schedule, generators=[torch.Generator().manual_seed(0)], patchify=case.patchify,
                     settings=case.settings_unguided(), teacher=TeacherForcing.first_scales(teacher), stop_after=2,
                     record_logits=True)
        for name, (ref, tol) in variants.items():
            check.close(f"{name} scales 0-1 (KV-cached sampler path)", torch.cat(res.logits, 1),
                        ref[:, :n].reshape(ref.shape[0], -1, 2), rel=tol)
        return
    captured = _capture_blocks(model)
    try:
        logits = model.forward_teacher_forced(text, x, schedule)
    finally:
        captured.pop("handles")()
    for name, (ref, tol) in variants.items():
        check.close(name, logits, ref, rel=tol)
    _intermediates(case, model, text, captured, check)


def _capture_blocks(model) -> dict:
    seen: dict = {}
    hooks = [block.register_forward_hook(lambda mod, args, out, i=i: seen.setdefault(i, []).append((args[0], out)))
             for i, block in enumerate(model.blocks)]
    seen["handles"] = lambda: [h.remove() for h in hooks]
    return seen


def _intermediates(case, model, text, captured, check):
    prefix = f"intermediate_{rc.FP32}."
    last = len(model.blocks) - 1
    state = model.condition(text, case.schedule, "cpu", torch.float32)
    cond_BD = state.cond_BD
    model.free(state)
    known = {
        "block_in": lambda: torch.cat([a for a, _ in captured[0]], 1),
        "head_in": lambda: torch.cat([o for _, o in captured[last]], 1),
        "cond_BD": lambda: cond_BD,
        "cond_gss": lambda: model.shared_ada_lin(cond_BD).view(cond_BD.shape[0], 1, 6, -1),
        "ca_kv": lambda: model.text_proj_for_ca(model.text_norm(text.features_NC.float())),
    }
    for name, ref in case.tensors.items():
        if not name.startswith(prefix):
            continue
        key = name[len(prefix):]
        if key.startswith("block") and key.endswith("_out") and key[5:-4].isdigit() and int(key[5:-4]) in captured:
            got = torch.cat([o for _, o in captured[int(key[5:-4])]], 1)
        elif key in known:
            got = known[key]()
        else:
            continue
        check.close(name, got, ref, rel=TIGHT)


# ---- generation -----------------------------------------------------------------------------------
def _generation_case(case: rc.Case, fmt: str, check: rc.Checker, full: bool):
    model, vae, schedule, patchify = case.load("model", fmt), case.load("vae", fmt), case.schedule, case.patchify
    settings, seed, B, n = case.settings(), case.g_seed, case.batch, case.schedule.num_scales
    text, negative = case.text(), case.text(negative=True)
    assert text is not None, f"{case.name}: no prompt embedding found (tensors {sorted(case.tensors)[:8]}...)"
    assert negative is not None or not case.sampling.get("negative_prompt"), \
        f"{case.name}: the JSON names a negative prompt but no tensor/seed for it was found"
    if case.meta.get("vae_scale_schedule"):
        listed = [tuple(g[-2:]) for g in case.meta["vae_scale_schedule"]]
        check.true(listed == case.vae_grids, f"vae_scale_schedule {listed} != {case.vae_grids} (schedule, patchify)")
    variants = case.variants()
    has = lambda o, what: set(range(n)) <= set(o.get(what, {}))  # noqa: E731
    complete = {v: o for v, o in variants.items() if has(o, "bits") and has(o, "logits")}
    tight = [v for v in complete if rc.FP32 in v] or list(complete)  # plain only if no float32 variant exists
    free_running = [v for v, o in variants.items() if rc.FP32 in v and has(o, "bits")]
    if seed is None and settings.top_k != 1:  # unseeded draws cannot be replayed
        free_running = []

    def run(teacher=(), stop=None):
        generators = [torch.Generator().manual_seed(seed if seed is not None else 0)]
        return sample(model, text, schedule, generators=generators, settings=settings, patchify=patchify,
                      negative=negative, batch=B, teacher=TeacherForcing.first_scales(teacher), stop_after=stop,
                      record_logits=True)

    if not full:
        for v in tight:
            res = run(teacher=[complete[v]["bits"][si] for si in range(2)], stop=2)
            for si in range(2):
                check.close(f"{v or 'reference'} scale{si:02d}.logits (replay)", res.logits[si],
                            complete[v]["logits"][si], rel=TIGHT if rc.FP32 in v else LOOSE)
        return
    for v, outs in variants.items():
        _network_free_checks(case, vae, v, outs, check, settings, seed)
    for v in tight:
        tol, tag, ref = (TIGHT if rc.FP32 in v else LOOSE), v or "reference", complete[v]
        replay = run(teacher=[ref["bits"][si] for si in range(n)])
        for si in range(n):
            check.close(f"{tag} scale{si:02d}.logits (replay with reference bits)", replay.logits[si],
                        ref["logits"][si], rel=tol)
    leak = int(case.sampling.get("gt_leak") or 0)  # the reference's own teacher forcing of the first scales
    for v in free_running:
        tag, ref = v, variants[v]
        free = run(teacher=[ref["bits"][si] for si in range(min(leak, n))])
        for si in range(n):
            wrong = check.equal(f"{tag} scale{si:02d}.bits (free-running)", free.bits[si], ref["bits"][si])
            if wrong is not None and wrong.any() and si in ref.get("logits", {}):
                pair_logits = ref["logits"][si].reshape(*wrong.shape, 2)
                margin = (pair_logits[..., 1] - pair_logits[..., 0]).abs()[wrong].min().item()
                check.fail(f"{tag} scale{si:02d}: smallest reference |logit margin| among the differing bits "
                           f"{margin:.3g} (near 0 = a float-noise tie; later scales then differ too)")
            if wrong is None or wrong.any():
                break
        final = case.variant_tensor(v, "final_summed_codes")
        if final is not None:
            check.close(f"{tag} final_summed_codes (free-running)", free.summed_codes, final, atol=1e-5)


def _network_free_checks(case, vae, v, outs, check, settings, seed):
    """Sampler on the reference logits, codes from the reference bits, image from the reference codes."""
    tag, schedule, patchify = v or "reference", case.schedule, case.patchify
    bits, logits = outs.get("bits", {}), outs.get("logits", {})
    if seed is not None and logits and set(logits) == set(range(len(logits))) and set(logits) <= set(bits):
        g = torch.Generator().manual_seed(seed)
        for si in range(len(logits)):
            pairs = logits[si].float().reshape(logits[si].shape[0], -1, 2).clone()
            probs = mask_logits_(pairs, settings.top_k, settings.top_p).softmax(dim=-1)
            check.equal(f"{tag} scale{si:02d}.bits drawn by our sampler from the reference logits",
                        draw_bits(probs, [g]).view(bits[si].shape), bits[si])
    vae_bits = {si: token_bits_to_vae(b, schedule.grids[si], patchify)
                for si, b in bits.items() if si < schedule.num_scales}
    for si, t in outs.get("bits_vae", {}).items():
        if si in vae_bits:
            check.equal(f"{tag} scale{si:02d}.bits_vae vs bits (patchify layout)", vae_bits[si], t)
    final = case.variant_tensor(v, "final_summed_codes")
    if final is not None and len(vae_bits) == schedule.num_scales:
        codes = summed_codes([vae_bits[si] for si in range(schedule.num_scales)], case.vae_grids[-1])
        check.close(f"{tag} final_summed_codes from its bits", codes.squeeze(2), final, atol=1e-5)
    image = case.variant_tensor(v, "image_bgr_uint8")
    if final is not None and image is not None:
        latent = final.squeeze(2) if final.ndim == 5 else final
        check.close(f"{tag} image_bgr_uint8 decoded from final_summed_codes", to_uint8_bgr(vae.decode(latent)), image,
                    atol=1)
