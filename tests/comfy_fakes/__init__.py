"""A small test double of exactly the ComfyUI API the pack uses (CI has no ComfyUI).

`install(base, generation)` returns the modules to put into `sys.modules` (`comfy`, `comfy.*`, `comfy_api`,
`comfy_api.latest`, `comfy_api.v0_0_2`, `folder_paths`, `comfy.cli_args`); the caller installs and removes them
(e.g. with `pytest.MonkeyPatch`). Two generations of ComfyUI, one double each:
- "0.3.64": ComfyUI a125cd84 (October 2025): eager `comfy.ops` layers, `ModelPatcher` only;
- "0.38": the newest ComfyUI seen (0.38, 2026) with dynamic VRAM on, as on a default NVIDIA install:
  `comfy.memory_management.aimdo_enabled`, `comfy.ops` Linear layers without tensors until their state dict
  is loaded through them, `CoreModelPatcher` = `ModelPatcherDynamic` (comfy.ops weights streamed per call,
  everything else force-loaded), the interrupt checked in every op. "0.38-legacy" is the same ComfyUI
  started with `--disable-dynamic-vram`.
Behaviour is reduced to what tests observe: loads (full, or partial as in low-VRAM mode), memory questions,
progress updates, the interrupt flag, model folders. `execution` (not installed: the harness calls it) runs a
node as the server does: widget defaults, conversions and range checks before `execute`, declared hidden inputs.
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

from . import (cli_args, execution, folder_paths, latest, memory_management, model_management,  # noqa: F401
               model_patcher, ops, utils)

GENERATIONS = ("0.3.64", "0.38")
_ARCHIVE = model_management.archive_model_dtypes


def install(base: Path, generation: str = "0.3.64") -> dict[str, ModuleType]:
    """Reset every fake's state for a ComfyUI of `generation` (GENERATIONS, or "0.38-legacy") rooted at `base`
    (models/ under it) and name the modules."""
    if generation not in (*GENERATIONS, "0.38-legacy"):
        raise ValueError(f"unknown ComfyUI generation {generation!r}")
    base = Path(base)
    newest, dynamic = generation != "0.3.64", generation == "0.38"
    ops.GENERATION = generation
    memory_management.aimdo_enabled = dynamic
    model_patcher.CoreModelPatcher = model_patcher.ModelPatcherDynamic if dynamic else model_patcher.ModelPatcher
    model_management.archive_model_dtypes = _ARCHIVE
    if not newest:
        del model_management.archive_model_dtypes
    folder_paths.reset(base)
    model_management.reset()
    utils.reset()
    cli_args.reset()
    comfy = ModuleType("comfy")
    comfy.__path__ = [str(base / "comfy")]  # a namespace package, as in ComfyUI (no __file__); holds text_encoders/
    comfy.model_management, comfy.model_patcher, comfy.ops, comfy.utils = model_management, model_patcher, ops, utils
    comfy.cli_args = cli_args
    comfy_api = ModuleType("comfy_api")
    comfy_api.__path__ = []
    v0_0_2 = ModuleType("comfy_api.v0_0_2")  # a pinned version: re-exports latest's classes (since 0.3.48)
    v0_0_2.ComfyExtension, v0_0_2.io, v0_0_2.ui = latest.ComfyExtension, latest.io, latest.ui
    comfy_api.latest, comfy_api.v0_0_2 = latest, v0_0_2
    modules = {"comfy": comfy, "comfy.cli_args": cli_args, "comfy.model_management": model_management,
               "comfy.model_patcher": model_patcher, "comfy.ops": ops, "comfy.utils": utils, "comfy_api": comfy_api,
               "comfy_api.latest": latest, "comfy_api.v0_0_2": v0_0_2, "folder_paths": folder_paths}
    if newest:
        comfy.memory_management = memory_management
        modules["comfy.memory_management"] = memory_management
    else:
        del model_patcher.CoreModelPatcher  # 0.3.64 has ModelPatcher only
    return modules
