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

from ..infinity_core.downloads import fetch as downloads, official as model_files
from ..infinity_core.errors import CheckpointError, MemoryBudgetError
from ..infinity_core import devices
from ..infinity_core.files.file_kinds import fits_loader
from ..infinity_core.files.loading import (build_tokenizer, build_transformer, storage_cast, tokenizer_state_dict,
                                           transformer_state_dict)
from .types import ModelHandle, TextEncoderHandle, TokenizerHandle

log = logging.getLogger(__name__)

INFINITY_FOLDER = "infinity"
TRANSFORMER_FOLDERS = (INFINITY_FOLDER, "diffusion_models")
TOKENIZER_FOLDERS = (INFINITY_FOLDER, "vae")
TEXT_ENCODER_FOLDERS = ("text_encoders",)
LOADER_KINDS = {"transformer": "infinity_transformer", "tokenizer": "bitwise_tokenizer",
                "text_encoder": "t5_text_encoder"}
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


def _official(folders: tuple[str, ...], kind: str) -> list[model_files.ModelFile]:
    return [m for m in model_files.of_kind(kind) if m.folder in folders]


def list_files(folders: tuple[str, ...], kind: str, *, indexes: bool = False,
               first_shard_only: bool = False) -> list[str]:
    """A loader combo: files of the loader's kind (told by name and header: no transformer list offers a
    tokenizer, T5 or Flux file), `*.index.json` of sharded checkpoints, no lone shards, and the official
    file names even before they are downloaded (the loader can fetch them)."""
    names = []
    for folder in folders:
        candidates = []
        for name in folder_paths.get_filename_list(folder):
            shard = _SHARD.search(name)
            if name.endswith(".json"):
                if indexes and name.endswith(".index.json"):
                    candidates.append(name)
            elif shard is None or (first_shard_only and int(shard.group(1)) == 1):
                candidates.append(name)
        if indexes and folder != INFINITY_FOLDER:
            candidates.extend(_index_files(folder))
        for name in candidates:
            path = folder_paths.get_full_path(folder, name)
            if path is not None and fits_loader(path, LOADER_KINDS[kind], folder == INFINITY_FOLDER):
                names.append(name)
    names.extend(m.name for m in _official(folders, kind))
    return sorted(dict.fromkeys(names))


def find(folders: tuple[str, ...], name: str) -> str | None:
    for folder in folders:
        path = folder_paths.get_full_path(folder, name)
        if path is not None:
            return path
    return None


def download_folder(folder: str) -> Path:
    """Where a download for a ComfyUI model folder goes: its first path, as ComfyUI's own model downloads."""
    return Path(folder_paths.get_folder_paths(folder)[0])


def official_status() -> list[dict]:
    """For the loaders' status line: each official file, whether it is present, and what a download costs."""
    out = []
    for spec in model_files.OFFICIAL.values():
        out.append({"name": spec.name, "folder": spec.folder, "kind": spec.kind, "title": spec.title,
                    "present": find((spec.folder,), spec.name) is not None, "size": model_files.gb(spec.approx_bytes),
                    "exact_size": spec.size, "source": f"huggingface.co/{spec.repo}", "url": spec.url,
                    "into": str(download_folder(spec.folder))})
    return out


def _fetch_official(spec: model_files.ModelFile, node_id) -> str:
    """Download an official file into its ComfyUI folder with a progress bar; Cancel stops it (resumable)."""
    bar = comfy.utils.ProgressBar(1, node_id=node_id)

    def progress(p) -> None:
        bar.update_absolute(p.done, max(p.total, p.done, 1))
        mm.throw_exception_if_processing_interrupted()
    log.info("Infinity: downloading %s (about %s) from %s into %s", spec.name, model_files.gb(spec.approx_bytes),
             spec.repo, download_folder(spec.folder))
    report = downloads.ensure([spec], download_folder, progress)
    text = (f"downloaded {spec.name}: {model_files.gb(report.fetched)} in {report.seconds:.1f} s "
            f"({report.mb_per_s:.1f} MB/s) into {download_folder(spec.folder)}")
    log.info("Infinity: %s", text)
    return text


def resolve(folders: tuple[str, ...], name: str, kind: str, download: bool = False, node_id=None) -> tuple[str, str]:
    """The file's path, downloading an official file first when `download` is on; plus a message for the UI."""
    path = find(folders, name)
    if path is not None:
        return path, ""
    where = " or ".join(f"models/{f}" for f in folders)
    spec = next((m for m in _official(folders, kind) if m.name == name), None)
    if spec is None:
        raise CheckpointError(f"'{name}' was not found in {where}",
                              hint=f"put the file into {where} and refresh the node list (press R)")
    if not download:
        raise CheckpointError(f"'{name}' is an official Infinity file that is not in {where} yet",
                              hint=f"turn on download_missing to fetch it on run (about "
                                   f"{model_files.gb(spec.approx_bytes)} from huggingface.co/{spec.repo}), or put it "
                                   f"there yourself:\n{downloads.manual_instructions([spec], download_folder)}")
    text = _fetch_official(spec, node_id)
    path = find(folders, name)
    if path is None:  # downloaded where ComfyUI does not look (a folder list changed meanwhile)
        raise CheckpointError(f"'{name}' was downloaded into {download_folder(spec.folder)} but is not found there",
                              hint="press R to refresh the model lists and run again")
    return path, text


