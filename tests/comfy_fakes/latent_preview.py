"""Fake `latent_preview` of the newest ComfyUI: the frontend's "Live preview method" applies per prompt.

The server calls `set_preview_method(extra_data.get("preview_method"))` before each prompt: a method name sets
`args.preview_method` for that prompt, anything else puts back the method ComfyUI was started with (here: the
value `args.preview_method` had before the override, which tests set as the launch flag). Samplers read
`args.preview_method` when they run, as before. ComfyUI 0.3.64 has no per-prompt method.
"""
from __future__ import annotations

from . import cli_args

_launch = None  # args.preview_method as started, kept while a prompt overrides it


def set_preview_method(override) -> None:
    global _launch
    if _launch is not None:
        cli_args.args.preview_method, _launch = _launch, None
    methods = {m.value: m for m in cli_args.LatentPreviewMethod}
    if override in methods:
        _launch, cli_args.args.preview_method = cli_args.args.preview_method, methods[override]
