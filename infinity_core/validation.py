"""Checks at the core's entry points: every caller (command line, nodes, scripts) gets the same named
error with a HINT instead of a deep torch traceback, or a silently wrong picture.

Where they run: `SamplerSettings.validate` (numbers), `sample` (text and schedule on entry, the logits
of every scale), `BitwiseTokenizer` (images in, latents in, and what its encoder and decoder give back),
`images.from_rgb01` (ComfyUI IMAGEs). The nodes call the same functions under `about(widget)` before
loading any model, so their errors also name the socket or widget.

Policies, decided once here:
- NaN / inf settings are refused; so is tau = inf, which divides every logit to 0 and draws uniform
  random bits.
- Images are RGB. One channel (grayscale) is repeated to three. A fourth channel is alpha and is
  dropped, not composited: ComfyUI's own VAE Encode does that (`pixels[..., :3]`), and so does the
  reference's PIL `convert("RGB")`, so a picture gives the same bits here as there; a warning says so
  when the alpha is not opaque. Two, or five and more, channels are refused by count (a mask, or a
  stacked tensor, wired by mistake). Integer images (0..255) are refused: IMAGEs are floats in 0..1.
- NaN / inf pixels are refused, not sanitised: ComfyUI's VAE Encode passes them through (there is no
  IMAGE convention that zeroes them; its nan_to_num calls are fp16 guards inside a few models), and
  zeroing them would hide a broken upstream node behind a plausible but wrong picture. Finite values
  outside 0..1 are left alone, as in ComfyUI.
- NaN / inf coming out of a model (bit logits per scale, encoder features, decoded pixels) is reported
  where it appears, naming fp16 overflow as the likely cause when computing in fp16. Each check is one
  reduction over a tensor the step makes anyway, and never changes a value.
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

import torch

from .errors import IncompatibleModelsError, InputError, NumericalError, PromptError, SamplingError

log = logging.getLogger(__name__)

_NATIVE = (torch.float32, torch.float16, torch.bfloat16, torch.float64)  # isfinite runs on these directly
FP16_HINT = ("float16 overflows on Infinity's activations (GPUs without bf16 support): compute in bf16 or fp32 "
             "(command line: --dtype bf16 or --dtype fp32; ComfyUI: a weight_dtype other than fp16, and no "
             "--fp16-vae / --force-fp16)")


def all_finite(t: torch.Tensor) -> bool:
    """No NaN or infinity in `t` (integer tensors always pass); one reduction."""
    if not t.is_floating_point():
        return True
    return bool(torch.isfinite(t if t.dtype in _NATIVE else t.float()).all())


def _bad_values(t: torch.Tensor) -> str:
    """'3 NaN and 1 infinite of 4096 values': for messages, so only computed once a check failed."""
    t = t if t.dtype in _NATIVE else t.float()
    return f"{int(torch.isnan(t).sum())} NaN and {int(torch.isinf(t).sum())} infinite of {t.numel()} values"


# ---- numbers ---------------------------------------------------------------------------------------
def sampler_numbers(cfgs: Sequence[float], taus: Sequence[float], top_k: int, top_p: float) -> None:
    """The one check of the sampler's numbers: per-scale cfg and tau, and top_p, finite; tau above 0; top_k >= 0;
    top_p in 0..1."""
    checks = (("cfg", cfgs, "cfg mixes the conditional and unconditional logits: 3.0 (Infinity-2B), 1 = off"),
              ("tau", taus, "tau divides the logits: 0.5 (Infinity-2B) or 1.0 (Infinity-8B); an infinite tau "
                            "would draw uniform random bits"),
              ("top_p", [top_p], "0 <= top_p <= 1 (0 = off)"))
    for name, values, hint in checks:
        bad = [(i, v) for i, v in enumerate(values) if not math.isfinite(float(v))]
        if bad:
            where = f" (scale {bad[0][0] + 1})" if len(values) > 1 else ""
            raise SamplingError(f"{name} must be a finite number, got {bad[0][1]}{where}", hint=hint)
    if not 0 <= top_p <= 1 or top_k < 0:
        raise SamplingError(f"top_k {top_k} / top_p {top_p} out of range",
                            hint="top_k >= 0 (1 = greedy per bit), 0 <= top_p <= 1 (0 = off)")
    if min(taus) <= 0:
        raise SamplingError(f"tau must be above 0, got {min(taus)}",
                            hint="tau divides the logits: 0.5 (Infinity-2B) or 1.0 (Infinity-8B)")


# ---- what `sample` is given ------------------------------------------------------------------------
def sample_call(config, text, negative, num_scales: int) -> None:
    """`sample`'s inputs against the model: text features (below), prompt lengths within the learned null
    text, and no more scales than the model has level embeddings."""
    text_features(text, negative, config.text_channels)
    longest = max(max(emb.lens) for emb in (text, negative) if emb is not None)
    if longest > config.text_maxlen:
        raise PromptError(f"a prompt has {longest} text tokens but this model reads at most {config.text_maxlen}",
                          hint="shorten the prompt (the T5 encoder truncates at 512 tokens)")
    if num_scales > config.num_levels:
        raise SamplingError(f"the schedule has {num_scales} scales but this model has only {config.num_levels} "
                            "scale (level) embeddings", hint="pick a smaller pixel budget, or check the model file")


def text_features(text, negative, channels: int) -> None:
    """The prompt's (and negative prompt's) packed T5 features: the model's width, floats, finite."""
    for name, emb in (("text", text), ("negative text", negative)):
        if emb is None:
            continue
        features = emb.features_NC
        if emb.channels != channels:
            raise IncompatibleModelsError(f"the {name} features are {emb.channels} wide but the transformer reads "
                                          f"{channels}-wide T5 features",
                                          hint="encode the prompt with the text encoder the model was trained with "
                                               "(flan-t5-xl for Infinity-2B and 8B)")
        if not features.is_floating_point():
            raise PromptError(f"the {name} features are {features.dtype}, not floating point",
                              hint="pass the text encoder's output (float32) unchanged")
        if not all_finite(features):
            raise PromptError(f"the {name} features contain NaN or infinite values ({_bad_values(features)})",
                              hint="the text encoder overflowed: run T5 in fp32 or bf16 (fp16 T5 is known to "
                                   "overflow); if it already is, re-download the text encoder")


