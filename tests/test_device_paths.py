"""The paths devices take where they lack a kernel or memory, checked on CPU against the paths CPUs take:
resizes (MPS), query-chunked attention (MPS, pre-Ampere bf16), the bit draw away from its generator,
previews copied small, fp8 storage of the matrices only."""
import pytest
import torch
import torch.nn.functional as F

from infinity_core.model import attention as attention_module
from infinity_core import devices, resize
from infinity_core.model import quantizer
from infinity_core.model.attention import attention
from infinity_core.images import preview_rgb
from infinity_core.files.loading import storage_cast
from infinity_core.files.random_models import random_transformer
from infinity_core.sampling.sampler import exponential_race, make_generators, mask_logits_, sample
from infinity_core.schedules import PIXEL_BUDGETS, TEMPLATES, ScaleSchedule
from test_devices import FP8
from tolerances import assert_within, attention_bound, resize_bound

MPS_KERNELS = devices.ResizeKernels(False, False, False)


@pytest.fixture
def mps_resizes(monkeypatch):
    monkeypatch.setattr(resize, "resize_kernels_for", lambda device: MPS_KERNELS)


def _pairs():
    """(source, target) grids of every resize the quantizer and sampler make, every template and budget."""
    for template in TEMPLATES:
        for budget in PIXEL_BUDGETS:
            for patchify in (False, True):
                grids = ScaleSchedule(template, budget).vae_grids(patchify)
                yield from ((g, grids[-1]) for g in grids[:-1])


# ---- resizes ------------------------------------------------------------------------------------------
def test_cpu_and_cuda_keep_todays_five_d_calls():
    x = torch.randn(2, 8, 1, 6, 10)
    assert torch.equal(resize.trilinear_cells(x, (16, 24)), F.interpolate(x, size=(1, 16, 24), mode="trilinear"))
    y = torch.randn(2, 8, 1, 64, 64)
    assert torch.equal(resize.area_cells(y, (6, 6)), F.interpolate(y, size=(1, 6, 6), mode="area"))
    assert torch.equal(resize.area_2d(y[:, :, 0], (20, 20)), F.interpolate(y[:, :, 0], size=(20, 20), mode="area"))


def test_mps_resizes_compute_the_same_function_for_every_grid(mps_resizes):
    """4-D bilinear is the one-slice trilinear resize (float rounding apart: another kernel, and it differs
    per CPU kernel level, 1.6 eps * max|x| under AVX-512, 1.9 under the plain loops); area runs on the host
    with the same window sums as the 5-D call: exact."""
    for (h, w), (H, W) in set(_pairs()):
        small, big = torch.randn(1, 4, 1, h, w), torch.randn(1, 4, 1, H, W)
        for x, size in ((small, (H, W)), (big, (h, w))):  # both quantizer directions
            got, ref = resize.trilinear_cells(x, size), F.interpolate(x, size=(1, *size), mode="trilinear")
            assert got.shape == ref.shape
            bound = 2 * resize_bound(max(*x.shape[-2:], *size), x.abs().max().item())  # two kernels
            assert_within(got, ref, bound, f"bilinear vs trilinear, {tuple(x.shape[-2:])} -> {size}")
        assert torch.equal(resize.area_cells(big, (h, w)), F.interpolate(big, size=(1, h, w), mode="area"))
        assert torch.equal(resize.area_2d(big[:, :, 0], (h, w)), F.interpolate(big[:, :, 0], size=(h, w), mode="area"))


def test_mps_resizes_give_the_same_bits(mps_resizes, tiny_transformer, prompt, monkeypatch):
    grids = ScaleSchedule(1.0, "1M").vae_grids(False)
    z = torch.randn(2, 16, *grids[-1], generator=torch.Generator().manual_seed(3))
    with monkeypatch.context() as m:
        m.setattr(resize, "resize_kernels_for", devices.resize_kernels_for)
        summed_cpu, bits_cpu = quantizer.quantize_multiscale(z, grids)
        run_cpu = sample(tiny_transformer, prompt, ScaleSchedule(1.0, "0.06M"), generators=make_generators(4, 1))
    summed, bits = quantizer.quantize_multiscale(z, grids)
    assert all(torch.equal(a, b) for a, b in zip(bits, bits_cpu))
    torch.testing.assert_close(summed, summed_cpu, rtol=0, atol=1e-6)
    run = sample(tiny_transformer, prompt, ScaleSchedule(1.0, "0.06M"), generators=make_generators(4, 1))
    assert all(torch.equal(a, b) for a, b in zip(run.bits, run_cpu.bits))


# ---- attention ------------------------------------------------------------------------------------------
def _materialising_sdpa(calls):
    """A backend that builds the whole score matrix (what MPS or bf16 on a T4 does), recording its size."""
    def sdpa(q, k, v, attn_mask=None, scale=None):
        scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5 if scale is None else scale)
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, -torch.inf)
        calls.append((scores.numel() * scores.element_size(), q.dtype))
        return scores.softmax(-1) @ v
    return sdpa


