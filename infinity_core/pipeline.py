"""Prompt to pixels in one call: what the command line and the self-check run.

The ComfyUI nodes call the same pieces one by one (encode, sample, decode) instead.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from . import validation
from .model.conditioning import TextEmbedding
from .devices import attention_plan_for
from .errors import PromptError, SamplingError
from .images import decode_tiled, from_rgb01, to_rgb01
from .files.loading import pair
from .sampling.masks import TeacherForcing, fit_mask, paste_back
from .sampling.memory import available_bytes, require_memory
from .sampling.sampler import SampleResult, SamplerSettings, make_generators, sample
from .schedules import schedule_for_size
from .sampling.speed import SpeedSettings, run_memory
from .model.transformer import InfinityTransformer
from .model.vae import BitwiseTokenizer

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
    image: torch.Tensor | None = None  # [1 or B, H, W, 3] in 0..1: edit this picture (its aspect sets the size)
    mask: torch.Tensor | None = None   # [1 or B, h, w] in 0..1, 1 = regenerate (with image); resized to the picture
    keep_scales: int = 0               # scales taken whole from the image (image-to-image), the mask after them
    feather: int = 16                  # with a mask: px over which the result fades into the original picture
    speed: SpeedSettings = field(default_factory=SpeedSettings)  # pruning, unguided last scales


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
    if request.image is None:
        if request.mask is not None or request.keep_scales:
            raise SamplingError("a mask or kept scales need an image to take the kept tokens from",
                                hint="give the picture to edit (--image), or drop --mask / --keep-scales")
        schedule, teacher = schedule_for_size(request.width, request.height, request.budget), None
    else:
        schedule, teacher = _image_teacher(tokenizer, request, layout.patchify, device)
    settings, pruning = request.speed.apply(request.settings, schedule, transformer.config.depth)
    if pruning is not None:
        log.info("%s", pruning.describe(schedule))
    need = run_memory(transformer.config, schedule, request.batch, settings, compute_dtype, pruning,
                      attention=attention_plan_for(torch.device(device), compute_dtype))
    require_memory(need, available_bytes(device), f"sampling {request.batch} image(s) at {schedule.image_hw}",
                   hint="lower the batch size or the pixel budget")
    result: SampleResult = sample(
        transformer, text, schedule, generators=make_generators(request.seed, request.batch),
        settings=settings, patchify=layout.patchify, negative=negative, batch=request.batch,
        teacher=teacher, device=device, compute_dtype=compute_dtype, callback=callback, pruning=pruning)
    latent = result.summed_codes.to(device)
    decoded = decode_tiled(tokenizer, latent, tile) if tile else tokenizer.decode(latent)
    images = to_rgb01(decoded)
    if request.mask is not None:  # the original's own pixels outside the feathered mask, at its size
        images = paste_back(request.image.float(), images.cpu(), request.mask.float(), request.feather)[0]
    return images, result


def _image_teacher(tokenizer: BitwiseTokenizer, request: GenerationRequest, patchify: bool, device):
    """The schedule of the picture's own aspect and the teacher forcing from its bits (and mask), as the
    nodes build them: Infinity Encode's scale-and-crop for the picture and the mask alike."""
    image = validation.comfy_image(request.image)
    schedule = schedule_for_size(image.shape[2], image.shape[1], request.budget)
    if not 0 <= request.keep_scales <= schedule.num_scales:
        raise SamplingError(f"keep_scales {request.keep_scales}: the schedule has {schedule.num_scales} scales",
                            hint=f"keep 0..{schedule.num_scales} scales of the image")
    x = from_rgb01(image, schedule.image_hw).to(device)
    bits = [b.cpu() for b in tokenizer.image_to_bits(x, schedule.vae_grids(patchify))[1]]
    mask = None if request.mask is None else fit_mask(request.mask, schedule.image_hw, image.shape[1:3])
    return schedule, TeacherForcing.for_image(bits, schedule, request.keep_scales, mask, patchify)
