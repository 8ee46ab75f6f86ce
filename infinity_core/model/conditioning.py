"""Packed text features, the form the transformer consumes.

The reference keeps a batch of prompts as one `[sum(lens), Ct5]` matrix plus the lengths (what
flash-attn's varlen kernels take). We keep that form because the unconditional branch is defined
on it: the learned null embedding is cut to each prompt's own length.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate

import torch

from ..errors import PromptError

MAX_LENGTH = 512  # T5 tokens per prompt (the reference pads and truncates to this; cfg_uncond has 512 rows)


@dataclass(frozen=True)
class TextEmbedding:
    """`features_NC` rows of prompt b are `features_NC[offsets[b]:offsets[b] + lens[b]]`."""

    features_NC: torch.Tensor
    lens: tuple[int, ...]

    def __post_init__(self):
        if self.features_NC.ndim != 2:
            raise PromptError(f"text features must be [tokens, channels], got {tuple(self.features_NC.shape)}")
        if any(n < 1 for n in self.lens) or sum(self.lens) != self.features_NC.shape[0]:
            raise PromptError(f"text lengths {self.lens} do not add up to {self.features_NC.shape[0]} rows")

    @property
    def batch(self) -> int:
        return len(self.lens)

    @property
    def channels(self) -> int:
        return self.features_NC.shape[1]

    @property
    def offsets(self) -> tuple[int, ...]:
        return tuple(accumulate(self.lens, initial=0))[:-1]

    @classmethod
    def from_single(cls, features_LC: torch.Tensor) -> "TextEmbedding":
        return cls(features_LC, (features_LC.shape[0],))

    @classmethod
    def from_padded(cls, features_BLC: torch.Tensor, lens) -> "TextEmbedding":
        lens = tuple(int(n) for n in lens)
        rows = [features_BLC[b, :n] for b, n in enumerate(lens)]
        return cls(torch.cat(rows, 0), lens)

    @classmethod
    def cat(cls, parts: list["TextEmbedding"]) -> "TextEmbedding":
        return cls(torch.cat([p.features_NC for p in parts], 0), tuple(n for p in parts for n in p.lens))

    def prompt(self, b: int) -> torch.Tensor:
        return self.features_NC[self.offsets[b]: self.offsets[b] + self.lens[b]]

    def repeat(self, times: int) -> "TextEmbedding":
        """Each prompt `times` times in a row: [p0, p0, p1, p1] for times=2 (batch of seeds per prompt)."""
        singles = [TextEmbedding.from_single(self.prompt(b)) for b in range(self.batch)]
        return TextEmbedding.cat([p for p in singles for _ in range(times)])

    def expand_to(self, batch: int) -> "TextEmbedding":
        """Broadcast a single prompt to `batch` images; a batch of the right size is returned as is."""
        if self.batch == batch:
            return self
        if self.batch == 1:
            return self.repeat(batch)
        raise PromptError(f"{self.batch} prompts cannot fill a batch of {batch} images",
                          hint="give one prompt, or one prompt per image")

    def to(self, device=None, dtype=None) -> "TextEmbedding":
        return TextEmbedding(self.features_NC.to(device=device, dtype=dtype), self.lens)

    def padded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`[B, Lmax, C]` zero-padded features and a `[B, Lmax]` bool mask of real tokens."""
        B, Lmax = self.batch, max(self.lens)
        out_BLC = self.features_NC.new_zeros(B, Lmax, self.channels)
        mask_BL = torch.zeros(B, Lmax, dtype=torch.bool, device=self.features_NC.device)
        for b, (start, n) in enumerate(zip(self.offsets, self.lens)):
            out_BLC[b, :n] = self.features_NC[start: start + n]
            mask_BL[b, :n] = True
        return out_BLC, mask_BL

    def null_like(self, cfg_uncond_LC: torch.Tensor) -> "TextEmbedding":
        """The reference's unconditional text: the learned null rows cut to each prompt's length."""
        rows = [cfg_uncond_LC[:n] for n in self.lens]
        return TextEmbedding(torch.cat(rows, 0).to(self.features_NC), self.lens)
