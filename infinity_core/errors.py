"""Errors a user can act on: each says what went wrong, where (file or setting), and a hint."""
from __future__ import annotations


class InfinityError(Exception):
    """Base class. `str(err)` is the full message: what, where, and a HINT line."""

    def __init__(self, message: str, *, hint: str = "", path: str | None = None):
        self.message, self.hint, self.path = message, hint, path
        text = message if path is None else f"{message} ({path})"
        if hint:
            text += f"\nHINT: {hint}"
        super().__init__(text)


class CheckpointError(InfinityError):
    """A file that is not a usable Infinity transformer / bitwise tokenizer / T5 encoder."""


class IncompatibleModelsError(InfinityError):
    """Two models that cannot work together (e.g. a d16 tokenizer with a d32 transformer)."""


class ResolutionError(InfinityError):
    """A size, budget or schedule Infinity cannot generate."""


class PromptError(InfinityError):
    """An unusable prompt (empty, or text features of the wrong width)."""


class MemoryBudgetError(InfinityError):
    """A run whose estimated memory exceeds what the device has; refused before allocating."""


class SamplingError(InfinityError):
    """Sampler settings that cannot work (lists too short, bad cfg insertion layer, ...)."""


class InputError(InfinityError):
    """Data handed to the core that it cannot use: an image, latent or text features of the wrong
    shape, channels or dtype, or holding NaN / infinite values (see validation.py)."""


class NumericalError(InfinityError):
    """NaN or infinity produced inside a model (bit logits, encoder features, decoded pixels): usually
    float16 overflow, else damaged weights or extreme settings."""


class DownloadError(InfinityError):
    """A model file that could not be fetched, verified or written (offline, full disk, bad bytes, ...)."""
