"""The BSQ-VAE "bitwise tokenizer": a convolutional encoder/decoder around multi-scale BSQ.

Source: FoundationVision/Infinity `infinity/models/bsq_vae/flux_vqgan.py` (Encoder, Decoder,
ResnetBlock, Downsample, Upsample, AutoEncoder) and `conv.py`. Inference only: no attention
blocks (cnn_attention='no' in every release), GroupNorm, swish, nearest-neighbour upsampling.
Module names keep the reference's `.conv` / `.norm` wrappers so checkpoints load strictly.
Images are `[B, 3, H, W]` in [-1, 1]; latents `[B, d, H/stride, W/stride]`.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops as default_ops
from .. import validation
from .config import VAEConfig
from ..errors import CheckpointError
from .quantizer import quantize_multiscale


class Conv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, ops, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = ops.Conv2d(cin, cout, k, stride=stride, padding=padding)

    def forward(self, x):
        return self.conv(x)


class Normalize(nn.Module):
    def __init__(self, channels: int, ops):
        super().__init__()
        groups = 32 if channels % 32 == 0 else 24  # the reference's rule; widths are multiples of 24 or 32
        self.norm = ops.GroupNorm(groups, channels, eps=1e-6, affine=True)

    def forward(self, x):
        return self.norm(x)


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, ops):
        super().__init__()
        self.norm1, self.conv1 = Normalize(cin, ops), Conv(cin, cout, 3, ops, padding=1)
        self.norm2, self.conv2 = Normalize(cout, ops), Conv(cout, cout, 3, ops, padding=1)
        self.nin_shortcut = Conv(cin, cout, 1, ops) if cin != cout else None

    def forward(self, x):
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class Downsample(nn.Module):
    def __init__(self, ch: int, ops):
        super().__init__()
        self.conv = Conv(ch, ch, 3, ops, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # pad right/bottom only, as the reference


class Upsample(nn.Module):
    def __init__(self, ch: int, ops):
        super().__init__()
        self.conv = Conv(ch, ch, 3, ops, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig, ops):
        super().__init__()
        ch, mult = cfg.base_ch, cfg.encoder_ch_mult
        self.conv_in = Conv(3, ch, 3, ops, padding=1)
        self.down = nn.ModuleList()
        cin = ch
        for level, m in enumerate(mult):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                stage.block.append(ResnetBlock(cin, ch * m, ops))
                cin = ch * m
            if level < cfg.num_down:
                stage.downsample = Downsample(cin, ops)
            self.down.append(stage)
        self.mid = nn.Module()
        self.mid.block_1, self.mid.block_2 = ResnetBlock(cin, cin, ops), ResnetBlock(cin, cin, ops)
        self.norm_out = Normalize(cin, ops)
        self.conv_out = Conv(cin, cfg.codebook_dim, 3, ops, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for stage in self.down:
            for block in stage.block:
                h = block(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid.block_2(self.mid.block_1(h))
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig, ops):
        super().__init__()
        ch, mult = cfg.base_ch, cfg.decoder_ch_mult
        cin = ch * mult[-1]
        self.conv_in = Conv(cfg.codebook_dim, cin, 3, ops, padding=1)
        self.mid = nn.Module()
        self.mid.block_1, self.mid.block_2 = ResnetBlock(cin, cin, ops), ResnetBlock(cin, cin, ops)
        stages = []
        for level in reversed(range(len(mult))):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                stage.block.append(ResnetBlock(cin, ch * mult[level], ops))
                cin = ch * mult[level]
            if 1 <= level <= cfg.num_down:
                stage.upsample = Upsample(cin, ops)
            stages.insert(0, stage)
        self.up = nn.ModuleList(stages)
        self.norm_out = Normalize(cin, ops)
        self.conv_out = Conv(cin, 3, 3, ops, padding=1)

    def forward(self, z):
        h = self.mid.block_2(self.mid.block_1(self.conv_in(z)))
        for stage in reversed(self.up):
            for block in stage.block:
                h = block(h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class BitwiseTokenizer(nn.Module):
    """Image <-> multi-scale bits. `patchify` tokenizers (stride 8) pair 2x2 cells per token."""

    def __init__(self, config: VAEConfig, ops=default_ops, device=None):
        super().__init__()
        self.config = config
        with torch.device(device) if device is not None else nullcontext():
            self.encoder = Encoder(config, ops) if config.has_encoder else None
            self.decoder = Decoder(config, ops)

    @property
    def codebook_dim(self) -> int:
        return self.config.codebook_dim

    @property
    def patchify(self) -> bool:
        return self.config.patchify

    def encode_features(self, image_B3HW: torch.Tensor) -> torch.Tensor:
        """Continuous encoder output `[B, d, H/stride, W/stride]` (float32)."""
        if self.encoder is None:
            raise CheckpointError("this bitwise tokenizer holds only a decoder, so it cannot encode images",
                                  hint="load the full tokenizer file (e.g. infinity_vae_d32reg.pth) for encoding")
        image_B3HW = validation.tokenizer_image(image_B3HW, self.config.patch_size)
        # contiguous: CPU GroupNorm on channels-last input is far less precise (5e-4 vs 1e-6 here)
        features = self.encoder(image_B3HW.contiguous())
        return validation.model_output(features, "the tokenizer's encoder output", features.dtype).float()

    def image_to_bits(self, image_B3HW: torch.Tensor, vae_grids) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(quantised latent `[B, d, H, W]`, VAE-layout bits `[B, 1, h, w, d]` of every scale)."""
        return quantize_multiscale(self.encode_features(image_B3HW), list(vae_grids))

    def decode(self, latent_BdHW: torch.Tensor) -> torch.Tensor:
        """Summed codes -> image in [-1, 1], in the latent's dtype."""
        validation.decoder_latent(latent_BdHW, self.codebook_dim)
        image = self.decoder(latent_BdHW.contiguous())
        return validation.model_output(image, "the decoded image", image.dtype).clamp(-1, 1)
