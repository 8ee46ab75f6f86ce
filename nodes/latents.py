"""Pixels <-> Infinity latents with the bitwise tokenizer: Infinity Decode and Infinity Encode."""
from __future__ import annotations

import torch
from .node_api import io, ui

from ..infinity_core import validation
from ..infinity_core.errors import CheckpointError, ResolutionError
from ..infinity_core.images import decode_tiled, from_rgb01, tile_boxes, to_rgb01
from ..infinity_core.sampling.memory import decode_bytes, encode_bytes
from ..infinity_core.model.quantizer import summed_codes
from ..infinity_core.schedules import MAX_SIDE
from . import comfy_glue as glue
from .inpaint import encode_mask, masks_for_batch
from .latent import latent_samples, pack_latent, read_mask
from .types import InfinityVAE, TokenizerHandle
from .widgets import BUDGETS, about, describe_schedule, schedule_for_widgets

MIN_TILE = 8  # decode_tiled blends 4-cell overlaps


def _in_chunks(vae: TokenizerHandle, batch: int, per_image: int, what: str, hint: str, run) -> list:
    """Load the tokenizer for one image's work, then `run(start, stop)` on as many images at a time as the
    free memory holds, checking for Cancel between chunks."""
    glue.load_models([vae.patcher], per_image, what, hint=hint)
    chunk = max(1, min(batch, glue.free_memory(vae.patcher) // max(per_image, 1)))
    results = []
    for start in range(0, batch, chunk):
        with torch.no_grad():
            results.append(run(start, min(start + chunk, batch)))
        glue.throw_if_interrupted()
    return results


def decode_latent(vae: TokenizerHandle, latent: dict, tile_size: int, node_id=None) -> torch.Tensor:
    """`[B, H, W, 3]` in 0..1 on the intermediate device, one image at a time (tiles one at a time when tiled):
    the progress bar moves per image / tile and Cancel is honoured between them."""
    samples, _ = latent_samples(latent, "samples", vae.config.codebook_dim, vae.patchify, vae.name)
    if 0 < tile_size < MIN_TILE:
        raise ResolutionError(f"tile_size: {tile_size} latent cells is too small for overlapping tiles",
                              hint=f"use 0 (no tiling) or at least {MIN_TILE}")
    B, _, H, W = samples.shape
    f, tile = vae.config.patch_size, tile_size if 0 < tile_size < max(H, W) else 0
    decoder = vae.patcher.model
    glue.load_models([vae.patcher], decode_bytes(vae.config, ((tile or H) * f, (tile or W) * f), 1, vae.dtype),
                     f"decoding a {W * f}x{H * f} image", hint="set tile_size (e.g. 32) to decode in tiles")
    step = glue.step_counter(B * (len(tile_boxes(H, W, tile)) if tile else 1), node_id)
    images = []
    for i in range(B):
        z = samples[i:i + 1].to(vae.patcher.load_device, vae.dtype)
        with torch.no_grad():
            decoded = decode_tiled(decoder, z, tile, on_tile=step) if tile else decoder.decode(z)
        images.append(to_rgb01(decoded).to(glue.intermediate_device()))
        if not tile:
            step()
    return torch.cat(images)


def _target_size(image_hw: tuple[int, int], width: int, height: int) -> tuple[int, int, str]:
    """(width, height, widget) to snap: both widgets, or the image's own size when both are 0."""
    if width and height:
        return width, height, "width/height"
    if width or height:
        given, missing = ("width", "height") if width else ("height", "width")
        raise ResolutionError(f"{given}: {width or height} with {missing} 0; only the aspect ratio of width and "
                              "height is used (the budget sets the size)",
                              hint=f"set {missing} too, or set both to 0 to keep the image's own aspect ratio")
    return image_hw[1], image_hw[0], "image size"


def encode_image(vae: TokenizerHandle, image: torch.Tensor, width: int, height: int, budget: str):
    """An IMAGE scaled/cropped to the schedule's size, quantised scale by scale: (LATENT, schedule).
    Batches are split to what fits in free memory."""
    if not vae.config.has_encoder:
        raise CheckpointError(f"vae: {vae.name} holds only the decoder; encoding needs the encoder too",
                              hint="load the full bitwise tokenizer file (e.g. infinity_vae_d32reg.pth)")
    with about("image"):
        image = validation.comfy_image(image)
    w, h, size_widget = _target_size(tuple(image.shape[1:3]), width, height)
    schedule = schedule_for_widgets(w, h, budget, size_widget)
    grids = schedule.vae_grids(vae.patchify)

    def run(start, stop):
        x = from_rgb01(image[start:stop].float(), schedule.image_hw).to(vae.patcher.load_device, vae.dtype)
        return vae.patcher.model.image_to_bits(x, grids)[1]
    chunks = _in_chunks(vae, image.shape[0], encode_bytes(vae.config, schedule.image_hw, 1, vae.dtype),
                        f"encoding a {schedule.image_hw[1]}x{schedule.image_hw[0]} image",
                        "pick a smaller budget", run)
    bits = [torch.cat(per_scale) for per_scale in zip(*chunks)]
    samples = summed_codes(bits, grids[-1]).squeeze(2)  # exactly what the sampler sums from these bits
    return pack_latent(samples, bits, schedule, vae.patchify, glue.intermediate_device()), schedule


class InfinityDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InfinityDecode",
            display_name="Infinity Decode",
            category="Infinity/latent",
            description="Decodes an Infinity latent into an image with the bitwise tokenizer.",
            inputs=[
                io.Latent.Input("samples", tooltip="Latent from Infinity Sampler or Infinity Encode."),
                InfinityVAE.Input("vae", tooltip="The bitwise tokenizer that matches the transformer."),
                io.Int.Input("tile_size", default=0, min=0, max=512, step=8,
                             tooltip="Decode in tiles of this many latent cells (16 px each, 8 px with Infinity-8B's "
                                     "tokenizer) to save memory; 0 = whole image (exact). Tiles may show faint seams."),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The decoded images.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, samples: dict, vae: TokenizerHandle, tile_size: int = 0) -> io.NodeOutput:
        node_id = glue.hidden_input(cls, "unique_id")
        return io.NodeOutput(decode_latent(vae, samples, tile_size, node_id))


class InfinityEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InfinityEncode",
            display_name="Infinity Encode",
            category="Infinity/latent",
            description="Encodes an image into an Infinity latent (bits of every scale) for image-to-image, and with "
                        "a mask for inpainting/outpainting. The image (and mask) is scaled to cover the chosen "
                        "template size and centre-cropped.",
            inputs=[
                io.Image.Input("image", tooltip="The image to encode."),
                InfinityVAE.Input("vae", tooltip="The bitwise tokenizer (full file, with its encoder)."),
                io.Int.Input("width", default=0, min=0, max=MAX_SIDE, step=16,
                             tooltip="With height: the aspect ratio to encode at, snapped to the nearest template "
                                     "(the budget sets the size). Both 0 = the image's own aspect ratio; setting "
                                     "only one of them is an error."),
                io.Int.Input("height", default=0, min=0, max=MAX_SIDE, step=16,
                             tooltip="Target height; see width."),
                io.Combo.Input("budget", options=BUDGETS, default="auto",
                               tooltip="Pixel budget of the latent (1M is about 1024x1024); auto = the one nearest to "
                                       "the target size (width x height, or the image's own). The sampler uses it."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional: what to regenerate (1 = regenerate, e.g. Load Image's alpha or Pad "
                                      "Image for Outpainting's mask); stored as the latent's noise_mask, fitted with "
                                      "the image. One mask for all images or one per image."),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="Summed codes plus the bits of every scale.")],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, vae: TokenizerHandle, width: int = 0, height: int = 0,
                budget: str = "auto", mask=None) -> io.NodeOutput:
        if mask is not None:  # checked before the work
            mask = masks_for_batch(read_mask(mask, "mask"), image.shape[0] if image.ndim == 4 else 1, "mask")
        latent, schedule = encode_image(vae, image, width, height, budget)
        text = describe_schedule(budget, schedule)
        if mask is not None:
            latent["noise_mask"], note = encode_mask(mask, tuple(image.shape[1:3]), schedule)
            text += note
        return io.NodeOutput(latent, ui=ui.PreviewText(text))
