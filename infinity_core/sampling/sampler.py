"""Next-scale autoregressive sampling with classifier-free guidance, per-bit top-k/top-p and seeds.

Source: FoundationVision/Infinity `Infinity.autoregressive_infer_cfg` (infinity.py L455-642) and
`sample_with_top_k_top_p_also_inplace_modifying_logits_` (L721-735), separated from the network.
Per scale: run the blocks on the scale's tokens (KV cache holds all earlier scales), take bit
logits, guide them (`cfg * cond + (1 - cfg) * uncond`, both divided by tau first), mask with
top-k/top-p per bit, draw every bit of the scale with ONE `torch.multinomial` call, turn the bits
into codes, add them (upsampled) to the running latent, and resample that sum to the next grid as
the next input. Seeded CPU generators give the reference's exact draws on CPU.
Shape legend: B images, N = tokens x bits of a scale, d_t bits per token, d bits per latent cell.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .. import validation
from ..model.conditioning import TextEmbedding
from ..errors import SamplingError
from .masks import TeacherForcing
from .plan import RunPlan, plan_run
from ..model.pruning import PruningPolicy
from ..model.quantizer import bits_to_codes, next_scale_input, token_bits_to_vae, upsample_codes
from ..schedules import ScaleSchedule
from ..model.transformer import InfinityTransformer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplerSettings:
    """`cfg` / `tau`: a number, or one value per scale (extra values are ignored, as in the reference).

    top_k acts per bit on two values, so only top_k = 1 (greedy) changes anything; 0 or >= 2 keep
    both. top_p drops the less likely bit value when its probability is <= 1 - top_p (0 = off).
    cfg_insertion_layer: 0 = guide the logits (every release); -k = mix the hidden states after
    layer depth-k; 1 reproduces a reference quirk: the unconditional half runs but guides nothing.
    truncate_guidance: where cfg is 1 from some scale to the end, the unconditional half stops there
    (its rows and KV cache are dropped); the bits are the reference's, which computes that half and
    ignores it. False runs it as the reference does (for comparisons).
    """

    cfg: float | Sequence[float] = 3.0
    tau: float | Sequence[float] = 0.5
    top_k: int = 0
    top_p: float = 0.0
    cfg_insertion_layer: Sequence[int] = (0,)
    truncate_guidance: bool = True

    def validate(self, depth: int, num_scales: int) -> None:
        """Raise SamplingError for settings that cannot run (callers may check before loading models;
        `sample` checks again)."""
        cfgs, taus = self.per_scale(num_scales)
        _guidance(self, depth)
        validation.sampler_numbers(cfgs, taus, self.top_k, self.top_p)

    def per_scale(self, n: int) -> tuple[list[float], list[float]]:
        def expand(value, name):
            values = [float(value)] * n if isinstance(value, (int, float)) else [float(v) for v in value]
            if len(values) < n:
                raise SamplingError(f"{name} has {len(values)} values but the schedule has {n} scales",
                                    hint=f"give one {name} value per scale, or a single number")
            return values[:n]
        return expand(self.cfg, "cfg"), expand(self.tau, "tau")

    def guided_scales(self, n: int) -> int:
        """How many leading scales of a run of n run the unconditional half (0 = none)."""
        cfg, _ = self.per_scale(n)
        if not any(c != 1 for c in cfg):
            return 0
        k = n
        while self.truncate_guidance and cfg[k - 1] == 1:
            k -= 1
        return k


@dataclass
class ScaleProgress:
    """Handed to the callback after each scale; raising from the callback cancels the run cleanly."""

    index: int
    total: int
    bits_BLd: torch.Tensor
    summed_codes_Bd1HW: torch.Tensor


@dataclass
class SampleResult:
    bits: list[torch.Tensor]            # transformer layout per scale, [B, h*w, d_t] uint8
    summed_codes: torch.Tensor          # [B, d, H, W] float32: the decoder's input
    schedule: ScaleSchedule
    patchify: bool
    logits: list[torch.Tensor] | None = None  # guided, tempered, unmasked [B, N, 2] (if recorded)
    skipped: tuple[int, ...] = ()       # scales pruning skipped: no bits, nothing in summed_codes


def mask_logits_(logits_BN2: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """The reference's top-k then top-p masking, in place, on two-way bit logits."""
    if top_k > 0:
        kth = logits_BN2.topk(min(top_k, 2), dim=-1, largest=True, sorted=False)[0].amin(dim=-1, keepdim=True)
        logits_BN2.masked_fill_(logits_BN2 < kth, -torch.inf)
    if top_p > 0:
        sorted_logits, sorted_idx = logits_BN2.sort(dim=-1, descending=False)
        drop = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        drop[..., -1:] = False  # the most likely value always survives
        logits_BN2.masked_fill_(drop.scatter(-1, sorted_idx, drop), -torch.inf)
    return logits_BN2