# ---- images ----------------------------------------------------------------------------------------
def _as_rgb(x: torch.Tensor, dim: int, layout: str) -> torch.Tensor:
    """Three channels along `dim`: grayscale repeated, alpha dropped (see the module docstring)."""
    n = x.shape[dim]
    if n == 3:
        return x
    if n == 1:
        return x.expand(*[3 if d == dim % x.ndim else -1 for d in range(x.ndim)])
    if n == 4:
        if bool((x.narrow(dim, 3, 1) < 1).any()):
            log.warning("the image has transparent pixels; its alpha channel is dropped (as ComfyUI's VAE Encode "
                        "does) and the colours under it are encoded")
        return x.narrow(dim, 0, 3)
    raise InputError(f"the image has {n} channels ({layout} {tuple(x.shape)}); expected 3 (RGB), 1 (grayscale) "
                     "or 4 (RGBA, alpha dropped)",
                     hint="connect an IMAGE (e.g. from Load Image); a MASK needs Convert Mask to Image first")


def _pixel_values(x: torch.Tensor, layout: str) -> None:
    if not x.is_floating_point():
        raise InputError(f"the image is {x.dtype}, expected floating-point pixels ({layout})",
                         hint="IMAGEs are floats in 0..1; divide 8-bit pixel values by 255")
    if not all_finite(x):
        raise InputError(f"the image contains NaN or infinite pixels ({_bad_values(x)})",
                         hint="an upstream node produced invalid pixels; check the nodes that made this image")


def comfy_image(image_BHWC: torch.Tensor) -> torch.Tensor:
    """A ComfyUI IMAGE `[B, H, W, C]` as `[B, H, W, 3]` floats, checked (any size: Infinity Encode rescales)."""
    layout = "[B, H, W, C]"
    if not isinstance(image_BHWC, torch.Tensor) or image_BHWC.ndim != 4:
        shape = tuple(image_BHWC.shape) if isinstance(image_BHWC, torch.Tensor) else type(image_BHWC).__name__
        raise InputError(f"expected an IMAGE {layout}, got {shape}",
                         hint="connect an image (e.g. from Load Image); a MASK [B, H, W] needs Convert Mask to "
                              "Image first")
    if 0 in image_BHWC.shape[:3]:
        raise InputError(f"the image is empty: {tuple(image_BHWC.shape)}", hint="connect an image with pixels")
    image = _as_rgb(image_BHWC, -1, layout)
    _pixel_values(image, layout)
    return image


