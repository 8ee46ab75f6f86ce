"""Fake `comfy.utils`: ProgressBar records every update into UPDATES and calls the global hook, as ComfyUI's does."""
from __future__ import annotations

UPDATES: list[dict] = []
PROGRESS_BAR_HOOK = None


def reset() -> None:
    global PROGRESS_BAR_HOOK
    UPDATES.clear()
    PROGRESS_BAR_HOOK = None


def set_progress_bar_global_hook(function) -> None:
    global PROGRESS_BAR_HOOK
    PROGRESS_BAR_HOOK = function


class ProgressBar:
    def __init__(self, total, node_id=None):
        self.total, self.current, self.node_id, self.hook = total, 0, node_id, PROGRESS_BAR_HOOK

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        UPDATES.append({"value": self.current, "total": self.total, "preview": preview, "node_id": self.node_id})
        if self.hook is not None:
            self.hook(self.current, self.total, preview, node_id=self.node_id)

    def update(self, value):
        self.update_absolute(self.current + value)
