"""Fake `folder_paths`: ComfyUI's folder table and lookups over a temporary base directory."""
from __future__ import annotations

import os
from pathlib import Path

_PT_EXTENSIONS = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
supported_pt_extensions: set[str] = set(_PT_EXTENSIONS)
folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {}
models_dir = ""


def reset(base: Path) -> None:
    """The default table for the folders the pack reads, rooted at `base/models`. As in ComfyUI, the model
    folders share ONE extension set (`supported_pt_extensions`): adding to one folder's adds to all."""
    global models_dir
    models_dir = str(Path(base) / "models")
    supported_pt_extensions.clear()
    supported_pt_extensions.update(_PT_EXTENSIONS)
    folder_names_and_paths.clear()
    for name, dirs in {"checkpoints": ["checkpoints"], "diffusion_models": ["unet", "diffusion_models"],
                       "vae": ["vae"], "text_encoders": ["text_encoders", "clip"], "loras": ["loras"]}.items():
        folder_names_and_paths[name] = ([os.path.join(models_dir, d) for d in dirs], supported_pt_extensions)


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    if folder_name in folder_names_and_paths:
        paths = folder_names_and_paths[folder_name][0]
        if full_folder_path not in paths:
            paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)
    else:
        folder_names_and_paths[folder_name] = ([full_folder_path], set())


def get_folder_paths(folder_name: str) -> list[str]:
    return folder_names_and_paths[folder_name][0][:]


def filter_files_extensions(files, extensions) -> list[str]:
    return sorted(f for f in files if os.path.splitext(f)[-1].lower() in extensions or len(extensions) == 0)


def get_filename_list(folder_name: str) -> list[str]:
    paths, extensions = folder_names_and_paths[folder_name]
    found = set()
    for root in paths:
        for dirpath, _, files in os.walk(root, followlinks=True):
            found.update(os.path.relpath(os.path.join(dirpath, f), root) for f in files)
    return filter_files_extensions(found, extensions)


def get_full_path(folder_name: str, filename: str) -> str | None:
    if folder_name not in folder_names_and_paths:
        return None
    filename = os.path.relpath(os.path.join("/", filename), "/")
    for root in folder_names_and_paths[folder_name][0]:
        full_path = os.path.join(root, filename)
        if os.path.isfile(full_path):
            return full_path
    return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    full_path = get_full_path(folder_name, filename)
    if full_path is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return full_path
