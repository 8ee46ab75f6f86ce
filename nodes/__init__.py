"""ComfyUI nodes for Infinity (V3 API). ComfyUI imports the pack by file path; imports stay relative."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import comfy_glue
from .conditioning import InfinityTextEncode
from .latents import InfinityDecode, InfinityEncode
from .loaders import InfinityTextEncoderLoader, InfinityTokenizerLoader, InfinityTransformerLoader
from .sampling import InfinitySampler, InfinitySamplerAdvanced

NODES: list[type[io.ComfyNode]] = [
    InfinityTransformerLoader, InfinityTokenizerLoader, InfinityTextEncoderLoader, InfinityTextEncode,
    InfinitySampler, InfinitySamplerAdvanced, InfinityDecode, InfinityEncode,
]


class InfinityExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> InfinityExtension:
    comfy_glue.register_folders()
    return InfinityExtension()
