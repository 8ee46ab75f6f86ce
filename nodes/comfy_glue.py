"""Everything that touches ComfyUI internals: model folders, ModelPatcher loading, memory, progress, cancel.

The other node files only call these functions, so a change in ComfyUI's internals lands here.
"""
from __future__ import annotations

import logging
import os
import re
from collections import Counter
from pathlib import Path

import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import comfy.utils
import folder_paths
import torch

from ..infinity_core.errors import CheckpointError, MemoryBudgetError
from ..infinity_core import devices
from ..infinity_core.loading import (build_tokenizer, build_transformer, storage_cast, tokenizer_state_dict,
                                     transformer_state_dict)
from .types import ModelHandle, TextEncoderHandle, TokenizerHandle

log = logging.getLogger(__name__)

INFINITY_FOLDER = "infinity"
TRANSFORMER_FOLDERS = (INFINITY_FOLDER, "diffusion_models")
TOKENIZER_FOLDERS = (INFINITY_FOLDER, "vae")
TEXT_ENCODER_FOLDERS = ("text_encoders",)
_SHARD = re.compile(r"-(\d+)-of-\d+\.[A-Za-z0-9]+$")
WEIGHT_DTYPES = {"default": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
                 "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
TEXT_ENCODER_DTYPES = {"default": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ---- model folders -----------------------------------------------------------------------------
def register_folders() -> None:
    """`models/infinity` for transformers and tokenizers, merged with paths the user configured
    (extra_model_paths.yaml is applied before packs load); `.json` lists sharded checkpoints' indexes."""
    folder_paths.add_model_folder_path(INFINITY_FOLDER, os.path.join(folder_paths.models_dir, INFINITY_FOLDER))
    extensions = folder_paths.folder_names_and_paths[INFINITY_FOLDER][1]
    extensions.update(set(folder_paths.supported_pt_extensions) | {".json"})


def _index_files(folder: str) -> list[str]:
    found = []
    for root in folder_paths.get_folder_paths(folder):
        base = Path(root)
        for path in [*base.glob("*.index.json"), *base.glob("*/*.index.json")]:
            found.append(path.relative_to(base).as_posix())
    return found


def list_files(folders: tuple[str, ...], *, indexes: bool = False, first_shard_only: bool = False) -> list[str]:
    """Weight files for a loader combo: checkpoint files, `*.index.json` of sharded ones, no lone shards."""
    names = []
    for folder in folders:
        for name in folder_paths.get_filename_list(folder):
            shard = _SHARD.search(name)
            if name.endswith(".json"):
                if indexes and name.endswith(".index.json"):
                    names.append(name)
            elif shard is None or (first_shard_only and int(shard.group(1)) == 1):
                names.append(name)
        if indexes and folder != INFINITY_FOLDER:
            names.extend(_index_files(folder))
    return sorted(dict.fromkeys(names))


def resolve(folders: tuple[str, ...], name: str) -> str:
    for folder in folders:
        path = folder_paths.get_full_path(folder, name)
        if path is not None:
            return path
    where = " or ".join(f"models/{f}" for f in folders)
    raise CheckpointError(f"'{name}' was not found in {where}",
                          hint=f"put the file into {where} and refresh the node list (press R)")


# ---- loading into ModelPatcher -----------------------------------------------------------------
def _file_dtype(sd: dict[str, torch.Tensor]) -> torch.dtype:
    counts = Counter()
    for t in sd.values():
        if t.is_floating_point():
            counts[t.dtype] += t.numel()
    return counts.most_common(1)[0][0] if counts else torch.float32


def _dtypes(load_device, requested: torch.dtype | None, params: int, file_dtype: torch.dtype):
    """(storage, compute) of the transformer: ComfyUI picks the storage (its flags, e.g. --fp8_e4m3fn-unet,
    --fp64-unet, or what fits) and answers which 16-bit dtypes the device computes in; the device policy
    adds what the device cannot hold (fp8 / fp64 on MPS) and turns the answers into one compute dtype."""
    info = devices.describe(load_device)
    storage = requested or mm.unet_dtype(load_device, params, [torch.bfloat16, torch.float16, torch.float32],
                                         weight_dtype=file_dtype)
    use_bf16, use_fp16 = mm.should_use_bf16(load_device), mm.should_use_fp16(load_device)
    compute = devices.compute_dtype(info, comfy_bf16=use_bf16, comfy_fp16=use_fp16, storage=storage)
    holds_fp8 = mm.supports_cast(load_device, torch.float8_e4m3fn)  # ComfyUI's table names e4m3fn for "fp8"
    return devices.storage_dtype(storage, info, compute, can_hold=None if holds_fp8 else False), compute


def load_transformer(path: str, weight_dtype: str, spatial_patchify: str) -> ModelHandle:
    config, sd = transformer_state_dict(path)
    load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
    storage, compute = _dtypes(load_device, WEIGHT_DTYPES[weight_dtype], config.num_params(), _file_dtype(sd))
    module = build_transformer(config, storage_cast(sd, storage, compute), path=path, device=offload_device,
                               ops=comfy.ops.manual_cast)
    patchify = {"auto": config.patchify_guess, "on": True, "off": False}[spatial_patchify]
    log.info("Infinity transformer %s: weights %s, compute %s, patchify %s", path, storage, compute, patchify)
    patcher = comfy.model_patcher.ModelPatcher(module, load_device, offload_device)
    return ModelHandle(patcher, config, compute, patchify, os.path.basename(path))


def load_tokenizer(path: str) -> TokenizerHandle:
    config, sd = tokenizer_state_dict(path)
    load_device, offload_device = mm.vae_device(), mm.vae_offload_device()
    dtype = mm.vae_dtype(load_device, [torch.float32])  # fp32 unless --bf16-vae etc.: bits are signs of small values
    module = build_tokenizer(config, sd, path=path, dtype=dtype, device=offload_device, ops=comfy.ops.manual_cast)
    patcher = comfy.model_patcher.ModelPatcher(module, load_device, offload_device)
    return TokenizerHandle(patcher, config, dtype, os.path.basename(path))


def _unique_bytes(module: torch.nn.Module) -> int:
    """Weight bytes, each tensor once: ComfyUI sums the state dict, where T5's tied embedding appears twice
    (`shared` and `encoder.embed_tokens`: 132 MB counted twice for flan-t5-xl in fp16)."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


class _T5Holder(torch.nn.Module):
    """Gives the HF module a plain parent: ModelPatcher assigns `.device`, a read-only property on HF models."""

    def __init__(self, t5: torch.nn.Module):
        super().__init__()
        self.t5 = t5


def comfy_t5_tokenizer_dir() -> Path:
    """The T5 tokenizer ComfyUI ships (`comfy` is a namespace package: no `__file__`)."""
    return Path(next(iter(comfy.__path__))) / "text_encoders" / "t5_tokenizer"


def _tokenizer_dir(folder: Path) -> Path:
    has_own = (folder / "tokenizer.json").is_file() or (folder / "spiece.model").is_file()
    return folder if has_own else comfy_t5_tokenizer_dir()


def load_text_encoder(path: str, dtype_name: str) -> TextEncoderHandle:
    from ..infinity_core.text_encoder import T5TextEncoder  # needs transformers; only this loader does
    load_device, offload_device = mm.text_encoder_device(), mm.text_encoder_offload_device()
    # fp32 on the CPU (also under --lowvram, where T5 runs there: fp16 is up to 5x slower); on a GPU ComfyUI's
    # text-encoder dtype (fp16, or its flag)
    dtype = devices.text_encoder_dtype(TEXT_ENCODER_DTYPES[dtype_name], devices.describe(load_device),
                                       comfy_default=mm.text_encoder_dtype(load_device))
    file = Path(path)
    if (file.parent / "config.json").is_file():
        encoder = T5TextEncoder.from_folder(file.parent, dtype=dtype, device=offload_device,
                                            tokenizer_dir=_tokenizer_dir(file.parent))
    else:
        encoder = T5TextEncoder.from_single_file(file, tokenizer_dir=_tokenizer_dir(file.parent), dtype=dtype,
                                                 device=offload_device)
    holder = _T5Holder(encoder.model)
    patcher = comfy.model_patcher.ModelPatcher(holder, load_device, offload_device, size=_unique_bytes(holder))
    return TextEncoderHandle(patcher, encoder, os.path.basename(path))


# ---- memory ------------------------------------------------------------------------------------
def load_models(patchers: list, memory_required: int, what: str, hint: str, force_full_load: bool = False) -> None:
    """Refuse a job that cannot fit the device at all, else let ComfyUI make room and load the models."""
    device = patchers[0].load_device
    total = mm.get_total_memory(device)
    if memory_required > total:
        raise MemoryBudgetError(f"{what} needs about {_size(memory_required)} of working memory, more than the "
                                f"{_size(total)} this device ({device}) has", hint=hint)
    mm.load_models_gpu(patchers, memory_required=memory_required, force_full_load=force_full_load)


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def free_memory(device) -> int:
    return mm.get_free_memory(device)


def intermediate_device() -> torch.device:
    return mm.intermediate_device()


# ---- progress and cancel -----------------------------------------------------------------------
PREVIEW_SIZE = 512


def progress_callback(total: int, node_id, preview=None):
    """A core-sampler callback: progress bar (+ JPEG preview) after every scale, then the cancel check.
    Raising here ends `sample()`, whose `finally` frees the KV caches."""
    bar = comfy.utils.ProgressBar(total, node_id=node_id)

    def callback(step) -> None:
        image = preview(step) if preview is not None else None
        bar.update_absolute(step.index + 1, total, ("JPEG", image, PREVIEW_SIZE) if image is not None else None)
        mm.throw_exception_if_processing_interrupted()
    return callback


def throw_if_interrupted() -> None:
    mm.throw_exception_if_processing_interrupted()