# ---- loading into ModelPatcher -----------------------------------------------------------------
def core_patcher(module: torch.nn.Module, load_device, offload_device, size: int = 0):
    """The patcher ComfyUI gives its own models: `CoreModelPatcher`, which its main.py rebinds at start to
    `ModelPatcherDynamic` under dynamic VRAM (comfy.ops weights streamed to the GPU per layer, everything else
    put there whole) and leaves the legacy `ModelPatcher` otherwise. Read when a model loads, not at import.
    ComfyUI before dynamic VRAM (0.3.64) has only `ModelPatcher`. As ComfyUI's loaders do, the weights' storage
    dtypes are recorded first (`archive_model_dtypes`, newest ComfyUI), which the streaming sizes its buffers by."""
    archive = getattr(mm, "archive_model_dtypes", None)
    if archive is not None:
        archive(module)
    patcher_class = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    return patcher_class(module, load_device, offload_device, size=size)


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
    patcher = core_patcher(module, load_device, offload_device)
    return ModelHandle(patcher, config, compute, patchify, os.path.basename(path))


def load_tokenizer(path: str) -> TokenizerHandle:
    config, sd = tokenizer_state_dict(path)
    load_device, offload_device = mm.vae_device(), mm.vae_offload_device()
    dtype = mm.vae_dtype(load_device, [torch.float32])  # fp32 unless --bf16-vae etc.: bits are signs of small values
    module = build_tokenizer(config, sd, path=path, dtype=dtype, device=offload_device, ops=comfy.ops.manual_cast)
    patcher = core_patcher(module, load_device, offload_device)
    return TokenizerHandle(patcher, config, dtype, os.path.basename(path))


def _unique_bytes(module: torch.nn.Module) -> int:
    """Weight bytes, each tensor once: ComfyUI sums the state dict, where T5's tied embedding appears twice
    (`shared` and `encoder.embed_tokens`: 132 MB counted twice for flan-t5-xl in fp16)."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


class T5Encoder(torch.nn.Module):
    """Gives the HF module a plain parent: ModelPatcher assigns `.device`, a read-only property on HF models.
    ComfyUI logs this class's name ("Requested to load T5Encoder")."""

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
    from ..infinity_core.files.t5_file import load_t5  # needs transformers; only this loader does
    load_device, offload_device = mm.text_encoder_device(), mm.text_encoder_offload_device()
    # fp32 on the CPU (also under --lowvram, where T5 runs there: fp16 is up to 5x slower); on a GPU ComfyUI's
    # text-encoder dtype (fp16, or its flag)
    dtype = devices.text_encoder_dtype(TEXT_ENCODER_DTYPES[dtype_name], devices.describe(load_device),
                                       comfy_default=mm.text_encoder_dtype(load_device))
    encoder = load_t5(path, tokenizer_dir=_tokenizer_dir(Path(path).parent), dtype=dtype, device=offload_device)
    holder = T5Encoder(encoder.model)
    patcher = core_patcher(holder, load_device, offload_device, size=_unique_bytes(holder))
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


def free_memory(patcher) -> int:
    """Free memory on the patcher's device. The newest ComfyUI asks the patcher (`get_free_memory`): under dynamic
    VRAM it adds what streamed weights occupy and would give up; 0.3.64 has only the device-wide answer."""
    ask = getattr(patcher, "get_free_memory", None)
    return ask(patcher.load_device) if ask is not None else mm.get_free_memory(patcher.load_device)


def intermediate_device() -> torch.device:
    return mm.intermediate_device()


# ---- progress, previews and cancel --------------------------------------------------------------------
def preview_settings() -> tuple[bool, int]:
    """ComfyUI's --preview-method and --preview-size, as core samplers read them: "none" (ComfyUI's default)
    means no previews at all; any other method shows ours (there is no TAESD for Infinity)."""
    from comfy.cli_args import args
    method = getattr(args, "preview_method", None)
    enabled = method is not None and str(getattr(method, "value", method)) != "none"
    return enabled, int(getattr(args, "preview_size", None) or 512)


def progress_callback(total: int, node_id, preview=None):
    """A core-sampler callback: progress bar (+ JPEG preview if ComfyUI shows previews) after every scale,
    then the cancel check. Raising here ends `sample()`, whose `finally` frees the KV caches."""
    bar = comfy.utils.ProgressBar(total, node_id=node_id)
    enabled, size = preview_settings()
    preview = preview if enabled else None

    def callback(step) -> None:
        image = preview(step) if preview is not None else None
        bar.update_absolute(step.index + 1, total, ("JPEG", image, size) if image is not None else None)
        mm.throw_exception_if_processing_interrupted()
    return callback


def step_counter(total: int, node_id):
    """A progress bar for `total` units of work; calling the result marks one done and checks Cancel."""
    bar = comfy.utils.ProgressBar(total, node_id=node_id)

    def step() -> None:
        bar.update(1)
        mm.throw_exception_if_processing_interrupted()
    return step


def hidden_input(node_cls, name: str):
    """A hidden input the schema declares (`unique_id`, `prompt`), or None when run without a server."""
    return getattr(node_cls.hidden, name) if node_cls.hidden is not None else None


def throw_if_interrupted() -> None:
    mm.throw_exception_if_processing_interrupted()
