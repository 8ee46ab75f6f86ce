"""Masked editing in the nodes: a LATENT's noise_mask becomes per-token teacher forcing for the sampler,
Infinity Encode stores its optional MASK as the noise_mask, batch_index picks the seeds, and Infinity
Inpaint Composite pastes the result back into the original picture.

ComfyUI's conventions: a MASK is `[M, H, W]` (1 = regenerate), a noise_mask `[M, 1, H, W]`; one mask
serves every image, or there is one per image. Masks are fitted to the latent's frame the way Infinity
Encode fits pictures (masks.fit_mask), so a mask drawn on the original picture lines up.
"""
from __future__ import annotations

import torch
from .node_api import io, ui

from ..infinity_core.errors import SamplingError
from ..infinity_core.sampling.masks import TeacherForcing, fit_mask, paste_back
from ..infinity_core.schedules import ScaleSchedule
from . import comfy_glue as glue
from .latent import LatentView, read_mask, teacher_bits

MASK_BATCH_HINT = "give one mask for every image, or one per image (a mask batch as large as the image batch)"


def masks_for_batch(mask_MHW: torch.Tensor, batch: int, widget: str) -> torch.Tensor:
    if mask_MHW.shape[0] not in (1, batch):
        raise SamplingError(f"{widget}: {mask_MHW.shape[0]} masks for {batch} images", hint=MASK_BATCH_HINT)
    return mask_MHW


# ---- the sampler's side -----------------------------------------------------------------------------
def teacher_for(view: LatentView | None, k: int, batch: int, patchify: bool) -> tuple[TeacherForcing, str]:
    """The teacher forcing of a sampler run and what the node says about it: the first k scales of the image,
    then (with a noise_mask) the image's tokens outside the mask at every scale."""
    if view is None:
        return TeacherForcing(), ""
    if view.noise_mask is None:
        return TeacherForcing.for_image(teacher_bits(view, k), view.schedule, k, patchify=patchify), ""
    mask = masks_for_batch(view.noise_mask, batch, "latent_image (its noise_mask)")
    n = view.schedule.num_scales
    teacher = TeacherForcing.for_image(teacher_bits(view, n), view.schedule, k, mask, patchify)
    last = teacher.keep[-1]
    drawn = 0.0 if last is None else 1 - last.float().mean().item()
    if drawn == 0:
        return teacher, "; the mask regenerates nothing: every token is the image's (is the mask empty?)"
    return teacher, f"; the mask regenerates {drawn:.0%} of the tokens" + (f" from scale {k + 1} on" if k else "")


def seed_indices(view: LatentView | None, batch: int) -> list[int] | None:
    """Latent From Batch's batch_index: image i of the run uses seed + batch_index[i], as ComfyUI's samplers."""
    if view is None or view.batch_index is None:
        return None
    index = view.batch_index
    if len(index) == batch:
        return index
    return [index[0] + i for i in range(batch)] if len(index) == 1 else None


def carry_extras(latent_in: dict | None, latent_out: dict, indices: list[int] | None) -> dict:
    """The output keeps the input's noise_mask (as ComfyUI's KSampler does) and the batch indices it used."""
    if isinstance(latent_in, dict) and latent_in.get("noise_mask") is not None:
        latent_out["noise_mask"] = latent_in["noise_mask"]
    if indices is not None:
        latent_out["batch_index"] = list(indices)
    return latent_out


# ---- Infinity Encode's mask ---------------------------------------------------------------------------
def encode_mask(m: torch.Tensor, image_hw: tuple[int, int], schedule: ScaleSchedule) -> tuple[torch.Tensor, str]:
    """A mask `[M, h, w]` (read_mask) for the encoded picture as the LATENT's noise_mask `[M, 1, H, W]` in the
    latent's frame: resized to the picture (ComfyUI's convention), then scaled and cropped with it."""
    fitted = fit_mask(m, schedule.image_hw, image_hw).unsqueeze(1).to(glue.intermediate_device())
    painted = fitted.mean().item()
    if painted == 0:
        return fitted, ("; the mask is empty, so the sampler will keep every token (Load Image gives an empty mask "
                        "for a picture without transparency)")
    return fitted, f"; mask: {painted:.0%} of the picture to regenerate"


# ---- the composite node -------------------------------------------------------------------------------
class InfinityInpaintComposite(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InfinityInpaintComposite",
            display_name="Infinity Inpaint Composite",
            category="Infinity/latent",
            description="Pastes the regenerated part of a decoded image into the original picture through the "
                        "mask, feathered outwards: pixels farther than `feather` from the mask are the original's "
                        "exactly. Undoes Infinity Encode's scale and centre-crop; the output has the original's size.",
            inputs=[
                io.Image.Input("original", tooltip="The picture you gave Infinity Encode (for outpainting: Pad Image "
                                                   "for Outpainting's image), at its own size."),
                io.Image.Input("generated", tooltip="Infinity Decode's output for the masked run."),
                io.Mask.Input("mask", tooltip="The mask of the run (1 = regenerated), in the original's frame: the "
                                              "one given to Infinity Encode or Set Latent Noise Mask."),
                io.Int.Input("feather", default=16, min=0, max=512, step=1,
                             tooltip="Pixels over which the generated image fades into the original outside the mask "
                                     "(one token is 16 px). Decoding shifts pixels a little everywhere, most near the "
                                     "mask; beyond the feather the original is put back exactly."),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The original with the regenerated part in it.")],
        )

    @classmethod
    def execute(cls, original: torch.Tensor, generated: torch.Tensor, mask, feather: int = 16) -> io.NodeOutput:
        for name, image in (("original", original), ("generated", generated)):
            if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] < 3:
                raise SamplingError(f"{name}: expected an IMAGE [B, H, W, 3]", hint="connect an image")
        m = read_mask(mask, "mask")
        counts = {"original": original.shape[0], "generated": generated.shape[0], "mask": m.shape[0]}
        if len(set(counts.values()) - {1}) > 1:
            listed = ", ".join(f"{name}: {n}" for name, n in counts.items())
            raise SamplingError(f"{listed} images/masks; each input must hold 1 or the same number",
                                hint="give the original and the mask that went into Infinity Encode for this batch")
        image, weights = paste_back(original, generated.to(original.device), m.to(original.device), feather)
        h, w = image.shape[1:3]
        text = (f"{w}x{h} px: {(weights > 0).float().mean().item():.0%} of the pixels from the generated image, "
                f"the rest exactly the original")
        return io.NodeOutput(image.to(glue.intermediate_device()), ui=ui.PreviewText(text))
