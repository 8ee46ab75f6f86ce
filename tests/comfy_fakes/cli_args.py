"""Fake `comfy.cli_args`: the preview flags the pack reads (`--preview-method`, `--preview-size`), with
ComfyUI 0.3.64's defaults (no previews, 512 px)."""
from __future__ import annotations

import enum
from types import SimpleNamespace


class LatentPreviewMethod(enum.Enum):
    NoPreviews = "none"
    Auto = "auto"
    Latent2RGB = "latent2rgb"
    TAESD = "taesd"


args = SimpleNamespace(preview_method=LatentPreviewMethod.NoPreviews, preview_size=512)


def reset() -> None:
    args.preview_method, args.preview_size = LatentPreviewMethod.NoPreviews, 512
