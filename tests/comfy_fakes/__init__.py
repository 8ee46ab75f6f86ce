"""A small test double of exactly the ComfyUI API the pack uses (CI has no ComfyUI).

`install(base)` returns the modules to put into `sys.modules` (`comfy`, `comfy.*`, `comfy_api`,
`comfy_api.latest`, `folder_paths`, `comfy.cli_args`); the caller installs and removes them (e.g. with
`pytest.MonkeyPatch`). Signatures mirror ComfyUI a125cd84 (0.3.64); behaviour is reduced to what
tests observe: loads (full, or partial as in low-VRAM mode), memory questions, progress updates, the
interrupt flag, model folders. `execution` (not installed: the harness calls it) runs a node as the
server does: widget defaults, conversions and range checks before `execute`, declared hidden inputs.
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

from . import cli_args, execution, folder_paths, latest, model_management, model_patcher, ops, utils  # noqa: F401


def install(base: Path) -> dict[str, ModuleType]:
    """Reset every fake's state for a ComfyUI rooted at `base` (models/ under it) and name the modules."""
    base = Path(base)
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
    comfy_api.latest = latest
    return {"comfy": comfy, "comfy.cli_args": cli_args, "comfy.model_management": model_management,
            "comfy.model_patcher": model_patcher, "comfy.ops": ops, "comfy.utils": utils, "comfy_api": comfy_api,
            "comfy_api.latest": latest,
            "folder_paths": folder_paths}
