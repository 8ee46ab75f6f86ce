"""Random-weight models in the released file layouts: for the self-check, tests and benchmarks.

Weights are drawn as `mean + std * randn` from a seeded generator with scales that keep every
activation in a sensible range, so outputs depend on every tensor (like the reference fixtures).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from .checkpoints import to_reference_keys
from ..model.config import InfinityConfig, VAEConfig
from ..model.transformer import InfinityTransformer
from ..model.vae import BitwiseTokenizer


def _stats(name: str, shape: torch.Size) -> tuple[float, float]:
    if name.endswith("scale_mul_1H11"):
        return math.log(4.0), 0.5
    if "norm" in name and name.endswith("weight") and len(shape) == 1:
        return 1.0, 0.1
    if name.endswith("bias") or name.endswith("ada_gss") or name == "pos_start":
        return 0.0, 0.1
    if name == "cfg_uncond":
        return 0.0, 1.0
    if name.endswith("mat_q") or name.endswith("lvl_embed.weight"):
        return 0.0, 0.5
    fan_in = shape[1:].numel() if len(shape) > 1 else shape[0]
    return 0.0, 1.0 / math.sqrt(fan_in)


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        mean, std = _stats(name, p.shape)
        p.copy_(mean + std * torch.randn(p.shape, generator=g))
        # keys have no bias in Infinity (a zero buffer in the reference, folded into these Linear biases)
        if name.endswith("sa.mat_qkv.bias"):
            p.view(3, -1)[1].zero_()
        elif name.endswith("mat_kv.bias"):
            p.view(2, -1)[0].zero_()
    return module


def random_transformer(config: InfinityConfig, seed: int = 0, dtype=torch.float32, device="cpu") -> InfinityTransformer:
    model = InfinityTransformer(config, device="meta")
    model = model.to_empty(device=device).to(dtype)
    return randomize_(model, seed).eval().requires_grad_(False)


def random_tokenizer(config: VAEConfig, seed: int = 0, dtype=torch.float32, device="cpu") -> BitwiseTokenizer:
    model = BitwiseTokenizer(config, device="meta").to_empty(device=device).to(dtype)
    return randomize_(model, seed).eval().requires_grad_(False)


def transformer_file_state_dict(model: InfinityTransformer,
                                blocks_per_chunk: int | None = None) -> dict[str, torch.Tensor]:
    """The model's weights under the released key names (`block_chunks.{i}.module.{j}`, split biases)."""
    depth = model.config.depth
    chunks = 8 if depth % 8 == 0 and depth >= 16 else (2 if depth % 2 == 0 else 1)  # releases: 8 chunks
    return to_reference_keys(model.state_dict(), blocks_per_chunk or depth // chunks)


def tokenizer_file_state_dict(model: BitwiseTokenizer) -> dict[str, torch.Tensor]:
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    d = model.codebook_dim
    mask = 2 ** torch.arange(d - 1, -1, -1)
    sd["quantizer.lfq.mask"], sd["quantize.lfq.mask"] = mask, mask.clone()
    return sd


def save_reference_files(folder, transformer: InfinityTransformer | None = None,
                         tokenizer: BitwiseTokenizer | None = None, fmt: str = "safetensors") -> dict[str, Path]:
    """Write the models as `.safetensors` (flat) or `.pth` (transformer flat, tokenizer under 'vae')."""
    from safetensors.torch import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, sd in (("transformer", transformer_file_state_dict(transformer) if transformer else None),
                     ("tokenizer", tokenizer_file_state_dict(tokenizer) if tokenizer else None)):
        if sd is None:
            continue
        path = folder / f"{name}.{fmt}"
        if fmt == "safetensors":
            save_file(sd, str(path))
        else:
            torch.save({"vae": sd} if name == "tokenizer" else sd, path)
        out[name] = path
    return out
