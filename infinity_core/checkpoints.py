"""Reading the released checkpoint files, safely, and turning them into our modules.

Formats (see docs: infinity-reference.md section 3.5 and 4.7):
- transformer: a flat `.pth` state dict (`infinity_2b_reg.pth`), a `.safetensors` with the same
  keys, a sharded folder (`model.safetensors.index.json` + shards, Infinity-8B), or a training
  checkpoint (`trainer.gpt_fsdp`).
- bitwise tokenizer: `.pth` holding `{'vae': state_dict}`, or its content as `.safetensors`.
`.pth` files are read with `torch.load(weights_only=True)`: no code from a file is ever run.
Key surgery happens in exactly two functions, `remap_transformer_keys` and `remap_vae_keys`.
"""
from __future__ import annotations

import argparse
import json
import logging
import pickle
import re
import zipfile
from pathlib import Path

import torch

from .errors import CheckpointError

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_DROPPED_TRANSFORMER_KEYS = ("rope2d_freqs_grid", "lvl_1L", "attn_bias_for_masking",
                             "Infinity_visible_kvlen", "Infinity_invisible_qlen")
_CHUNK_KEY = re.compile(r"^block_chunks\.(\d+)\.module\.(\d+)\.(.*)$")


# ---- reading files ---------------------------------------------------------------------------
def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types (and OSError for I/O)
        raise CheckpointError(f"cannot read safetensors file: {err}", path=str(path),
                              hint="the file is incomplete or corrupt; compare its size with the download "
                                   "page and download it again") from None


def _load_pickle(path: Path):
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"refused to load: the file contains Python objects, not only tensors ({reason})",
                              path=str(path),
                              hint="loading it could run code from the file. Use a .safetensors version of the model, "
                                   "or a plain state-dict .pth from the official release") from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, ValueError, OSError) as err:
        detail = (str(err).splitlines() or [""])[0][:200]
        raise CheckpointError(f"not a readable PyTorch checkpoint ({type(err).__name__}: {detail})", path=str(path),
                              hint="the file is truncated, corrupt, or not a model file; download it again") from None


def _load_sharded(index_path: Path) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (ValueError, KeyError, OSError) as err:
        raise CheckpointError(f"unreadable shard index ({err})", path=str(index_path),
                              hint="the folder should hold model.safetensors.index.json and its shard files") from None
    sd: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        if not shard_path.exists():
            raise CheckpointError(f"shard {shard} listed in the index is missing", path=str(index_path.parent),
                                  hint="download every model-0000N-of-0000M file into this folder")
        part = _load_safetensors(shard_path) if shard.endswith(".safetensors") else _load_pickle(shard_path)
        sd.update(part)
    return sd


