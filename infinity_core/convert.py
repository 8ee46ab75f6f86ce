"""`convert` (pickle-free .safetensors copies, keys unchanged) and `info` (what is this file?)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from .checkpoints import detect_kind, read_file, unwrap_state_dict
from .config import preset_name
from .errors import CheckpointError
from .loading import tokenizer_config, transformer_config


def _file_state_dict(path) -> tuple[str, dict[str, torch.Tensor]]:
    sd = unwrap_state_dict(read_file(path), str(path))
    return detect_kind(sd), sd


def convert(src, dst=None) -> Path:
    """Write the tensors of `src` to a .safetensors file with the same key names (and the same
    content the reference reads: for a tokenizer, what its .pth holds under 'vae')."""
    from safetensors.torch import save_file
    src = Path(src)
    dst = Path(dst) if dst else src.with_suffix(".safetensors")
    if dst.resolve() == src.resolve():
        raise CheckpointError("source and destination are the same file", path=str(src),
                              hint="give another output name")
    kind, sd = _file_state_dict(src)
    if kind not in ("infinity_transformer", "bitwise_tokenizer"):
        raise CheckpointError(f"not an Infinity checkpoint (looks like: {kind.replace('_', ' ')})", path=str(src),
                              hint="convert infinity_2b_reg.pth, the 8B weights or an infinity_vae_*.pth")
    # safetensors refuses shared storage (the tokenizer's two mask buffers alias): store copies
    tensors = {k: v.detach().clone().contiguous() for k, v in sd.items()}
    save_file(tensors, str(dst), metadata={"format": "pt", "infinity_kind": kind, "source": src.name})
    return dst


def describe(path) -> str:
    kind, sd = _file_state_dict(path)
    dtypes = Counter(str(v.dtype).replace("torch.", "") for v in sd.values())
    params = sum(v.numel() for v in sd.values() if v.is_floating_point())
    lines = [f"file: {path}", f"kind: {kind.replace('_', ' ')}", f"tensors: {len(sd)} ({params:,} values; "
             + ", ".join(f"{n} {d}" for d, n in dtypes.most_common()) + ")"]
    if kind == "infinity_transformer":
        config, _ = transformer_config(sd, path)
        lines += [f"preset: {preset_name(config) or 'custom size'}", f"config: {config}",
                  f"bits per token: {config.bits_per_token} (spatial patchify guess: {config.patchify_guess})"]
    elif kind == "bitwise_tokenizer":
        config, _ = tokenizer_config(sd, path)
        lines += [f"preset: {preset_name(config) or 'custom size'}", f"config: {config}"]
    return "\n".join(lines)