@pytest.mark.parametrize("masked", [False, True])
def test_chunked_attention_gives_the_rows_of_the_whole_call(monkeypatch, masked):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 16, generator=g) for n in (37, 50, 50))
    mask = (torch.rand(2, 1, 1, 50, generator=g) > 0.3) if masked else None
    whole = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.7)
    assert torch.equal(attention(q, k, v, attn_mask=mask, scale=0.7), whole)  # CPU: SDPA itself
    plan = devices.AttentionPlan(chunk=True, score_bytes=4, budget=2 * 3 * 50 * 4 * 8)  # 8 query rows per call
    monkeypatch.setattr(attention_module, "attention_plan_for", lambda device, dtype: plan)
    calls = []
    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", _materialising_sdpa(calls))
    chunked = attention(q, k, v, attn_mask=mask, scale=0.7)
    assert len(calls) == 5 and max(size for size, _ in calls) <= plan.budget  # ceil(37 / 8) slices
    # Not bit-equal: the fused kernel and the materialised scores sum in other orders, with other exps, and
    # both differ per CPU kernel level (AVX2's differed by 10 ulp where AVX-512's did not). Both must be
    # within the rounding bound of the exact rows; a wrong slice or mask row would be off by ~0.1.
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask, scale=0.7)
    bound = attention_bound(q, k, v, attn_mask=mask, scale=0.7)
    assert bound.max() < 1e-3  # far below what a wrong row would change
    assert_within(whole, exact, bound, "fused SDPA")
    assert_within(chunked, exact, bound, "query-chunked, materialised scores")


def test_long_sixteen_bit_attention_is_upcast_where_the_plan_says(monkeypatch):
    q, k, v = (torch.randn(1, 2, n, 8).to(torch.bfloat16) for n in (5, 40, 40))
    plan = devices.AttentionPlan(chunk=True, upcast_keys=32)
    monkeypatch.setattr(attention_module, "attention_plan_for", lambda device, dtype: plan)
    calls = []
    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", _materialising_sdpa(calls))
    out = attention(q, k, v)
    assert out.dtype == torch.bfloat16 and calls[0][1] == torch.float32
    calls.clear()
    attention(q, k[:, :, :30], v[:, :, :30])
    assert calls[0][1] == torch.bfloat16


def test_chunked_sampling_equals_a_fused_run(tiny_config, prompt, monkeypatch):
    model = random_transformer(tiny_config, seed=1)
    schedule = ScaleSchedule(1.0, "0.06M")
    fused = sample(model, prompt, schedule, generators=make_generators(9, 2), batch=2)
    plan = devices.AttentionPlan(chunk=True, budget=64 * 2**10)  # ~6 query rows per call at the last scale
    monkeypatch.setattr(attention_module, "attention_plan_for", lambda device, dtype: plan)
    calls, sdpa = [], F.scaled_dot_product_attention
    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention",
                        lambda q, *a, **k: calls.append(q.shape[2]) or sdpa(q, *a, **k))
    chunked = sample(model, prompt, schedule, generators=make_generators(9, 2), batch=2)
    assert max(calls) < max(schedule.tokens_per_scale) and len(calls) > 3 * len(model.blocks) * schedule.num_scales
    assert all(torch.equal(a, b) for a, b in zip(fused.bits, chunked.bits))


# ---- the bit draw ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("per_image", [False, True])
def test_the_draw_away_from_the_generator_is_torch_multinomial(per_image):
    """multinomial(p, 1) is argmax(p / Exp(1) noise of p's shape) in PyTorch: same bits, same generator states."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4000, 2, generator=g) * torch.tensor([0.1, 3.0, 30.0]).view(3, 1, 1)
    logits[:, ::7, 0] = -torch.inf  # top-k/top-p leave one value: probabilities 0 and 1
    probs = mask_logits_(logits, 0, 0.9).softmax(-1)
    ours, theirs = make_generators(5, 3, per_image=per_image), make_generators(5, 3, per_image=per_image)
    if per_image:
        expected = torch.stack([torch.multinomial(probs[b], 1, True, generator=g).view(-1)
                                for b, g in enumerate(theirs)])
    else:
        expected = torch.multinomial(probs.view(-1, 2), 1, True, generator=theirs[0]).view(3, -1)
    got = exponential_race(probs, ours)
    assert got.dtype == torch.uint8 and torch.equal(got.long(), expected)
    assert all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(ours, theirs))


# ---- previews and fp8 -----------------------------------------------------------------------------------
def test_preview_is_enlarged_on_the_host_and_unchanged():
    z = torch.randn(2, 16, 1, 24, 40)
    rgb = preview_rgb(z, 256)
    small = preview_rgb(z, 40)  # scale 1: no enlargement at all
    assert rgb.device.type == "cpu" and rgb.shape == (2, 144, 240, 3)
    assert torch.equal(rgb, small.repeat_interleave(6, 1).repeat_interleave(6, 2))


@pytest.mark.parametrize("fp8", FP8)
def test_fp8_is_for_the_attention_and_ffn_matrices_only(tiny_transformer, fp8):
    sd = storage_cast(tiny_transformer.state_dict(), fp8, torch.bfloat16)
    quantised = {k for k, v in sd.items() if v.dtype == fp8}
    assert quantised == {f"blocks.{i}.{m}.weight" for i in range(len(tiny_transformer.blocks))
                         for m in ("sa.mat_qkv", "sa.proj", "ca.mat_q", "ca.mat_kv", "ca.proj", "ffn.fc1", "ffn.fc2")}
    kept = {"shared_ada_lin.1.weight", "head_nm.ada_lin.1.weight", "head.weight", "word_embed.weight",
            "lvl_embed.weight", "blocks.0.ada_gss", "blocks.0.ca_norm.weight", "blocks.0.sa.mat_qkv.bias"}
    assert all(sd[k].dtype == torch.bfloat16 for k in kept)
    assert all(v.dtype == torch.float16 for v in storage_cast(tiny_transformer.state_dict(), torch.float16,
                                                               torch.float32).values() if v.is_floating_point())
