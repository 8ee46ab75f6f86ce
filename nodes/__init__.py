"""ComfyUI nodes for Infinity (V3 API). ComfyUI imports the pack by file path; imports stay relative."""
from __future__ import annotations

from .node_api import ComfyExtension, io

from . import comfy_glue
from .conditioning import InfinityTextEncode
from .inpaint import InfinityInpaintComposite
from .latents import InfinityDecode, InfinityEncode
from .loaders import InfinityTextEncoderLoader, InfinityTokenizerLoader, InfinityTransformerLoader
from .sampling import InfinitySampler, InfinitySamplerAdvanced

NODES: list[type[io.ComfyNode]] = [
    InfinityTransformerLoader, InfinityTokenizerLoader, InfinityTextEncoderLoader, InfinityTextEncode,
    InfinitySampler, InfinitySamplerAdvanced, InfinityDecode, InfinityEncode, InfinityInpaintComposite,
]


def schedule_tables() -> dict:
    """The scale-schedule tables the web extension's size preview reads (GET /infinity/schedules)."""
    from ..infinity_core import schedules as s
    return {"templates": [[t, [list(g) for g in grids]] for t, grids in s.TEMPLATES.items()],
            "budgets": [[name, n] for name, n in s.PIXEL_BUDGETS.items()],
            "min_side": s.MIN_SIDE, "max_side": s.MAX_SIDE, "max_aspect": s.MAX_ASPECT, "vae_stride": s.VAE_STRIDE}


def register_routes() -> None:
    """Only inside a running ComfyUI server (not in tests); also served under /api/infinity/...."""
    try:
        from aiohttp import web
        from server import PromptServer
        routes = PromptServer.instance.routes
    except (ImportError, AttributeError):
        return
    tables = schedule_tables()

    @routes.get("/infinity/schedules")
    async def infinity_schedules(_request):
        return web.json_response(tables)

    @routes.get("/infinity/model_files")
    async def infinity_model_files(_request):  # the loaders' status line: present or downloaded on run
        return web.json_response(comfy_glue.official_status())


class InfinityExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> InfinityExtension:
    comfy_glue.register_folders()
    register_routes()
    return InfinityExtension()
