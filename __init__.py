"""ComfyUI-Infinity: Infinity (FoundationVision) text-to-image as ComfyUI nodes.

Only registers: outside ComfyUI (tests, `python -m infinity_core`) importing this file does nothing.
Exports `comfy_entrypoint` (V3 nodes) and never NODE_CLASS_MAPPINGS, which would disable it.
"""
WEB_DIRECTORY = "./web"
__all__ = ["WEB_DIRECTORY"]

try:
    import comfy_api.latest  # noqa: F401  (present only inside ComfyUI)
except ImportError:
    pass
else:
    from .nodes import comfy_entrypoint

    __all__ += ["comfy_entrypoint"]
