"""The LATENT this pack makes and reads.

LATENT made by this pack: `{"samples": [B, d, H, W] float32 summed codes (the decoder's input),
"infinity": {"bits": [per scale, [B, 1, h, w, d] uint8, VAE layout], "template": float,
"budget": str, "patchify": bool, "codebook_dim": int}}`, plus ComfyUI's optional `"noise_mask"`
(`[M, 1, h, w]`, 1 = regenerate; Set Latent Noise Mask, Infinity Encode's mask) and `"batch_index"`
(Latent From Batch). Core latent nodes copy the dict and keep extra keys without slicing them
(RepeatLatentBatch, LatentFromBatch, LatentBatch), and SaveLatent/LoadLatent drop them, so the bits
are only trusted per image where they still sum to that image's samples (`sampling.image_bits`); other
images are re-quantised from their samples.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..infinity_core import validation
from ..infinity_core.errors import IncompatibleModelsError, ResolutionError
from ..infinity_core.sampling.image_bits import teacher_bits as _core_teacher_bits
from ..infinity_core.schedules import PIXEL_BUDGETS, TEMPLATES, ScaleSchedule, schedule_for_final_grid
from .widgets import about

log = logging.getLogger(__name__)

LATENT_KEY = "infinity"
FOREIGN_LATENT_HINT = ("this LATENT was not made for Infinity (e.g. an SD/Flux latent); make one with "
                       "Infinity Encode or Infinity Sampler")


def pack_latent(samples_BdHW: torch.Tensor, bits: list[torch.Tensor], schedule: ScaleSchedule, patchify: bool,
                device) -> dict:
    info = {"bits": [b.to("cpu", torch.uint8) for b in bits], "template": schedule.template,
            "budget": schedule.budget, "patchify": patchify, "codebook_dim": int(samples_BdHW.shape[1])}
    return {"samples": samples_BdHW.float().to(device), LATENT_KEY: info}


@dataclass(frozen=True, eq=False)
class LatentView:
    """A LATENT read back: its samples, the schedule its grid belongs to, and any stored bits."""

    samples: torch.Tensor
    schedule: ScaleSchedule
    patchify: bool
    bits: list[torch.Tensor] | None
    noise_mask: torch.Tensor | None = None  # [M, h, w] float in [0, 1], any resolution; 1 = regenerate
    batch_index: list[int] | None = None


def read_mask(mask, widget: str) -> torch.Tensor:
    """A MASK (`[h, w]`, `[M, h, w]` or a noise_mask's `[M, 1, h, w]`) as `[M, h, w]` float32 in [0, 1]."""
    ok = isinstance(mask, torch.Tensor) and 2 <= mask.ndim <= 4 and (mask.ndim < 4 or mask.shape[1] == 1)
    if not ok or mask.numel() == 0 or not torch.isfinite(mask).all():
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ResolutionError(f"{widget}: expected a MASK [M, H, W] with values 0..1, got {shape}",
                              hint="connect a MASK (Load Image, Pad Image for Outpainting, a mask editor)")
    return mask.reshape(-1, *mask.shape[-2:]).float().clamp(0, 1)


def _batch_index(latent: dict, batch: int, widget: str) -> list[int] | None:
    index = latent.get("batch_index")
    if index is None:
        return None
    if isinstance(index, (list, tuple)) and len(index) == batch and all(isinstance(i, int) for i in index):
        return [int(i) for i in index]
    log.warning("%s: ignoring a batch_index %r that does not list one index per image (%d)", widget, index, batch)
    return None


def _infinity_info(latent: dict, widget: str) -> dict | None:
    """The LATENT's "infinity" entry if it is complete; a partial or damaged one is ignored like a missing one
    (the schedule is then re-derived from the samples' grid and the bits re-quantised)."""
    info = latent.get(LATENT_KEY)
    if info is None:
        return None
    bits = info.get("bits") if isinstance(info, dict) else None
    if (isinstance(bits, (list, tuple)) and all(isinstance(b, torch.Tensor) and b.ndim == 5 for b in bits)
            and info.get("template") in TEMPLATES and info.get("budget") in PIXEL_BUDGETS
            and isinstance(info.get("patchify"), bool)):
        return info
    log.warning("%s: ignoring an incomplete %r entry of the LATENT; its schedule and bits are re-derived from "
                "its samples", widget, LATENT_KEY)
    return None


def latent_samples(latent, widget: str, bits_per_cell: int, patchify: bool,
                   reader: str) -> tuple[torch.Tensor, dict | None]:
    """The samples of a LATENT for `reader` (a model or tokenizer name) with `bits_per_cell` channels and
    the given spatial patchify, checked; plus its complete "infinity" entry, if any."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor) or samples.ndim != 4:
        shape = None if samples is None else tuple(samples.shape)
        raise ResolutionError(f"{widget}: expected an image LATENT [B, C, H, W], got {shape}", hint=FOREIGN_LATENT_HINT)
    info = _infinity_info(latent, widget)
    if samples.shape[1] != bits_per_cell:
        made_by = "an Infinity model with other bits" if info else "another model family"
        raise IncompatibleModelsError(f"{widget}: the LATENT has {samples.shape[1]} channels but {reader} works "
                                      f"with {bits_per_cell} bits per latent cell (it comes from {made_by})",
                                      hint=FOREIGN_LATENT_HINT if not info else
                                      "encode the image again with the tokenizer that matches this model")
    if info is not None and info["patchify"] != patchify:
        made, works = ("with" if on else "without" for on in (info["patchify"], patchify))
        raise IncompatibleModelsError(f"{widget}: the LATENT was made {made} spatial patchify (2x2 latent cells "
                                      f"per token) but {reader} works {works} it",
                                      hint="use the tokenizer that matches the model, and spatial_patchify auto in "
                                           "the Infinity Transformer Loader")
    with about(widget):
        validation.decoder_latent(samples, bits_per_cell)  # empty, NaN or integer samples
    return samples, info


def read_latent(latent, widget: str, bits_per_cell: int, patchify: bool, reader: str) -> LatentView:
    samples, info = latent_samples(latent, widget, bits_per_cell, patchify, reader)
    hw = tuple(samples.shape[-2:])
    schedule = None
    if info is not None:
        stored = ScaleSchedule(info["template"], info["budget"])
        schedule = stored if stored.vae_grids(patchify)[-1] == hw else None
    schedule = schedule or schedule_for_final_grid(hw, patchify)
    if schedule is None:
        raise ResolutionError(f"{widget}: a {hw[0]}x{hw[1]} latent grid is not the final grid of any Infinity "
                              "aspect-ratio template and pixel budget", hint=FOREIGN_LATENT_HINT)
    bits = info["bits"] if info is not None else None
    mask = latent.get("noise_mask")
    mask = read_mask(mask, f"{widget} (its noise_mask)") if mask is not None else None
    return LatentView(samples, schedule, patchify, list(bits) if bits else None, mask,
                      _batch_index(latent, samples.shape[0], widget))


def teacher_bits(view: LatentView, k: int) -> list[torch.Tensor]:
    """The VAE-layout bits of scales < k for every image of the LATENT (`sampling.image_bits.teacher_bits`)."""
    return _core_teacher_bits(view.samples, view.schedule.vae_grids(view.patchify), view.bits, k)
