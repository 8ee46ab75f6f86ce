"""Prompt to pixels in one call: what the command line and the self-check run.

The ComfyUI nodes call the same pieces one by one (encode, sample, decode) instead.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from .conditioning import TextEmbedding
from .errors import PromptError
from .images import decode_tiled, to_rgb01
from .loading import pair
from .memory import available_bytes, require_memory
from .sampler import SampleResult, SamplerSettings, make_generators, sample
from .schedules import schedule_for_size
from .speed import SpeedSettings, run_memory
from .transformer import InfinityTransformer
from .vae import BitwiseTokenizer

log = logging.getLogger(__name__)


@dataclass
class GenerationRequest:
    prompt: str | TextEmbedding
    negative_prompt: str | TextEmbedding = ""
    width: int = 1024
    height: int = 1024
    budget: str = "1M"
    seed: int = 0
    batch: int = 1
    settings: SamplerSettings = field(default_factory=SamplerSettings)
    speed: SpeedSettings = field(default_factory=SpeedSettings)


def encode_text(text_encoder, prompt) -> TextEmbedding | None:
    """A string through T5, or stand-in features as given; '' means "no negative prompt"."""
    if isinstance(prompt, TextEmbedding):
        return prompt
    if not prompt or not prompt.strip():
        return None
    return text_encoder.encode([prompt])


@torch.no_grad()
def generate(transformer: InfinityTransformer, tokenizer: BitwiseTokenizer, text_encoder, request: GenerationRequest,
             *, device="cpu", compute_dtype=torch.float32, callback=None, tile: int | None = None):
    """Returns (`[B, H, W, 3]` float RGB in [0, 1], the SampleResult)."""
    layout = pair(transformer.config, tokenizer.config)
    text = encode_text(text_encoder, request.prompt)
    if text is None:
        raise PromptError("the prompt is empty", hint="describe the picture you want, e.g. 'a red fox in the snow'")
    negative = encode_text(text_encoder, request.negative_prompt)
    if text_encoder is not None and torch.device(device).type != "cpu":
        text_encoder.to("cpu")  # its job is done: give the accelerator's memory to the sampler
    schedule = schedule_for_size(request.width, request.height, request.budget)
    settings, pruning = request.speed.apply(request.settings, schedule, transformer.config.depth)
    if pruning is not None:
        log.info("%s", pruning.describe(schedule))
    require_memory(run_memory(transformer.config, schedule, request.batch, settings, compute_dtype, pruning),
                   available_bytes(device), f"sampling {request.batch} image(s) at {schedule.image_hw}",
                   hint="lower the batch size or the pixel budget")
    result: SampleResult = sample(
        transformer, text, schedule, generators=make_generators(request.seed, request.batch),
        settings=settings, patchify=layout.patchify, negative=negative, batch=request.batch,
        device=device, compute_dtype=compute_dtype, callback=callback, pruning=pruning)
    latent = result.summed_codes.to(device)
    decoded = decode_tiled(tokenizer, latent, tile) if tile else tokenizer.decode(latent)
    return to_rgb01(decoded), result
