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
from pathlib import Path, PurePosixPath, PureWindowsPath

import torch

from ..errors import CheckpointError
from ..validation import all_finite

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


# torch's weights-only unpickler says this when a file asks for code (a global, a call, an object) it does not allow
_CODE_REFUSAL = re.compile(r"GLOBAL (\S+)|reduce for unrecognized function|create new object")


def _load_pickle(path: Path):
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        asked = _CODE_REFUSAL.search(str(err))
        if asked is None:  # e.g. "Unsupported operand": a damaged pickle stream, not a request for code
            raise _unreadable_pickle(path, err) from None
        reason = f"it names {asked.group(1)}" if asked.group(1) else asked.group(0)
        raise CheckpointError(f"refused to load: the file contains Python objects, not only tensors ({reason})",
                              path=str(path),
                              hint="loading it could run code from the file. Use a .safetensors version of the model, "
                                   "or a plain state-dict .pth from the official release") from None
    except Exception as err:  # a damaged stream makes the unpickler raise anything (IndexError, ...)
        raise _unreadable_pickle(path, err) from None


def _unreadable_pickle(path: Path, err: Exception) -> CheckpointError:
    detail = (str(err).splitlines() or [""])[0][:200]
    return CheckpointError(f"not a readable PyTorch checkpoint ({type(err).__name__}: {detail})", path=str(path),
                           hint="the file is truncated, corrupt, or not a model file; download it again")


MAX_INDEX_BYTES = 64 * 2**20  # Infinity-8B's index is about 100 KB: a bigger "index" is not one


SAFETENSORS_HEADER_LIMIT = 100_000_000  # safetensors' own limit on the JSON header


def safetensors_header_length(first8: bytes) -> int | None:
    """The JSON header length a safetensors file's first 8 bytes announce; None when implausible (the one
    check every reader of raw headers shares: file kinds, the T5 encoder-half download)."""
    if len(first8) != 8:
        return None
    n = int.from_bytes(first8, "little")
    return n if 0 < n <= SAFETENSORS_HEADER_LIMIT else None


