"""Infinity (FoundationVision, CVPR 2025) inference in pure PyTorch: no flash-attn, no CUDA-only code.

Loads the released checkpoints unchanged and reproduces the reference sampler. Never imports
ComfyUI; the pack's `nodes/` wrap this package.
"""
from .model.conditioning import TextEmbedding
from .model.config import INFINITY_PRESETS, VAE_PRESETS, InfinityConfig, VAEConfig
from .errors import (CheckpointError, IncompatibleModelsError, InfinityError, MemoryBudgetError, PromptError,
                     ResolutionError, SamplingError)
from .files.loading import load_tokenizer, load_transformer, pair
from .sampling.sampler import SampleResult, SamplerSettings, ScaleProgress, make_generators, sample
from .schedules import PIXEL_BUDGETS, TEMPLATE_RATIOS, ScaleSchedule, nearest_template, schedule_for_size
from .model.transformer import InfinityTransformer
from .model.vae import BitwiseTokenizer

__all__ = [
    "TextEmbedding", "INFINITY_PRESETS", "VAE_PRESETS", "InfinityConfig", "VAEConfig", "CheckpointError",
    "IncompatibleModelsError", "InfinityError", "MemoryBudgetError", "PromptError", "ResolutionError", "SamplingError",
    "load_tokenizer", "load_transformer", "pair", "SampleResult", "SamplerSettings", "ScaleProgress",
    "make_generators", "sample", "PIXEL_BUDGETS", "TEMPLATE_RATIOS", "ScaleSchedule", "nearest_template",
    "schedule_for_size", "InfinityTransformer", "BitwiseTokenizer",
]
