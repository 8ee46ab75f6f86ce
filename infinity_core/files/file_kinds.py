"""What a model file is, told cheaply: from its name, a safetensors header or a shard index (no tensor
data is read). Used to list only the right files in each loader and to check a tokenizer against a
transformer before sampling. Results are cached per (path, size, mtime).
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import torch

from .checkpoints import (PICKLE_SUFFIXES, detect_kind, read_file, read_weight_map, remap_vae_keys,
                          safetensors_header_length, unwrap_state_dict)
from ..model.config import VAEConfig, vae_config_from_state_dict
from ..errors import CheckpointError

_TOKENIZER_NAME = re.compile(r"vae|tokeni[sz]er|bsq", re.IGNORECASE)


def _header(path: Path) -> dict | None:
    try:
        with open(path, "rb") as f:
            n = safetensors_header_length(f.read(8))
            if n is None:
                return None
            header = json.loads(f.read(n))
    except (OSError, ValueError):
        return None
    return header if isinstance(header, dict) else None


@lru_cache(maxsize=4096)
def _peek(path: str, size: int, mtime_ns: int) -> tuple[str, ...] | None:
    p = Path(path)
    if p.name.endswith(".index.json"):
        try:
            return tuple(read_weight_map(p))
        except CheckpointError:
            return None
    if p.suffix in (".safetensors", ".sft"):
        header = _header(p)
        return None if header is None else tuple(k for k in header if k != "__metadata__")
    return None


def peek_keys(path) -> tuple[str, ...] | None:
    """Tensor names of a safetensors file or shard index; None for pickles and unreadable files."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return None
    return _peek(str(p), st.st_size, st.st_mtime_ns)


def _hf_folder_type(folder: Path) -> str | None:
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def kind_of(path) -> str | None:
    """"infinity_transformer", "bitwise_tokenizer", "t5_text_encoder", another kind, or None (cannot tell
    cheaply: a pickle). A BSQ tokenizer is told from other VAEs by its quantizer's `lfq` buffers."""
    p = Path(path)
    if (p.parent / "config.json").is_file() and not p.name.endswith(".index.json"):  # a Hugging Face folder
        return "t5_text_encoder" if _hf_folder_type(p.parent) == "t5" else "other"
    keys = peek_keys(p)
    if keys is None:
        return None
    kind = detect_kind(dict.fromkeys(keys))
    if kind == "bitwise_tokenizer" and not any(".lfq." in k or k.startswith("lfq.") for k in keys):
        return "other_vae"
    return kind


def fits_loader(path, loader_kind: str, folder_is_ours: bool) -> bool:
    """Whether a loader of `loader_kind` lists this file. Pickles (no cheap header) go by name, and outside
    models/infinity only when the name says Infinity."""
    p = Path(path)
    kind = kind_of(p)
    if kind is not None:
        return kind == loader_kind
    if p.suffix not in PICKLE_SUFFIXES:
        return False
    if not folder_is_ours and "infinity" not in p.name.lower():
        return False
    named_tokenizer = bool(_TOKENIZER_NAME.search(p.name))
    return {"bitwise_tokenizer": named_tokenizer, "infinity_transformer": not named_tokenizer}.get(loader_kind, False)


def peek_tokenizer_config(path) -> VAEConfig:
    """A tokenizer's architecture from its header (safetensors: shapes only) or a memory-mapped .pth."""
    p = Path(path)
    keys = peek_keys(p)
    if keys is not None:
        header = _header(p) or {}
        sd = {k: torch.empty(v["shape"], device="meta") for k, v in header.items() if k != "__metadata__"}
    else:
        sd = unwrap_state_dict(read_file(p), str(p))  # read_file: weights_only=True, mmap, so tensors are not read
    try:
        return vae_config_from_state_dict(remap_vae_keys(sd))
    except (KeyError, IndexError) as err:
        raise CheckpointError(f"not a bitwise tokenizer (missing {err})", path=str(p),
                              hint="pick the tokenizer file, e.g. infinity_vae_d32reg.pth") from None
