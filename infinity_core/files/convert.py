"""`convert` (pickle-free .safetensors copies, keys unchanged) and `info` (what is this file?)."""
from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

import torch

from .checkpoints import detect_kind, read_file, unwrap_state_dict
from ..model.config import preset_name
from ..errors import CheckpointError
from .loading import tokenizer_config, transformer_config


def _file_state_dict(path) -> tuple[str, dict[str, torch.Tensor]]:
    sd = unwrap_state_dict(read_file(path), str(path))
    return detect_kind(sd), sd


def write_atomically(dst: Path, write, overwrite: bool = False) -> Path:
    """`write(tmp)` into a temporary file beside `dst`, renamed to `dst` only once complete: a failed or
    interrupted write leaves nothing under the final name, and an existing `dst` is kept unless `overwrite`."""
    dst = Path(dst)
    try:
        fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".partial")
        os.close(fd)
    except OSError as err:
        raise CheckpointError(f"cannot write into the output folder ({err.strerror or err})", path=str(dst.parent),
                              hint="check that the folder exists and that you may write there") from None
    try:
        write(tmp)
        if dst.exists() and not overwrite:  # appeared while we were writing
            raise _exists(dst)
        os.replace(tmp, dst)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, Exception) and not isinstance(err, CheckpointError):
            raise CheckpointError(f"writing failed ({type(err).__name__}: {str(err)[:200]}); nothing was written",
                                  path=str(dst), hint="check the free disk space and try again") from None
        raise
    return dst


def _exists(dst: Path) -> CheckpointError:
    return CheckpointError("the output file already exists; it was left unchanged", path=str(dst),
                           hint="give another output name, or add --overwrite to replace it")


def convert(src, dst=None, *, overwrite: bool = False) -> Path:
    """Write the tensors of `src` to a .safetensors file with the same key names (and the same
    content the reference reads: for a tokenizer, what its .pth holds under 'vae'). An existing `dst`
    is never replaced unless `overwrite`; the file appears only once completely written."""
    from safetensors.torch import save_file
    src = Path(src)
    dst = Path(dst) if dst else src.with_suffix(".safetensors")
    if dst.resolve() == src.resolve():
        raise CheckpointError("source and destination are the same file", path=str(src),
                              hint="give another output name")
    if dst.is_dir():
        raise CheckpointError("the output name is a folder", path=str(dst),
                              hint="give a file name, e.g. model.safetensors")
    if dst.exists() and not overwrite:
        raise _exists(dst)
    kind, sd = _file_state_dict(src)
    if kind not in ("infinity_transformer", "bitwise_tokenizer"):
        raise CheckpointError(f"not an Infinity checkpoint (looks like: {kind.replace('_', ' ')})", path=str(src),
                              hint="convert infinity_2b_reg.pth, the 8B weights or an infinity_vae_*.pth")
    # safetensors refuses shared storage (the tokenizer's two mask buffers alias): store copies
    tensors = {k: v.detach().clone().contiguous() for k, v in sd.items()}
    metadata = {"format": "pt", "infinity_kind": kind, "source": src.name}
    return write_atomically(dst, lambda tmp: save_file(tensors, tmp, metadata=metadata), overwrite)


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
