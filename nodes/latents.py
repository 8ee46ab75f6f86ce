"""Pixels <-> Infinity latents with the bitwise tokenizer: Infinity Decode and Infinity Encode."""
from __future__ import annotations

import torch
from comfy_api.latest import io, ui

from ..infinity_core.errors import CheckpointError, IncompatibleModelsError, ResolutionError
from ..infinity_core.images import decode_tiled, from_rgb01, to_rgb01
from ..infinity_core.memory import decode_bytes, encode_bytes
from ..infinity_core.quantizer import summed_codes
from ..infinity_core.schedules import PIXEL_BUDGETS, schedule_for_size
from . import comfy_glue as glue
from .types import BUDGETS, InfinityVAE, TokenizerHandle, about, latent_samples, pack_latent

MIN_TILE = 8  # decode_tiled blends 4-cell overlaps


def decode_latent(vae: TokenizerHandle, latent: dict, tile_size: int) -> torch.Tensor:
    """`[B, H, W, 3]` in 0..1 on the intermediate device; batches are split to what fits in free memory."""
    samples, info = latent_samples(latent, "samples", vae.config.codebook_dim, vae.name)
    if info is not None and bool(info.get("patchify")) != vae.patchify:
        raise IncompatibleModelsError(f"vae: {vae.name} has stride {vae.config.patch_size}, which does not match the "
                                      "model that made this latent", hint="use the tokenizer that matches the model")
    if 0 < tile_size < MIN_TILE:
        raise ResolutionError(f"tile_size: {tile_size} latent cells is too small for overlapping tiles",
                              hint=f"use 0 (no tiling) or at least {MIN_TILE}")
    B, _, H, W = samples.shape
    f, tile = vae.config.patch_size, tile_size if 0 < tile_size < max(H, W) else 0
    per_image = decode_bytes(vae.config, ((tile or H) * f, (tile or W) * f), 1, vae.dtype)
    glue.load_models([vae.patcher], per_image, f"decoding a {W * f}x{H * f} image",
                     hint="set tile_size (e.g. 32) to decode in tiles")
    device, decoder = vae.patcher.load_device, vae.patcher.model
    chunk = max(1, min(B, glue.free_memory(device) // max(per_image, 1)))
    images = []
    for start in range(0, B, chunk):
        z = samples[start:start + chunk].to(device, vae.dtype)
        with torch.no_grad():
            decoded = decode_tiled(decoder, z, tile) if tile else decoder.decode(z)
        images.append(to_rgb01(decoded).to(glue.intermediate_device()))
        glue.throw_if_interrupted()
    return torch.cat(images)


def encode_image(vae: TokenizerHandle, image: torch.Tensor, width: int, height: int, budget: str):
    """An IMAGE scaled/cropped to the schedule's size, quantised scale by scale: (LATENT, schedule)."""
    if not vae.config.has_encoder:
        raise CheckpointError(f"vae: {vae.name} holds only the decoder; encoding needs the encoder too",
                              hint="load the full bitwise tokenizer file (e.g. infinity_vae_d32reg.pth)")
    if image.ndim != 4 or image.shape[-1] < 3:
        raise ResolutionError(f"image: expected an IMAGE [B, H, W, 3], got {tuple(image.shape)}",
                              hint="connect an image (e.g. from Load Image)")
    if budget not in PIXEL_BUDGETS:
        raise ResolutionError(f"budget: unknown pixel budget {budget!r}", hint=f"use one of {BUDGETS}")
    B, H, W, _ = image.shape
    w, h = (W, H) if width == 0 or height == 0 else (width, height)
    with about("width/height" if (width and height) else "image size"):
        schedule = schedule_for_size(w, h, budget)
    grids = schedule.vae_grids(vae.patchify)
    glue.load_models([vae.patcher], encode_bytes(vae.config, schedule.image_hw, B, vae.dtype),
                     f"encoding {B} image(s)", hint="encode fewer images at once or pick a smaller budget")
    x = from_rgb01(image.float(), schedule.image_hw).to(vae.patcher.load_device, vae.dtype)
    with torch.no_grad():
        _, bits = vae.patcher.model.image_to_bits(x, grids)
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
                             tooltip="Decode in tiles of this many latent cells (16 px each) to save memory; "
                                     "0 = whole image (exact). Tiles may show faint seams."),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The decoded images.")],
        )

    @classmethod
    def execute(cls, samples: dict, vae: TokenizerHandle, tile_size: int = 0) -> io.NodeOutput:
        return io.NodeOutput(decode_latent(vae, samples, tile_size))


class InfinityEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InfinityEncode",
            display_name="Infinity Encode",
            category="Infinity/latent",
            description="Encodes an image into an Infinity latent (bits of every scale) for image-to-image. The "
                        "image is scaled to cover the chosen template size and centre-cropped.",
            inputs=[
                io.Image.Input("image", tooltip="The image to encode."),
                InfinityVAE.Input("vae", tooltip="The bitwise tokenizer (full file, with its encoder)."),
                io.Int.Input("width", default=0, min=0, max=16384, step=16,
                             tooltip="Target width, snapped to the nearest template; 0 (with height 0) = the "
                                     "image's own aspect ratio."),
                io.Int.Input("height", default=0, min=0, max=16384, step=16,
                             tooltip="Target height; see width."),
                io.Combo.Input("budget", options=BUDGETS, default="1M",
                               tooltip="Pixel budget of the latent (1M is about 1024x1024); the sampler uses it."),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="Summed codes plus the bits of every scale.")],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, vae: TokenizerHandle, width: int = 0, height: int = 0,
                budget: str = "1M") -> io.NodeOutput:
        latent, schedule = encode_image(vae, image, width, height, budget)
        h, w = schedule.image_hw
        return io.NodeOutput(latent, ui=ui.PreviewText(f"{w}x{h} px (h/w template {schedule.template}, "
                                                       f"budget {schedule.budget}, {schedule.num_scales} scales)"))