def read_file(path) -> dict:
    """Raw content of a checkpoint file or sharded folder (tensors, possibly nested in dicts)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError("file not found", path=str(path), hint="check the path and the model folder")
    if path.is_dir():
        indexes = sorted(path.glob("*.index.json"))
        if indexes:
            return _load_sharded(indexes[0])
        singles = sorted(path.glob("*.safetensors"))
        if len(singles) == 1:
            return _load_safetensors(singles[0])
        raise CheckpointError("folder has no *.index.json and not exactly one .safetensors file", path=str(path),
                              hint="point at the model file itself, or at the Infinity-8B weights folder")
    if path.name.endswith(".index.json"):
        return _load_sharded(path)
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    if path.suffix in PICKLE_SUFFIXES:
        return _load_pickle(path)
    raise CheckpointError(f"unsupported file type '{path.suffix}'", path=str(path),
                          hint="use a .safetensors or .pth file")


def unwrap_state_dict(obj, path: str = "") -> dict[str, torch.Tensor]:
    """Find the state dict inside training/VAE wrappers (`trainer.gpt_fsdp`, `vae`, `state_dict`, ...)."""
    for key in ("trainer", "gpt_fsdp", "vae", "state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return unwrap_state_dict(obj[key], path)
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError("no state dict of tensors found in the file", path=path,
                              hint="this is not a model checkpoint Infinity can use")
    return obj


def _strip_common_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in ("module.", "_orig_mod.", "model."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


# ---- what kind of file is this ---------------------------------------------------------------
def detect_kind(sd: dict) -> str:
    keys = list(sd)
    has = lambda sub: any(sub in k for k in keys)  # noqa: E731
    if has("word_embed.weight") and (has("block_chunks.") or has("blocks.")) and has("cfg_uncond"):
        return "infinity_transformer"
    if has("decoder.conv_in") and (has("decoder.up.") or has("encoder.down.")):
        return "bitwise_tokenizer"
    if has("model.diffusion_model.") or has("first_stage_model."):
        return "stable_diffusion_checkpoint"
    if has("encoder.block.0.layer.0.SelfAttention"):
        return "t5_text_encoder"
    if has("double_blocks.") or has("joint_blocks.") or has("input_blocks."):
        return "diffusion_model"
    return "unknown"


_KIND_HINTS = {
    "bitwise_tokenizer": "this is Infinity's bitwise tokenizer (VAE); load it with the tokenizer loader",
    "infinity_transformer": "this is an Infinity transformer; load it with the transformer loader",
    "stable_diffusion_checkpoint": "this is a Stable Diffusion checkpoint; Infinity needs infinity_2b_reg.pth "
                                   "(or the Infinity-8B weights folder)",
    "t5_text_encoder": "this is a T5 text encoder; load it with the text encoder loader",
    "diffusion_model": "this is another model family's diffusion model; Infinity needs infinity_2b_reg.pth",
    "unknown": "expected an Infinity checkpoint such as infinity_2b_reg.pth, infinity_vae_d32reg.pth",
}


def require_kind(sd: dict, wanted: str, path: str) -> None:
    kind = detect_kind(sd)
    if kind != wanted:
        sample = ", ".join(list(sd)[:4])
        what = {"infinity_transformer": "an Infinity transformer", "bitwise_tokenizer": "an Infinity bitwise tokenizer"}
        raise CheckpointError(f"not {what.get(wanted, wanted)} (looks like: {kind.replace('_', ' ')}; "
                              f"first keys: {sample})", path=path, hint=_KIND_HINTS[kind])


# ---- key surgery -----------------------------------------------------------------------------
def _blocks_per_chunk(keys) -> int:
    js = {int(m.group(2)) for k in keys if (m := _CHUNK_KEY.match(k)) and m.group(1) == "0"}
    return max(js) + 1 if js else 0


def _merge_biases(sd: dict, prefix: str, parts: tuple[str, ...], target: str, width: int):
    tensors = []
    for name in parts:
        t = sd.pop(prefix + name, None)
        tensors.append(t if t is not None else torch.zeros(width, dtype=torch.float32))
    like = tensors[-1]  # v_bias: always in the file, in its storage dtype
    sd[prefix + target] = torch.cat([t.to(like.dtype) for t in tensors])


def remap_transformer_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference key names -> ours. The only transformer key surgery anywhere:

    1. strip `module.` / `_orig_mod.` wrappers and drop non-weight buffers the reference pops;
    2. `block_chunks.{i}.module.{j}.` -> `blocks.{i * per_chunk + j}.` (chunking is a training detail);
    3. fold `q_bias`, `zero_k_bias`, `v_bias` into the Linear biases they are added as
       (`sa.mat_qkv.bias` = [q, 0, v]; `ca.mat_kv.bias` and the pool's = [0, v]);
    4. `scale_mul_1H11` to `[1, H, 1, 1]` whatever layout the file used (issue #117 upstream).
    """
    sd = {k: v for k, v in _strip_common_prefix(dict(sd)).items() if k not in _DROPPED_TRANSFORMER_KEYS}
    per = _blocks_per_chunk(sd)
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        m = _CHUNK_KEY.match(k)
        out[f"blocks.{int(m.group(1)) * per + int(m.group(2))}.{m.group(3)}" if m else k] = v
    for prefix in sorted({k.rsplit("v_bias", 1)[0] for k in out if k.endswith("v_bias")}):
        width = out[prefix + "v_bias"].shape[0]
        if prefix.endswith(".sa."):
            _merge_biases(out, prefix, ("q_bias", "zero_k_bias", "v_bias"), "mat_qkv.bias", width)
        else:
            _merge_biases(out, prefix, ("zero_k_bias", "v_bias"), "mat_kv.bias", width)
    for k in [k for k in out if k.endswith("scale_mul_1H11")]:
        out[k] = out[k].reshape(1, -1, 1, 1)
    return out


