"""Fake `comfy_api.latest.ui` (only PreviewText)."""
from __future__ import annotations


class PreviewText:
    def __init__(self, value: str, **kwargs):
        self.value = value

    def as_dict(self) -> dict:
        return {"text": (self.value,)}
