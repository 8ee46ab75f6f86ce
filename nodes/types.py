"""Wire types of the pack: the custom sockets and the handles they carry (the LATENT layout: latent.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..infinity_core.model.conditioning import TextEmbedding
from ..infinity_core.model.config import InfinityConfig, VAEConfig
from .node_api import io

InfinityModel = io.Custom("INFINITY_MODEL")
InfinityVAE = io.Custom("INFINITY_VAE")
InfinityTextEncoder = io.Custom("INFINITY_TEXT_ENCODER")
InfinityConditioning = io.Custom("INFINITY_CONDITIONING")



@dataclass(frozen=True, eq=False)
class ModelHandle:
    """An Infinity transformer under ComfyUI's memory management (`patcher.model` is the module)."""

    patcher: Any
    config: InfinityConfig
    compute_dtype: torch.dtype
    patchify: bool
    name: str

    @property
    def cell_bits(self) -> int:
        """Bits per VAE latent cell this model works with."""
        return self.config.bits_per_token // 4 if self.patchify else self.config.bits_per_token


@dataclass(frozen=True, eq=False)
class TokenizerHandle:
    """A bitwise tokenizer (BSQ VAE) under ComfyUI's memory management."""

    patcher: Any
    config: VAEConfig
    dtype: torch.dtype
    name: str

    @property
    def patchify(self) -> bool:
        return self.config.patchify


@dataclass(frozen=True, eq=False)
class TextEncoderHandle:
    """A T5 encoder: `encoder` is the core T5TextEncoder, `patcher` wraps its HF module."""

    patcher: Any
    encoder: Any
    name: str


@dataclass(frozen=True, eq=False)
class Conditioning:
    """Encoded prompt(s) on the CPU; `embedding is None` marks an empty prompt (use the learned null text)."""

    embedding: TextEmbedding | None
    prompt: str

    @property
    def empty(self) -> bool:
        return self.embedding is None
