"""`python -m infinity_core selfcheck`: the whole pipeline on tiny random weights.

Tells an install problem from a model problem: if this passes, torch, safetensors, the loaders,
the sampler and the decoder work on this machine; a failure with real files is then about them.
"""
from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from pathlib import Path

import torch

from .model.conditioning import TextEmbedding
from .model.config import InfinityConfig, VAEConfig
from .images import save_png
from .files.loading import load_tokenizer, load_transformer, pair
from .pipeline import GenerationRequest, generate
from .files.random_models import random_tokenizer, random_transformer, save_reference_files

log = logging.getLogger(__name__)

TINY = InfinityConfig(depth=4, embed_dim=64, num_heads=2, bits_per_token=16, text_channels=128)
TINY_VAE = VAEConfig(codebook_dim=16, base_ch=24, encoder_ch_mult=(1, 1, 1, 1, 2), decoder_ch_mult=(1, 1, 1, 1, 2))


def stand_in_text(prompt: str, channels: int) -> TextEmbedding:
    """Deterministic stand-in for T5 features (no text encoder in the self-check)."""
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "little")
    g = torch.Generator().manual_seed(seed)
    return TextEmbedding.from_single(torch.randn(len(prompt.split()) + 1, channels, generator=g))


def _step(name: str, fn):
    t0 = time.perf_counter()
    out = fn()
    log.info("ok  %-44s %6.2f s", name, time.perf_counter() - t0)
    return out


def run_selfcheck(out: Path, device=torch.device("cpu")) -> int:
    log.info("torch %s on %s", torch.__version__, device)
    with tempfile.TemporaryDirectory() as tmp:
        files = _step("write random checkpoints (.pth and .safetensors)", lambda: {
            fmt: save_reference_files(Path(tmp) / fmt, random_transformer(TINY, 1), random_tokenizer(TINY_VAE, 2), fmt)
            for fmt in ("pth", "safetensors")})
        transformer = _step("load transformer (.pth, weights_only)", lambda: load_transformer(
            files["pth"]["transformer"], device=device))
        tokenizer = _step("load bitwise tokenizer (.safetensors)", lambda: load_tokenizer(
            files["safetensors"]["tokenizer"], device=device))
    _step("check the pair", lambda: pair(transformer.config, tokenizer.config))
    request = GenerationRequest(stand_in_text("a self check", TINY.text_channels), width=256, height=256,
                                budget="0.06M", seed=7)
    images, result = _step("generate 256x256 (7 scales, cfg 3)", lambda: generate(
        transformer, tokenizer, None, request, device=device))
    again, _ = _step("generate again with the same seed", lambda: generate(transformer, tokenizer, None, request,
                                                                           device=device))
    if not torch.equal(images, again):
        log.error("FAILED: the same seed gave two different images")
        return 1
    _step("encode the image back to bits", lambda: tokenizer.image_to_bits(
        images.permute(0, 3, 1, 2).to(device) * 2 - 1, result.schedule.vae_grids(False)))
    path = save_png(images, out)[0]
    log.info("self-check passed; wrote %s (random weights: expect colourful noise, not a picture)", path)
    return 0