_VAE_CONVS = ("conv_in", "conv_out", "conv1", "conv2", "nin_shortcut")
_VAE_NORMS = ("norm1", "norm2", "norm_out")


def _wrapped_vae_name(key: str) -> str:
    module, _, param = key.rpartition(".")
    last = module.rpartition(".")[2]
    if last in _VAE_NORMS:
        module += ".norm"
    elif last in _VAE_CONVS or module.endswith(("downsample.conv", "upsample.conv")):
        module += ".conv"
    return f"{module}.{param}"


def remap_vae_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference tokenizer keys -> ours: drop the `lfq.mask` buffers (a function of d) and accept the
    "flat" names without the `.conv` / `.norm` wrappers, as the reference's `load_cnn` does."""
    return {_wrapped_vae_name(k): v for k, v in _strip_common_prefix(dict(sd)).items() if not k.endswith("lfq.mask")}


# ---- checks ---------------------------------------------------------------------------------
def check_finite(sd: dict[str, torch.Tensor], path: str) -> None:
    native = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    for name, t in sd.items():
        if t.is_floating_point() and not bool(torch.isfinite(t if t.dtype in native else t.float()).all()):
            raise CheckpointError(f"tensor '{name}' contains NaN or infinite values", path=path,
                                  hint="the file is damaged (or saved from a diverged training run); download it again")


def check_keys(model: torch.nn.Module, sd: dict, path: str, what: str) -> None:
    own = model.state_dict()
    expected, found = set(own), set(sd)
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{what} weights do not match the architecture inferred from the file: "
            f"{len(missing)} missing (e.g. {missing[:5]}), {len(unexpected)} unexpected (e.g. {unexpected[:5]})",
            path=path, hint="the file is incomplete, from another model, or a format this version does not know")
    for k in expected:
        if tuple(own[k].shape) != tuple(sd[k].shape):
            raise CheckpointError(f"{what} tensor '{k}' has shape {tuple(sd[k].shape)}, expected "
                                  f"{tuple(own[k].shape)}", path=path,
                                  hint="the file mixes weights of different model sizes")


def cast_floats(sd: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    if dtype is None:
        return sd
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}


def to_reference_keys(sd: dict[str, torch.Tensor], blocks_per_chunk: int) -> dict[str, torch.Tensor]:
    """Inverse of `remap_transformer_keys`: our names -> the released layout (for writing test and
    self-check checkpoints that the reference code, and this loader, read)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        m = re.match(r"^blocks\.(\d+)\.(.*)$", k)
        if m:
            chunk, j = divmod(int(m.group(1)), blocks_per_chunk)
            name = f"block_chunks.{chunk}.module.{j}.{m.group(2)}"
        else:
            name = k
        base = name.rpartition(".")[0] + "."
        if name.endswith("sa.mat_qkv.bias"):
            q, zero_k, vb = v.chunk(3)
            out.update({base[:-len("mat_qkv.")] + "q_bias": q, base[:-len("mat_qkv.")] + "zero_k_bias": zero_k,
                        base[:-len("mat_qkv.")] + "v_bias": vb})
        elif name.endswith("mat_kv.bias"):
            zero_k, vb = v.chunk(2)
            out.update({base[:-len("mat_kv.")] + "zero_k_bias": zero_k, base[:-len("mat_kv.")] + "v_bias": vb})
        else:
            out[name] = v
    return {k: t.contiguous() for k, t in out.items()}
