"""The one import of ComfyUI's node API for the whole pack.

`comfy_api.v0_0_2` is a pinned API version, there since V3 nodes came (ComfyUI 0.3.48, 2025-07) and still
in the newest (0.38); it re-exports `io`, `ui` and `ComfyExtension` of `comfy_api.latest`, so the classes
are the same either way. Should a later ComfyUI retire that version, the pack falls back to `latest`.
"""
from __future__ import annotations

try:
    from comfy_api.v0_0_2 import ComfyExtension, io, ui
except ImportError:  # a ComfyUI that retired v0_0_2
    from comfy_api.latest import ComfyExtension, io, ui

__all__ = ["ComfyExtension", "io", "ui"]