def draw_bits(probs_BN2: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Bits `[B, N]` uint8 on the probabilities' device: one multinomial draw for the whole batch (one
    generator), or one per image (one generator per image), as the reference draws.

    On the generators' device this is `torch.multinomial`. Elsewhere (CPU generators, the model on an
    accelerator) it is the same draw without moving the probabilities: a one-sample multinomial is
    PyTorch's `argmax(p / q)` with `q ~ Exp(1)` of the probabilities' shape from the generator, so q is
    drawn on the host (the only per-image work: one stream per generator), sent over, and compared on
    the device. Same bits, same generator states afterwards, no sync (tests/test_sampler.py)."""
    B, N, _ = probs_BN2.shape
    if probs_BN2.device == generators[0].device:
        if len(generators) == 1:
            out = torch.multinomial(probs_BN2.view(-1, 2), 1, replacement=True, generator=generators[0]).view(B, N)
        else:
            out = torch.stack([torch.multinomial(probs_BN2[b], 1, replacement=True, generator=g).view(N)
                               for b, g in enumerate(generators)])
        return out.to(torch.uint8)
    return exponential_race(probs_BN2, generators)


def exponential_race(probs_BN2: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """`torch.multinomial(p, 1, replacement=True)`'s algorithm with q drawn on the generators' device."""
    B, N, _ = probs_BN2.shape
    pinned = probs_BN2.device.type == "cuda"  # page-locked: the copy runs without blocking the host
    q_BN2 = torch.empty(B, N, 2, dtype=probs_BN2.dtype, device=generators[0].device, pin_memory=pinned)
    if len(generators) == 1:
        q_BN2.view(-1, 2).exponential_(generator=generators[0])
    else:
        for q_N2, g in zip(q_BN2, generators):
            q_N2.exponential_(generator=g)
    q_BN2 = q_BN2.to(probs_BN2.device, non_blocking=pinned)
    return torch.div(probs_BN2, q_BN2).argmax(dim=-1).to(torch.uint8)


def make_generators(seed: int, batch: int, device="cpu", per_image: bool = True,
                    indices: Sequence[int] | None = None) -> list[torch.Generator]:
    """Image i of a batch uses seed + i (so it equals a single run with that seed), or one shared stream.
    `indices` replaces i (ComfyUI's batch_index: a picked image of a batch keeps its seed)."""
    if indices is not None and len(indices) != batch:
        raise SamplingError(f"{len(indices)} batch indices for a batch of {batch}",
                            hint="give one index per image, or none")
    offsets = list(indices) if indices is not None else list(range(batch))
    seeds = [seed + int(i) for i in offsets] if per_image else [seed]
    return [torch.Generator(device=device).manual_seed(s % 2**64) for s in seeds]


def _guidance(settings: SamplerSettings, depth: int) -> tuple[bool, frozenset[int]]:
    on_logits, layers = False, set()
    for item in settings.cfg_insertion_layer:
        if item == 0:
            on_logits = True
        elif item == 1:
            pass  # the reference's quirk: the uncond half runs but guides nothing (warned in `sample`)
        elif -depth < item < 0:
            layers.add(depth + item)
        else:
            raise SamplingError(f"cfg_insertion_layer {item} is not valid for a {depth}-layer model",
                                hint="use 0 (guide the logits, the default) or -1 .. -(depth-1)")
    return on_logits, frozenset(layers)


def _guided_text(model, text: TextEmbedding, negative: TextEmbedding | None, batch: int) -> TextEmbedding:
    text = text.expand_to(batch)
    uncond = negative.expand_to(batch) if negative is not None else model.null_text(text)
    return TextEmbedding.cat([text, uncond])


@torch.no_grad()
def sample(
    model: InfinityTransformer,
    text: TextEmbedding,
    schedule: ScaleSchedule,
    *,
    generators: Sequence[torch.Generator],
    settings: SamplerSettings = SamplerSettings(),
    patchify: bool = False,
    negative: TextEmbedding | None = None,
    batch: int | None = None,
    teacher: TeacherForcing | None = None,
    stop_after: int | None = None,
    device=None,
    compute_dtype: torch.dtype = torch.float32,
    callback: Callable[[ScaleProgress], None] | None = None,
    record_logits: bool = False,
    pruning: PruningPolicy | None = None,
) -> SampleResult:
    """Generate `batch` images' bits. `teacher` forces an image's bits into the draw, per scale and token
    (image-to-image = the reference's gt_leak, inpainting; see masks.py); `stop_after=k` keeps only
    scales < k; `pruning` (pruning.build_policy) prunes tokens inside the blocks and may skip the last
    scales (where a teacher still forces its tokens: a masked run keeps the image outside the mask)."""
    B = text.batch if batch is None else batch
    if B < 1:
        raise SamplingError(f"batch size must be at least 1, got {B}", hint="generate 1 or more images")
    validation.sample_call(model.config, text, negative, schedule.num_scales)
    settings.validate(len(model.blocks), schedule.num_scales)
    teacher = teacher if teacher is not None else TeacherForcing()
    teacher.check(schedule.tokens_per_scale, B, model.config.bits_per_token)
    if pruning is not None:
        pruning.validate(schedule, len(model.blocks))
    plan = plan_run(schedule, settings, pruning=pruning, teacher=teacher, stop_after=stop_after)
    if 1 in settings.cfg_insertion_layer:
        log.warning("cfg_insertion_layer 1 applies no guidance (reference behaviour); the uncond half still runs")
    full_text = _guided_text(model, text, negative, B) if plan.guided_scales else text.expand_to(B)
    device = torch.device(device) if device is not None else model.head.weight.device
    state = model.condition(full_text, schedule, device, compute_dtype, num_scales=plan.net_scales,
                            kv_scales=plan.guided_scales if plan.truncates else None)
    run = _Run(model, plan, state, settings, teacher, generators, B, patchify, callback, record_logits,
               guard=validation.LogitsGuard(plan.net_scales, compute_dtype))
    try:
        x = model.start_tokens(state)
        for si in range(plan.net_scales):
            x = run.network_scale(si, x)
        run.guard.finish()
        for si in plan.skipped_scales:
            run.skipped_scale(si, device)
    finally:
        model.free(state)
    return SampleResult(run.bits_out, run.summed.squeeze(2), schedule, patchify,
                        run.logits_out if record_logits else None, skipped=tuple(run.skipped))


@dataclass
class _Run:
    """One call of `sample()` under way: the plan, the state it walks, and what it has produced so far."""

    model: InfinityTransformer
    plan: RunPlan
    state: object                 # the transformer's GenerationState
    settings: SamplerSettings
    teacher: TeacherForcing
    generators: Sequence[torch.Generator]
    B: int
    patchify: bool
    callback: Callable[[ScaleProgress], None] | None
    record_logits: bool
    guard: validation.LogitsGuard
    summed: torch.Tensor | int = 0
    bits_out: list = field(default_factory=list)
    logits_out: list = field(default_factory=list)
    skipped: list = field(default_factory=list)

    def __post_init__(self):
        self.on_logits, self.mix_layers = _guidance(self.settings, len(self.model.blocks))
        self.vae_grids = self.plan.schedule.vae_grids(self.patchify)

    def network_scale(self, si: int, x: torch.Tensor) -> torch.Tensor | None:
        """Run the network on scale si, draw its bits (the teacher puts back the kept ones), add their codes;
        returns the next scale's input."""
        plan, state, B = self.plan, self.state, self.B
        bits = self._draw(si, self._logits(si, x)).view(B, plan.schedule.tokens_per_scale[si], -1).to(torch.uint8)
        bits = self.teacher.apply(si, bits)
        self._add_codes(si, bits)
        if si + 1 == plan.guided_scales and plan.truncates:  # guidance truncation: cfg is 1 from here on
            self.model.keep_rows(state, B, plan.kv_tokens)
        nxt = None
        if si + 1 < plan.net_scales:
            nxt = self.model.embed_bits(next_scale_input(self.summed, self.vae_grids[si + 1], self.patchify), state)
            nxt = nxt.repeat(state.rows // B, 1, 1)
        self._emit(si, bits)
        return nxt

    def _logits(self, si: int, x: torch.Tensor) -> torch.Tensor:
        """[B, L*d, 2] guided and tempered logits of scale si."""
        plan, state, B, model = self.plan, self.state, self.B, self.model
        cfg, tau = plan.cfg[si], plan.tau[si]
        guided = state.rows > B
        mix = lambda h, cfg=cfg: torch.cat([cfg * h[:B] + (1 - cfg) * h[B:]] * 2)  # noqa: E731
        layers = self.mix_layers if cfg != 1 and guided else frozenset()
        first = _drawn_rows(self.teacher, si, B, plan.schedule.tokens_per_scale[si], state.rows, plan.pruning)
        hidden = model.forward_scale(x, si, state, mix_after_layers=layers, mix=mix, pruning=plan.pruning,
                                     compute_first=first)
        if cfg != 1 and self.on_logits and guided:
            logits = model.logits(hidden, state).mul(1 / tau)
            logits = cfg * logits[:B] + (1 - cfg) * logits[B:]
        else:
            logits = model.logits(hidden[:B], state, rows=slice(0, B)).mul(1 / tau)
        del hidden
        return logits.reshape(B, -1, 2)

    def _draw(self, si: int, logits: torch.Tensor) -> torch.Tensor:
        if self.record_logits:
            self.logits_out.append(logits.clone())
        self.guard.check(logits, si)  # fp16 overflow: named, not multinomial's crash
        probs = mask_logits_(logits, self.settings.top_k, self.settings.top_p).softmax(dim=-1)
        # every token is drawn, then the kept ones take the image's bits: the random stream ignores the mask
        return draw_bits(probs, self.generators)

    def skipped_scale(self, si: int, device) -> None:
        """A skipped scale (FastVAR's "100% pruning", always the last ones) draws nothing: it adds only the codes
        of the tokens a teacher forces. A whole forced scale (image-to-image) yields its bits; a partly forced one
        (inpainting) or an unforced one yields none and counts as skipped."""
        tokens = self.plan.schedule.tokens_per_scale[si]
        forced = self.teacher.forced_only(si, self.B, tokens, self.model.config.bits_per_token, device)
        if forced is None:
            self.skipped.append(si)
            return
        bits, keep_BL = forced
        weight = _token_cells(keep_BL, self.plan.schedule.grids[si], self.patchify) if keep_BL is not None else None
        self._add_codes(si, bits, weight)
        if keep_BL is not None:
            self.skipped.append(si)
            return
        self._emit(si, bits)

    def _add_codes(self, si: int, bits: torch.Tensor, weight: torch.Tensor | None = None) -> None:
        codes = bits_to_codes(token_bits_to_vae(bits, self.plan.schedule.grids[si], self.patchify))
        if weight is not None:
            codes = codes * weight
        self.summed = self.summed + upsample_codes(codes, self.vae_grids[-1])

    def _emit(self, si: int, bits: torch.Tensor) -> None:
        self.bits_out.append(bits)
        if self.callback is not None:
            self.callback(ScaleProgress(si, self.plan.output_scales, bits, self.summed))


def _drawn_rows(teacher: TeacherForcing, si: int, batch: int, tokens: int, rows: int,
                pruning: PruningPolicy | None) -> torch.Tensor | None:
    """`[rows, L]` bool: the tokens a pruned scale computes first, the drawn ones (the kept ones' outputs are
    replaced by the image's bits); None where nothing is pruned or the scale is not partly kept."""
    if pruning is None or pruning.plan(si) is None or si >= teacher.num_scales or teacher.keep[si] is None:
        return None
    return (~teacher.keep_mask(si, batch, tokens)).repeat(rows // batch, 1)


def _token_cells(keep_BL: torch.Tensor, grid_hw: tuple[int, int], patchify: bool) -> torch.Tensor:
    """A per-token weight `[B, L]` as `[B, 1, 1, h', w']` on the VAE grid (a token covers 2x2 cells with patchify)."""
    cells_B1hw1 = token_bits_to_vae(keep_BL.float()[..., None].expand(-1, -1, 4 if patchify else 1), grid_hw, patchify)
    return cells_B1hw1.permute(0, 4, 1, 2, 3)
