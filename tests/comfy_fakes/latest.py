"""Fake `comfy_api.latest`: ComfyExtension plus the `io` and `ui` namespaces."""
from __future__ import annotations

from abc import ABC, abstractmethod

from . import latest_io as io
from . import latest_ui as ui


class ComfyExtension(ABC):
    async def on_load(self) -> None:
        """Never called by ComfyUI 0.3.64 either."""

    @abstractmethod
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        ...


__all__ = ["ComfyExtension", "io", "ui"]