def tokenizer_image(image_B3HW: torch.Tensor, stride: int) -> torch.Tensor:
    """Encoder input `[B, C, H, W]` in [-1, 1] as `[B, 3, H, W]`, checked. Each side must be at least twice
    the stride: the deepest layers see floor(side / stride) cells, none below the stride, and a single
    cell can leave a GroupNorm group with one value (an error in torch)."""
    layout = "[B, 3, H, W]"
    if image_B3HW.ndim != 4:
        raise InputError(f"the bitwise tokenizer encodes {layout} images, got {tuple(image_B3HW.shape)}",
                         hint="add the batch dimension (image[None]); ComfyUI IMAGEs go through images.from_rgb01")
    h, w = image_B3HW.shape[-2:]
    least = 2 * stride
    if image_B3HW.shape[0] == 0 or min(h, w) < least:
        raise InputError(f"the image is {w}x{h} px (batch {image_B3HW.shape[0]}); the bitwise tokenizer needs at "
                         f"least {least}x{least} px (twice its stride) and one image",
                         hint="scale the image up to the schedule's size first (Infinity Encode does this)")
    image = _as_rgb(image_B3HW, 1, layout)
    _pixel_values(image, layout)
    return image


# ---- latents and model outputs -----------------------------------------------------------------------
def decoder_latent(latent_BdHW: torch.Tensor, codebook_dim: int) -> None:
    """Decoder input: `[B, d, H, W]` summed codes with the tokenizer's d, finite."""
    if latent_BdHW.ndim != 4 or 0 in latent_BdHW.shape:
        raise InputError(f"the decoder takes a [B, {codebook_dim}, H, W] latent, got {tuple(latent_BdHW.shape)}",
                         hint="decode the summed codes of a sampler result (SampleResult.summed_codes)")
    if latent_BdHW.shape[1] != codebook_dim:
        raise IncompatibleModelsError(f"the latent has {latent_BdHW.shape[1]} channels but this bitwise tokenizer "
                                      f"decodes {codebook_dim} bits per latent cell",
                                      hint="decode with the tokenizer that matches the transformer")
    if not latent_BdHW.is_floating_point() or not all_finite(latent_BdHW):
        detail = _bad_values(latent_BdHW) if latent_BdHW.is_floating_point() else f"dtype {latent_BdHW.dtype}"
        raise InputError(f"the latent holds NaN, infinite or non-float values ({detail})",
                         hint="it was damaged on the way (a latent-math node, a broken saved latent); sample or "
                              "encode it again")


def model_output(t: torch.Tensor, what: str, compute_dtype: torch.dtype) -> torch.Tensor:
    """`t` as given if finite; else an error naming `what` and the likely cause."""
    if all_finite(t):
        return t
    hint = FP16_HINT if compute_dtype == torch.float16 else (
        "run it in float32; if that fails too, the model file is damaged: download it again")
    raise NumericalError(f"{what} contains NaN or infinite values ({_bad_values(t)}), computing in "
                     f"{str(compute_dtype).replace('torch.', '')}", hint=hint)


def _logits_error(si: int, num_scales: int, compute_dtype: torch.dtype, detail: str) -> NumericalError:
    hint = FP16_HINT if compute_dtype == torch.float16 else (
        "the settings push the logits past float range (a tiny tau, a huge cfg), or the model or text features "
        "are damaged; try tau 0.5 and cfg 3 in float32")
    return NumericalError(f"scale {si + 1} of {num_scales}: the bit logits contain NaN or infinite values "
                          f"({detail}), computing in {str(compute_dtype).replace('torch.', '')}", hint=hint)


class LogitsGuard:
    """The guided, tempered bit logits of every scale are finite (checked before top-k/top-p adds its -inf):
    else a NumericalError naming the first bad scale, instead of torch.multinomial's "probability tensor
    contains inf, nan" (CPU) or silently random bits (an accelerator's draw does not check).

    On the CPU the check is immediate (reading the flag costs nothing). On an accelerator reading it would
    stall the pipeline once per scale, so the flags stay on the device and `finish()` reads them all at once
    after the last scale: the run wastes its remaining scales, but the error is the same."""

    def __init__(self, num_scales: int, compute_dtype: torch.dtype):
        self.num_scales, self.compute_dtype = num_scales, compute_dtype
        self._flags: list[tuple[int, torch.Tensor]] = []

    def check(self, logits: torch.Tensor, si: int) -> None:
        if logits.device.type == "cpu":
            if not all_finite(logits):
                raise _logits_error(si, self.num_scales, self.compute_dtype, _bad_values(logits))
            return
        self._flags.append((si, torch.isfinite(logits).all()))

    def finish(self) -> None:
        if not self._flags:
            return
        ok = torch.stack([flag for _, flag in self._flags]).tolist()  # the one read of the run
        bad = [si for (si, _), good in zip(self._flags, ok) if not good]
        self._flags = []
        if bad:
            raise _logits_error(bad[0], self.num_scales, self.compute_dtype,
                                f"scales {', '.join(str(si + 1) for si in bad)}")