def read_weight_map(index_path: Path) -> dict[str, str]:
    """The index's `weight_map` (tensor name -> shard file), checked to be one."""
    try:
        if index_path.stat().st_size > MAX_INDEX_BYTES:
            raise ValueError(f"{index_path.stat().st_size:,} bytes, too big for an index")
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (ValueError, OSError, RecursionError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CheckpointError(f"unreadable shard index ({str(err)[:200]})", path=str(index_path),
                              hint="the folder should hold model.safetensors.index.json and its shard files") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if (not isinstance(weight_map, dict) or not weight_map
            or not all(isinstance(v, str) for v in weight_map.values())):
        raise CheckpointError("the shard index has no 'weight_map' from tensor names to shard file names",
                              path=str(index_path), hint="the index file is damaged; download it again")
    return weight_map


def _in_hf_cache(real: Path, folder: Path) -> bool:
    """A Hugging Face cache snapshot: `<repo>/snapshots/<rev>/f` links to `<repo>/blobs/<hash>`."""
    return real.parent.name == "blobs" and folder.is_relative_to(real.parent.parent / "snapshots")


def shard_path(index_path: Path, name: str) -> Path:
    """The file an index names, which must lie inside the index's folder: an absolute name, a `..` or a
    symlink that leads out of it is refused (an index from the internet must not make us read any file
    on the machine). The one outside target allowed is a Hugging Face cache blob of the same repository."""
    folder = index_path.parent

    def refuse(why: str) -> CheckpointError:
        return CheckpointError(f"the shard index names '{name[:200]}', {why}", path=str(index_path),
                               hint="an index may only name shard files in its own folder; this one is damaged or "
                                    "crafted: download the model folder again from its official page")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not parts or PurePosixPath(name).is_absolute() or PureWindowsPath(name).anchor or ".." in parts \
            or "\0" in name:
        raise refuse("a path outside the index's folder")
    path = folder.joinpath(*parts)
    try:
        real, root = path.resolve(), folder.resolve()
    except (OSError, RuntimeError):  # a symlink loop, a name too long
        raise refuse("a path that does not resolve") from None
    if not real.is_relative_to(root) and not _in_hf_cache(real, root):
        raise refuse(f"a link to {real}, outside the index's folder")
    return path


def _load_sharded(index_path: Path) -> dict[str, torch.Tensor]:
    """All shards an index names, each read once; a tensor in two shards, or missing from the shard the
    index names, is refused (a mix of two downloads)."""
    weight_map = read_weight_map(index_path)
    shards: dict[Path, str] = {}
    for name in weight_map.values():
        shards.setdefault(shard_path(index_path, name), name)
    sd: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for shard_file, name in sorted(shards.items()):
        if not shard_file.is_file():
            raise CheckpointError(f"shard {name} listed in the index is missing", path=str(index_path.parent),
                                  hint="download every model-0000N-of-0000M file into this folder")
        if shard_file.suffix != ".safetensors" and shard_file.suffix not in PICKLE_SUFFIXES:
            raise CheckpointError(f"shard {name} is not a .safetensors or .pth file", path=str(index_path),
                                  hint="the index file is damaged; download it again")
        part = _load_safetensors(shard_file) if shard_file.suffix == ".safetensors" else _load_pickle(shard_file)
        if not isinstance(part, dict):
            raise CheckpointError(f"shard {name} holds no tensor dictionary", path=str(shard_file),
                                  hint="download the shard again")
        for key in part:
            if key in sd:
                raise CheckpointError(f"tensor '{key}' is in two shards, {origin[key]} and {name}",
                                      path=str(index_path.parent),
                                      hint="the folder mixes files of two downloads; download it again")
            origin[key] = name
        sd.update(part)
    absent = [k for k in weight_map if k not in sd]
    if absent:
        raise CheckpointError(f"{len(absent)} tensor(s) listed in the index are in no shard, e.g. '{absent[0][:200]}' "
                              f"(listed in {weight_map[absent[0]]})", path=str(index_path.parent),
                              hint="a shard is incomplete or from another download; download the folder again")
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


_WRAPPERS = ("trainer", "gpt_fsdp", "vae", "state_dict", "model", "module")
# dtypes a checkpoint may store floats in (cast on load); integer and bool buffers are kept as they are
FILE_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.float8_e4m3fn,
                     torch.float8_e5m2)


def unwrap_state_dict(obj, path: str = "") -> dict[str, torch.Tensor]:
    """Find the state dict inside training/VAE wrappers (`trainer.gpt_fsdp`, `vae`, `state_dict`, ...)
    and check that it is one: text keys, plain CPU tensors of dtypes a model can hold."""
    for _ in range(len(_WRAPPERS) + 1):  # each wrapper at most once: bounded, whatever the nesting
        key = next((k for k in _WRAPPERS if isinstance(obj, dict) and isinstance(obj.get(k), dict)), None)
        if key is None:
            break
        obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError("no state dict of tensors found in the file", path=path,
                              hint="this is not a model checkpoint Infinity can use")
    for name, t in obj.items():
        problem = ("a non-text key" if not isinstance(name, str) else
                   f"a {t.layout} tensor" if t.layout != torch.strided else
                   "a tensor without data (meta device)" if t.device.type == "meta" else
                   f"of dtype {t.dtype}" if t.is_quantized or t.is_complex() or (
                       t.is_floating_point() and t.dtype not in FILE_FLOAT_DTYPES) else None)
        if problem:
            raise CheckpointError(f"tensor {str(name)[:200]!r} is {problem}, not a plain weight tensor", path=path,
                                  hint="this is not a model checkpoint Infinity can use (weights are float32, bf16, "
                                       "fp16 or fp8 tensors under text names)")
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
    for name, t in sd.items():
        if not all_finite(t):
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
    for k in sorted(expected):
        if tuple(own[k].shape) != tuple(sd[k].shape):
            raise CheckpointError(f"{what} tensor '{k}' has shape {tuple(sd[k].shape)}, expected "
                                  f"{tuple(own[k].shape)}", path=path,
                                  hint="the file mixes weights of different model sizes")
        if own[k].is_floating_point() and not sd[k].is_floating_point():
            raise CheckpointError(f"{what} tensor '{k}' is {sd[k].dtype}, expected floating-point weights",
                                  path=path, hint="the file is damaged or not an Infinity checkpoint")


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
