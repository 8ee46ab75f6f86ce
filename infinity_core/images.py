"""Pixels in and out: decoding latents (whole or tiled), preparing input images, uint8 output.

Layouts: decoder output `[B, 3, H, W]` in [-1, 1]; "rgb01" is ComfyUI's `[B, H, W, 3]` in [0, 1].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import validation
from .errors import ResolutionError
from .model.vae import BitwiseTokenizer


def to_rgb01(decoded_B3HW: torch.Tensor) -> torch.Tensor:
    return ((decoded_B3HW.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)


def to_uint8_bgr(decoded_B3HW: torch.Tensor) -> torch.Tensor:
    """The reference's output: (x + 1) / 2 * 255 truncated to uint8, channels flipped to BGR."""
    return ((decoded_B3HW + 1) / 2).permute(0, 2, 3, 1).mul(255).to(torch.uint8).flip(dims=(3,))


def save_png(images_BHW3: torch.Tensor, out) -> list:
    """Write `[B, H, W, 3]` 0..1 images; a batch gets `_00`, `_01`, ... suffixes."""
    from pathlib import Path

    from PIL import Image
    out, paths = Path(out), []
    for i, img in enumerate(images_BHW3):
        path = out if len(images_BHW3) == 1 else out.with_name(f"{out.stem}_{i:02d}{out.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()).save(path)
        paths.append(path)
    return paths


def cover_box(src_hw: tuple[int, int], size_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """How a `src_hw` picture is fitted to `size_hw`: scaled to (nh, nw) so that it covers it, then
    cropped at (top, left). Images (Infinity Encode) and masks share this geometry so that they line up."""
    (H, W), (h, w) = size_hw, src_hw
    s = max(H / h, W / w)
    nh, nw = max(H, round(h * s)), max(W, round(w * s))
    return nh, nw, (nh - H) // 2, (nw - W) // 2


def from_rgb01(image_BHW3: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """ComfyUI IMAGE -> encoder input `[B, 3, H, W]` in [-1, 1]: scale to cover, centre-crop (as the
    reference's `transform`; bicubic with antialias stands in for PIL's LANCZOS). Grayscale and RGBA
    images are made RGB, broken ones refused (validation.comfy_image)."""
    x = validation.comfy_image(image_BHW3).permute(0, 3, 1, 2).float()
    H, W = size_hw
    h, w = x.shape[-2:]
    if (h, w) != (H, W):
        nh, nw, top, left = cover_box((h, w), size_hw)
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        x = x[..., top:top + H, left:left + W]
    return (x * 2 - 1).contiguous()


def _ramp(n: int, overlap: int, at_start: bool, at_end: bool, device) -> torch.Tensor:
    w = torch.ones(n, device=device)
    ramp = torch.linspace(0, 1, overlap + 2, device=device)[1:-1]
    if not at_start and overlap:
        w[:overlap] = ramp
    if not at_end and overlap:
        w[-overlap:] = ramp.flip(0)
    return w


def tile_boxes(H: int, W: int, tile: int, overlap: int = 4) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) latent boxes of overlapping tiles covering an H x W grid, in decoding order."""
    step, boxes = tile - overlap, []
    for y in range(0, max(H - overlap, 1), step):
        for x in range(0, max(W - overlap, 1), step):
            y1, x1 = min(y + tile, H), min(x + tile, W)
            boxes.append((max(0, y1 - tile), y1, max(0, x1 - tile), x1))
    return boxes


@torch.no_grad()
def decode_tiled(vae: BitwiseTokenizer, latent_BdHW: torch.Tensor, tile: int = 32, overlap: int = 4,
                 on_tile=None) -> torch.Tensor:
    """Decode in overlapping latent tiles blended linearly: bounded memory for large images.

    GroupNorm statistics are per tile, so seams are possible where tiles differ; full decoding is exact.
    `on_tile()` is called after each tile (progress; it may raise to cancel).
    """
    if tile <= overlap:
        raise ResolutionError(f"tile size {tile} must be larger than the tiles' overlap ({overlap} latent cells)",
                              hint="use a tile size of 8 or more (32 is a good start), or 0 to decode whole")
    validation.decoder_latent(latent_BdHW, vae.codebook_dim)
    B, _, H, W = latent_BdHW.shape
    if H <= tile and W <= tile:
        return vae.decode(latent_BdHW)
    f = vae.config.patch_size
    out = torch.zeros(B, 3, H * f, W * f, device=latent_BdHW.device)
    weight = torch.zeros(1, 1, H * f, W * f, device=latent_BdHW.device)
    for y0, y1, x0, x1 in tile_boxes(H, W, tile, overlap):
        part = vae.decode(latent_BdHW[..., y0:y1, x0:x1]).float()
        wy = _ramp((y1 - y0) * f, overlap * f, y0 == 0, y1 == H, out.device)
        wx = _ramp((x1 - x0) * f, overlap * f, x0 == 0, x1 == W, out.device)
        w2 = wy[:, None] * wx[None, :]
        out[..., y0 * f:y1 * f, x0 * f:x1 * f] += part * w2
        weight[..., y0 * f:y1 * f, x0 * f:x1 * f] += w2
        if on_tile is not None:
            on_tile()
    return (out / weight).clamp(-1, 1)


def preview_rgb(summed_Bd1HW: torch.Tensor, max_side: int = 256) -> torch.Tensor:
    """A cheap picture of the running latent (no decoder): the first three channels' projection,
    normalised per image, upsampled. `[B, h, w, 3]` in [0, 1]; good enough to watch structure form."""
    z = summed_Bd1HW.float().squeeze(2)
    d = z.shape[1]
    # fixed pseudo-random projection: identical across runs, no learned weights needed
    g = torch.Generator().manual_seed(d)
    proj = torch.randn(3, d, generator=g).to(z.device)
    rgb = torch.einsum("bdhw,cd->bchw", z, proj)
    lo = rgb.amin(dim=(2, 3), keepdim=True)
    hi = rgb.amax(dim=(2, 3), keepdim=True)
    rgb = (rgb - lo) / (hi - lo).clamp_min(1e-6)
    h, w = rgb.shape[-2:]
    scale = max(1, max_side // max(h, w))
    # copied small, enlarged on the host: nearest-neighbour only repeats pixels, so nothing changes but
    # the bytes sent (2B at 1M: 48 KiB per scale instead of 3 MiB)
    rgb = F.interpolate(rgb.cpu(), scale_factor=scale, mode="nearest")
    return rgb.permute(0, 2, 3, 1)
