"""Masks: which tokens of each scale keep an image's bits and which are drawn (inpainting, outpainting).

One mechanism, per-token teacher forcing (`TeacherForcing`): at scale si the sampler draws every
token as usual, then overrides the kept ones with the image's bits. Image-to-image ("the first k
scales from the image") is the special case where scales < k are all kept and the others all drawn;
inpainting keeps the tokens outside a mask at every scale from k on. Every token is drawn before the
override, so the random stream does not depend on the mask: an all-drawn mask is text-to-image with
the same seed, bit for bit. This is VAR's zero-shot in/outpainting (Tian et al. 2024): no Infinity
model was trained for it.

Mask convention (ComfyUI's `noise_mask`): 1 = regenerate, 0 = keep the image; soft values allowed.

Pixel mask -> token masks (`regenerate_masks`; the rule is tested in tests/test_sampler_masks.py):
1. fit the mask to the encoded image's frame exactly as Infinity Encode fits the image (scale to
   cover, centre-crop: `images.cover_box`), so a mask drawn on the original picture lines up;
2. painted pixels P: mask above `threshold` (default 0, any value); the region allowed to change
   G: P grown by `grow` px (default 0; a chessboard max filter);
3. last scale (16x16 px tokens, never upsampled): a token is drawn when it holds a painted pixel,
   so the drawn region always covers what was painted;
4. every earlier scale: a token is drawn only when its whole support lies inside G. Its codes are
   upsampled (trilinear) onto the final grid and reach half a token beyond its own area, so the
   support is its area grown by half a token on each side (tested conservatively on a half-token grid).
With Infinity-8B's patchify one token is 2x2 latent cells of 8 px, still 16x16 px; the rule is the same
(there the upsampling reaches only half a cell, so the half-token support is conservative).

What it guarantees: the latent of every final 16x16 px token area without a pixel in G is the
image's exactly (no drawn token reaches it). Decoded pixels still shift a little everywhere (the
decoder's GroupNorm sees the whole image), so the Inpaint Composite node pastes the original pixels
back outside the mask. What it costs: where a coarse token straddles the mask edge it is kept, so
the painted area keeps the image's coarsest colour and layout and is regenerated from the scale
whose tokens fit inside it: a small mask changes details, a large one also layout. Very coarse
scales follow from the same rule: the 1x1 token (and the 2x2 ones) span the whole picture (a quarter
of it), so they are drawn only when the mask covers (almost) all of it. That keeps the global colour
and layout of a picture that is mostly kept, and a full mask is text-to-image exactly. Grow the mask
(`grow`, or core Grow Mask) to give the painted area more freedom at coarse scales, at the cost of
changing more of its surroundings.
Shape legend: B images, L tokens of a scale (h*w), d_t bits per token.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import SamplingError
from ..images import cover_box
from ..model.quantizer import vae_bits_to_tokens
from ..schedules import ScaleSchedule

TEACHER_HINT = "encode the image with the tokenizer that matches the model, at the size and budget of this run"


@dataclass(frozen=True)
class MaskRule:
    """How a pixel mask becomes token masks (the module docstring states the rule and its reasons):
    pixels above `threshold` are painted; drawn coarse tokens stay within `grow` px of them."""

    threshold: float = 0.0
    grow: int = 0


def fit_mask(mask_BHW: torch.Tensor, size_hw: tuple[int, int],
             picture_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """A mask of any size `[B, h, w]` in the frame of a picture fitted to `size_hw` (scale to cover,
    centre-crop, as Infinity Encode fits images), float32 in [0, 1]. With `picture_hw` (the picture's own
    size) a mask of another size is first stretched onto the picture, ComfyUI's convention."""
    m = mask_BHW.float().clamp(0, 1).unsqueeze(1)
    if picture_hw is not None and tuple(m.shape[-2:]) != tuple(picture_hw):
        m = F.interpolate(m, size=tuple(picture_hw), mode="bilinear", align_corners=False)
    H, W = size_hw
    if tuple(m.shape[-2:]) != (H, W):
        nh, nw, top, left = cover_box(tuple(m.shape[-2:]), size_hw)
        m = F.interpolate(m, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        m = m[..., top:top + H, left:left + W].clamp(0, 1)
    return m.squeeze(1).contiguous()


def regenerate_masks(mask_BHW: torch.Tensor, schedule: ScaleSchedule,
                     rule: MaskRule = MaskRule()) -> list[torch.Tensor]:
    """Per scale, `[B, h*w]` bool in the transformer's token order: True = the token is drawn."""
    painted = (fit_mask(mask_BHW, schedule.image_hw) > rule.threshold).float().unsqueeze(1)
    outside = 1 - (F.max_pool2d(painted, 2 * rule.grow + 1, stride=1, padding=rule.grow) if rule.grow else painted)
    masks = []
    for si, (h, w) in enumerate(schedule.grids):
        if si == schedule.num_scales - 1:
            drawn = F.adaptive_max_pool2d(painted, (h, w)) > 0
        else:  # any pixel outside G within half a token of the token's area blocks it
            halves = F.adaptive_max_pool2d(outside, (2 * h, 2 * w))
            drawn = F.max_pool2d(halves, 4, stride=2, padding=1) == 0
        masks.append(drawn.flatten(1))
    return masks


def feather(mask_BHW: torch.Tensor, radius: int) -> torch.Tensor:
    """Blend weights that are at least the mask and fall linearly to exactly 0 at `radius` px (chessboard
    distance) outside it: w(p) = max over q of mask(q) - d(p, q) / (radius + 1), clamped to [0, 1]."""
    w = mask_BHW.float().clamp(0, 1).unsqueeze(1)
    step = 1.0 / (radius + 1)
    for _ in range(radius):
        w = torch.maximum(w, F.max_pool2d(w, 3, stride=1, padding=1) - step)
    return w.clamp(0, 1).squeeze(1)


def as_token_bits(bits: torch.Tensor, patchify: bool) -> torch.Tensor:
    """Transformer-layout bits `[B, L, d_t]` uint8 from either layout (VAE layout is `[B, 1, h, w, d]`)."""
    return (vae_bits_to_tokens(bits, patchify) if bits.ndim == 5 else bits).to(torch.uint8)


@dataclass(frozen=True)
class TeacherForcing:
    """Image bits forced into a run: at scale si the tokens where `keep[si]` is True take `bits[si]`
    (`keep[si]` None = every token); scales from len(bits) on are drawn freely.

    bits[si]: transformer layout `[B, L, d_t]` uint8 (B = 1 applies to every image); keep[si]: `[B or 1, L]` bool.
    """

    bits: tuple[torch.Tensor, ...] = ()
    keep: tuple[torch.Tensor | None, ...] = ()

    def __post_init__(self):
        if len(self.bits) != len(self.keep):
            raise SamplingError(f"teacher forcing has bits for {len(self.bits)} scales but masks for "
                                f"{len(self.keep)}", hint="build it with TeacherForcing.first_scales or .masked")

    @classmethod
    def first_scales(cls, bits: Sequence[torch.Tensor], patchify: bool = False) -> TeacherForcing:
        """Image-to-image: every token of the given (leading) scales from the image."""
        tokens = tuple(as_token_bits(b, patchify) for b in bits)
        return cls(tokens, (None,) * len(tokens))

    @classmethod
    def masked(cls, bits: Sequence[torch.Tensor], regenerate: Sequence[torch.Tensor], keep_scales: int = 0,
               patchify: bool = False) -> TeacherForcing:
        """Inpainting: scales < keep_scales entirely from the image, then the tokens outside `regenerate[si]`
        (True = drawn, e.g. from `regenerate_masks`) at every scale of `bits`."""
        if len(regenerate) < len(bits):
            raise SamplingError(f"{len(bits)} scales of image bits but token masks for {len(regenerate)}",
                                hint="make the token masks with regenerate_masks for the same schedule")
        tokens = tuple(as_token_bits(b, patchify) for b in bits)
        keep = tuple(None if si < keep_scales else ~regenerate[si].bool() for si in range(len(tokens)))
        return cls(tokens, keep)

    @classmethod
    def for_image(cls, bits: Sequence[torch.Tensor], schedule: ScaleSchedule, keep_scales: int,
                  mask: torch.Tensor | None = None, patchify: bool = False,
                  rule: MaskRule = MaskRule()) -> TeacherForcing:
        """What the nodes and the command line run: an image's bits (every scale when masked) with the first
        `keep_scales` scales kept whole, and an optional pixel mask `[B, h, w]` (1 = regenerate) after them."""
        if mask is None:
            return cls.first_scales(bits[:keep_scales], patchify)
        return cls.masked(bits, regenerate_masks(mask, schedule, rule), keep_scales, patchify)

    @property
    def num_scales(self) -> int:
        return len(self.bits)

    @property
    def whole_scales(self) -> int:
        """How many leading scales are forced whole (image-to-image's k)."""
        return next((si for si, keep in enumerate(self.keep) if keep is not None), self.num_scales)

    def forced_only(self, si: int, batch: int, tokens: int, bits_per_token: int,
                    device) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Scale si where nothing is drawn (pruning skips it): (bits `[batch, tokens, d_t]` with the image's
        bits where kept and 0 elsewhere, `[batch, tokens]` bool of the kept tokens or None for all), or None
        when the teacher forces nothing there."""
        if si >= self.num_scales:
            return None
        blank = torch.zeros(batch, tokens, bits_per_token, dtype=torch.uint8, device=device)
        keep = self.keep[si]
        return self.apply(si, blank), None if keep is None else keep.to(device).bool().expand(batch, tokens)

    def keep_mask(self, si: int, batch: int, tokens: int) -> torch.Tensor:
        """`[batch, tokens]` bool: the tokens of scale si that take the image's bits (none past the last
        forced scale). For code that must know the kept tokens before the draw, e.g. a pruning policy."""
        if si >= self.num_scales:
            return torch.zeros(batch, tokens, dtype=torch.bool)
        keep = self.keep[si]
        return torch.ones(batch, tokens, dtype=torch.bool) if keep is None else keep.bool().expand(batch, tokens)

    def apply(self, si: int, drawn_BLd: torch.Tensor) -> torch.Tensor:
        """The bits of scale si after forcing: the image's where kept, the drawn ones elsewhere."""
        if si >= self.num_scales:
            return drawn_BLd
        image = self.bits[si].to(device=drawn_BLd.device, dtype=drawn_BLd.dtype)
        keep = self.keep[si]
        if keep is None:
            return image.expand_as(drawn_BLd).contiguous()
        return torch.where(keep.to(drawn_BLd.device)[..., None], image, drawn_BLd)

    def check(self, tokens_per_scale: Sequence[int], batch: int, bits_per_token: int) -> None:
        """Raise SamplingError unless every forced scale fits the run (token count, bit width, batch)."""
        if self.num_scales > len(tokens_per_scale):
            raise SamplingError(f"teacher forcing covers {self.num_scales} scales but the schedule has "
                                f"{len(tokens_per_scale)}", hint=TEACHER_HINT)
        for si, (bits, keep) in enumerate(zip(self.bits, self.keep)):
            L = tokens_per_scale[si]
            if bits.ndim != 3 or bits.shape[1:] != (L, bits_per_token) or bits.shape[0] not in (1, batch):
                raise SamplingError(f"the image bits of scale {si} are {tuple(bits.shape)} but this run needs "
                                    f"[{batch}, {L}, {bits_per_token}]", hint=TEACHER_HINT)
            if keep is not None and (keep.ndim != 2 or keep.shape[1] != L or keep.shape[0] not in (1, batch)):
                raise SamplingError(f"the token mask of scale {si} is {tuple(keep.shape)} but this run needs "
                                    f"[{batch}, {L}]", hint="make the token masks with regenerate_masks for "
                                                            "the same schedule and batch")


def paste_back(original_BHW3: torch.Tensor, generated_BHW3: torch.Tensor, mask_BHW: torch.Tensor,
               radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The generated picture pasted into the original through the feathered mask: (image, weights), both
    at the original's size.

    `generated` is in Infinity Encode's frame of `original` (scaled to cover the template, centre-cropped):
    it is mapped back into the original's pixels (the inverse scale and offset; no resampling when the
    sizes already agree). `mask` is in the original's frame (resized to it if needed), 1 = regenerated.
    Weights are `feather(mask, radius)`, 0 outside the generated frame; where they are 0 the output is the
    original exactly. Batches: each input holds 1 or B images.
    """
    oh, ow = original_BHW3.shape[1:3]
    H, W = generated_BHW3.shape[1:3]
    nh, nw, top, left = cover_box((oh, ow), (H, W))
    y0, x0 = round(top * oh / nh), round(left * ow / nw)
    gh, gw = min(oh - y0, round(H * oh / nh)), min(ow - x0, round(W * ow / nw))
    generated = generated_BHW3[..., :3].float()
    if (gh, gw) != (H, W):
        generated = F.interpolate(generated.permute(0, 3, 1, 2), size=(gh, gw), mode="bicubic", antialias=True,
                                  align_corners=False).clamp(0, 1).permute(0, 2, 3, 1)
    B = max(original_BHW3.shape[0], generated.shape[0], mask_BHW.shape[0])
    placed = torch.zeros(B, oh, ow, 3, device=generated.device)
    placed[:, y0:y0 + gh, x0:x0 + gw] = generated
    m = mask_BHW.float()
    if tuple(m.shape[-2:]) != (oh, ow):
        m = F.interpolate(m.unsqueeze(1), size=(oh, ow), mode="bilinear", align_corners=False).squeeze(1)
    inside = torch.zeros(1, oh, ow, device=m.device)
    inside[:, y0:y0 + gh, x0:x0 + gw] = 1
    w = (feather(m, radius) * inside).expand(B, oh, ow)
    original = original_BHW3[..., :3].float().expand(B, oh, ow, 3)
    blended = original * (1 - w[..., None]) + placed * w[..., None]
    return torch.where(w[..., None] > 0, blended, original), w
