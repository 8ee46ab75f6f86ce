"""Sampler nodes: next-scale generation from text, optionally teacher-forced from an image latent.

The Advanced node only extends the schema; both run `InfinitySampler.execute` (the GGUF pattern).
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from comfy_api.latest import io, ui
from PIL import Image

from ..infinity_core.errors import IncompatibleModelsError, PromptError, SamplingError
from ..infinity_core.images import preview_rgb, to_rgb01
from ..infinity_core.loading import pair
from ..infinity_core.memory import decode_bytes
from ..infinity_core.pruning import DEFAULT_RATIO, PRESETS
from ..infinity_core.quantizer import token_bits_to_vae
from ..infinity_core.sampler import SamplerSettings, make_generators, output_scales, sample
from ..infinity_core.schedules import MAX_SIDE, MIN_SIDE
from ..infinity_core.speed import SpeedSettings, run_memory
from . import comfy_glue as glue
from .types import (BUDGETS, Conditioning, InfinityConditioning, InfinityModel, InfinityVAE, LatentView, ModelHandle,
                    TokenizerHandle, about, pack_latent, read_latent, schedule_for_widgets, teacher_bits)

TOP_P = 0.97  # the reference's gen_one_img default (its top_k=900 keeps both values of a bit: off)
PROMPT_HINT = "type what the picture should show into the Infinity Text Encode node, e.g. 'a red fox in the snow'"


# ---- parsing the widgets ------------------------------------------------------------------------
def _per_scale(text: str, scalar: float, widget: str):
    """A comma list from a widget (one value per scale; SamplerSettings.validate checks the length); empty
    text means the scalar for every scale, and so does a single number."""
    if not text.strip():
        return scalar
    try:
        values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise SamplingError(f"{widget}: '{text}' is not a comma-separated list of numbers",
                            hint="write e.g. '3, 3, 4', or leave it empty to use the single value") from None
    return values[0] if len(values) == 1 else tuple(values)


def _settings(model: ModelHandle, n: int, cfg: float, tau: float, cfg_list: str, tau_list: str, top_k: int,
              top_p: float, cfg_insertion_layer: int) -> SamplerSettings:
    """The sampler settings from the widgets, validated before any model is loaded. SamplerSettings.validate
    runs once per widget (the others at their valid defaults) so that an error names the widget."""
    fields = {"cfg_list" if cfg_list.strip() else "cfg": dict(cfg=_per_scale(cfg_list, cfg, "cfg_list")),
              "tau_list" if tau_list.strip() else "tau": dict(tau=_per_scale(tau_list, tau, "tau_list")),
              "cfg_insertion_layer": dict(cfg_insertion_layer=(cfg_insertion_layer,)),
              "top_k/top_p": dict(top_k=top_k, top_p=top_p)}
    for widget, values in fields.items():
        with about(widget):
            SamplerSettings(**values).validate(model.config.depth, n)
    return SamplerSettings(**{k: v for values in fields.values() for k, v in values.items()})


def _speed(model: ModelHandle, schedule, settings: SamplerSettings, speed: SpeedSettings, stop_after: int):
    """The sampler settings and pruning policy with the speed widgets applied (errors name the widget)."""
    with about("prune_ratio" if speed.pruning != "off" else "pruning"):
        speed.policy(schedule, model.config.depth)
    return speed.apply(settings, schedule, model.config.depth, stop_after)


def _schedule(model: ModelHandle, width: int, height: int, budget: str, latent) -> tuple:
    """The scale schedule: the latent's own when one is connected, else width/height snapped to a template."""
    if latent is not None:
        view = read_latent(latent, "latent_image", model.cell_bits, model.patchify, model.name)
        return view.schedule, view
    return schedule_for_widgets(width, height, budget), None


def _teacher_scales(n: int, view: LatentView | None, denoise: float, regenerate_from_scale: int) -> int:
    """How many leading scales come from the image: regenerate_from_scale, else round((1 - denoise) * n)."""
    widget = "regenerate_from_scale" if regenerate_from_scale >= 0 else "denoise"
    if regenerate_from_scale > n:
        raise SamplingError(f"regenerate_from_scale: {regenerate_from_scale}, but the schedule has {n} scales",
                            hint=f"use 0..{n}, or -1 to follow denoise")
    if not 0.0 <= denoise <= 1.0:
        raise SamplingError(f"denoise: {denoise} is outside 0..1", hint="1.0 generates from scratch")
    k = regenerate_from_scale if regenerate_from_scale >= 0 else round((1.0 - denoise) * n)
    if k > 0 and view is None:
        raise SamplingError(f"{widget}: keeping {k} scale(s) of an image needs a latent_image",
                            hint="connect a LATENT from Infinity Encode, or set denoise to 1.0")
    return k


def _batch(view: LatentView | None, batch_size: int) -> tuple[int, LatentView | None]:
    if view is None:
        return batch_size, None
    B = view.samples.shape[0]
    if batch_size not in (1, B) and B != 1:
        raise SamplingError(f"batch_size: {batch_size}, but latent_image holds {B} images",
                            hint="set batch_size to 1 (use the latent's batch) or repeat a single-image latent")
    if B == 1 and batch_size > 1:
        view = replace(view, samples=view.samples.expand(batch_size, -1, -1, -1))
    return max(B, batch_size), view


def _text(model: ModelHandle, cond: Conditioning, batch: int, widget: str):
    """The prompt(s) checked against the model and expanded to one per image."""
    emb = cond.embedding
    if emb.channels != model.config.text_channels:
        raise IncompatibleModelsError(f"{widget}: the text features are {emb.channels} wide but {model.name} "
                                      f"reads {model.config.text_channels}-wide T5 features",
                                      hint="load flan-t5-xl in the Infinity Text Encoder Loader")
    with about(widget):
        return emb.expand_to(batch)


def _texts(model: ModelHandle, positive: Conditioning, negative: Conditioning | None, batch: int):
    if positive.empty:
        raise PromptError("positive: the prompt is empty (the 'text' widget of the Infinity Text Encode "
                          "connected to positive is blank)", hint=PROMPT_HINT)
    uncond = None if negative is None or negative.empty else _text(model, negative, batch, "negative")
    return _text(model, positive, batch, "positive"), uncond


def _check_vae(model: ModelHandle, vae: TokenizerHandle | None) -> None:
    if vae is None:
        return
    with about("vae"):
        layout = pair(model.config, vae.config, transformer_name=model.name, tokenizer_name=vae.name)
    if layout.patchify != model.patchify:
        raise IncompatibleModelsError(f"vae: {vae.name} pairs {'with' if layout.patchify else 'without'} spatial "
                                      f"patchify, but the model was loaded with it {'on' if model.patchify else 'off'}",
                                      hint="set spatial_patchify to auto in the Infinity Transformer Loader")


# ---- running -------------------------------------------------------------------------------------
def _preview_grid(hw: tuple[int, int], stride: int) -> tuple[int, int]:
    scale = min(1.0, glue.PREVIEW_SIZE / (max(hw) * stride))
    return max(1, round(hw[0] * scale)), max(1, round(hw[1] * scale))


def _previewer(grids, vae: TokenizerHandle | None):
    """First image of the batch after each scale: decoded at the scale's own grid if a VAE is given."""
    def preview(step) -> Image.Image:
        if vae is None:
            rgb = preview_rgb(step.summed_codes_Bd1HW[:1], glue.PREVIEW_SIZE)[0]
        else:
            z = F.interpolate(step.summed_codes_Bd1HW[:1, :, 0].float(),
                              size=_preview_grid(grids[step.index], vae.config.patch_size), mode="area")
            rgb = to_rgb01(vae.patcher.model.decode(z.to(vae.patcher.load_device, vae.dtype)))[0]
        return Image.fromarray(rgb.mul(255).round().to(torch.uint8).cpu().numpy())
    return preview


def _run(model: ModelHandle, schedule, texts, settings: SamplerSettings, seed: int, batch: int, teacher,
         stop_after: int, vae: TokenizerHandle | None, node_id, pruning=None):
    n = min(stop_after, schedule.num_scales) if stop_after > 0 else schedule.num_scales
    need = run_memory(model.config, schedule, batch, settings, model.compute_dtype, pruning, n)
    if vae is not None:  # previews decode at most PREVIEW_SIZE px
        need += decode_bytes(vae.config, (glue.PREVIEW_SIZE, glue.PREVIEW_SIZE), 1, vae.dtype)
    h, w = schedule.image_hw
    glue.load_models([model.patcher] + ([vae.patcher] if vae else []), need, f"sampling {batch} image(s) of {w}x{h}",
                     hint="lower batch_size or the pixel budget")
    callback = glue.progress_callback(output_scales(n, pruning, len(teacher)), node_id,
                                      _previewer(schedule.vae_grids(model.patchify), vae))
    return sample(model.patcher.model, texts[0], schedule, generators=make_generators(seed, batch), settings=settings,
                  patchify=model.patchify, negative=texts[1], batch=batch, teacher_bits=teacher, stop_after=n,
                  device=model.patcher.load_device, compute_dtype=model.compute_dtype, callback=callback,
                  pruning=pruning)


def _speed_text(schedule, settings: SamplerSettings, pruning, n: int) -> str:
    """What the speed settings did in a run of n scales, for the node's text ('' in exact mode)."""
    parts = [pruning.describe(schedule, n)] if pruning is not None else []
    ran = pruning.scales_run(n) if pruning is not None else n
    guided = settings.guided_scales(ran)
    if 0 < guided < ran:
        parts.append(f"scales {guided + 1}-{ran} unguided (no unconditional half)")
    return "".join("; " + p for p in parts)


def _describe(schedule, requested: tuple[int, int] | None, k: int, scales: int) -> str:
    h, w = schedule.image_hw
    text = f"{w}x{h} px (h/w template {schedule.template}, budget {schedule.budget}, {scales} scales"
    text += f"; {k} from the image)" if k else ")"
    if requested and requested != (w, h):
        text += f"; asked for {requested[0]}x{requested[1]}, snapped to the nearest template"
    return text


# ---- nodes -----------------------------------------------------------------------------------------
class InfinitySampler(io.ComfyNode):
    @classmethod
    def sampler_inputs(cls) -> list:
        return [
            InfinityModel.Input("model", tooltip="The Infinity transformer."),
            InfinityConditioning.Input("positive", tooltip="The prompt, from Infinity Text Encode."),
            InfinityConditioning.Input("negative", optional=True,
                                       tooltip="Optional negative prompt; unconnected or empty = learned null text."),
            io.Int.Input("width", default=1024, min=MIN_SIDE, max=MAX_SIDE, step=16,
                         tooltip="Wanted width; snapped with height to the nearest of Infinity's aspect templates "
                                 "(the real size is shown on the node). Ignored when latent_image is connected."),
            io.Int.Input("height", default=1024, min=MIN_SIDE, max=MAX_SIDE, step=16,
                         tooltip="Wanted height; see width."),
            io.Combo.Input("budget", options=BUDGETS, default="1M",
                           tooltip="Pixel budget: 1M is about 1024x1024 (13 scales), 0.06M about 256x256 (7 scales). "
                                   "Ignored when latent_image is connected."),
            io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                         tooltip="Random seed; image i of a batch uses seed + i, so it equals a single run."),
            io.Int.Input("batch_size", default=1, min=1, max=64,
                         tooltip="Images to generate at once (with latent_image: 1 = one per latent image)."),
            io.Float.Input("cfg", default=3.0, min=0.0, max=100.0, step=0.1, round=0.01,
                           tooltip="Classifier-free guidance strength; 1 turns guidance off."),
            io.Float.Input("tau", default=0.5, min=0.01, max=5.0, step=0.01,
                           tooltip="Temperature of the bit logits; lower is more deterministic."),
            io.Latent.Input("latent_image", optional=True,
                            tooltip="Optional image latent (Infinity Encode) for image-to-image; it sets the size."),
            io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                           tooltip="With latent_image: 1.0 = text-to-image; lower keeps round((1-denoise) x scales) "
                                   "coarse scales of the image and generates the rest."),
            io.Combo.Input("pruning", options=list(PRESETS), default="off",
                           tooltip="Faster, approximate (FastVAR token pruning). off = exact, the reference's "
                                   "result. prune = the last four scales compute only their most detailed tokens "
                                   "and fill the rest from an earlier scale. fastvar = FastVAR's own setting: prune "
                                   "two late scales and skip the last two outright (fastest, loses fine detail). "
                                   "The node's text says what ran."),
            io.Int.Input("unguided_last_scales", default=0, min=0, max=16,
                         tooltip="Run the last N scales without guidance (cfg 1) and without the unconditional "
                                 "half of the batch: faster and lighter, the same result as a cfg list ending in N "
                                 "ones. 0 = guidance on every scale."),
        ]

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InfinitySampler",
            display_name="Infinity Sampler",
            category="Infinity/sampling",
            description="Generates an image latent with Infinity's next-scale prediction (bitwise tokens, "
                        "coarse to fine). Connect Infinity Decode to see it.",
            inputs=cls.sampler_inputs(),
            outputs=[io.Latent.Output(display_name="latent", tooltip="Summed codes plus the bits of every scale.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model: ModelHandle, positive: Conditioning, width: int, height: int, budget: str, seed: int,
                batch_size: int, cfg: float, tau: float, negative: Conditioning | None = None, latent_image=None,
                denoise: float = 1.0, pruning: str = "off", unguided_last_scales: int = 0, cfg_list: str = "",
                tau_list: str = "", cfg_insertion_layer: int = 0, top_k: int = 0, top_p: float = TOP_P,
                regenerate_from_scale: int = -1, stop_after_scale: int = 0, vae: TokenizerHandle | None = None,
                prune_ratio: float = DEFAULT_RATIO) -> io.NodeOutput:
        schedule, view = _schedule(model, width, height, budget, latent_image)
        n = schedule.num_scales
        k = _teacher_scales(n, view, denoise, regenerate_from_scale)
        settings = _settings(model, n, cfg, tau, cfg_list, tau_list, top_k, top_p, cfg_insertion_layer)
        settings, policy = _speed(model, schedule, settings, SpeedSettings(pruning, prune_ratio, unguided_last_scales),
                                  stop_after_scale)
        batch, view = _batch(view, batch_size)
        texts = _texts(model, positive, negative, batch)
        _check_vae(model, vae)
        node_id = cls.hidden.unique_id if cls.hidden is not None else None
        result = _run(model, schedule, texts, settings, seed, batch, teacher_bits(view, k) if view else [],
                      stop_after_scale, vae, node_id, policy)
        bits = [token_bits_to_vae(b, schedule.grids[si], model.patchify) for si, b in enumerate(result.bits)]
        latent = pack_latent(result.summed_codes, bits, schedule, model.patchify, glue.intermediate_device())
        requested = None if view is not None else (width, height)
        stop = min(stop_after_scale, n) if stop_after_scale > 0 else n
        text = _describe(schedule, requested, k, len(bits)) + _speed_text(schedule, settings, policy, stop)
        return io.NodeOutput(latent, ui=ui.PreviewText(text))


class InfinitySamplerAdvanced(InfinitySampler):
    @classmethod
    def define_schema(cls) -> io.Schema:
        schema = super().define_schema()
        schema.node_id, schema.display_name = "InfinitySamplerAdvanced", "Infinity Sampler (Advanced)"
        schema.description = ("Infinity Sampler with per-scale cfg/tau lists, guidance placement, top-k/top-p, "
                              "regenerating from a chosen scale, stopping early, and exact previews from a VAE.")
        schema.inputs = cls.sampler_inputs() + [
            io.String.Input("cfg_list", default="",
                            tooltip="Per-scale cfg, comma-separated, one per scale (extra ones are ignored); empty = "
                                    "use cfg everywhere."),
            io.String.Input("tau_list", default="",
                            tooltip="Per-scale tau, comma-separated, one per scale; empty = use tau everywhere."),
            io.Int.Input("cfg_insertion_layer", default=0, min=-128, max=1,
                         tooltip="Where guidance mixes: 0 = on the logits (all releases); -k = on the hidden state "
                                 "after layer depth-k; 1 = the reference's no-guidance quirk."),
            io.Int.Input("top_k", default=0, min=0, max=2,
                         tooltip="Per-bit top-k: 0 = off, 1 = greedy (always the likelier bit value)."),
            io.Float.Input("top_p", default=TOP_P, min=0.0, max=1.0, step=0.01,
                           tooltip="Per-bit nucleus: drop the less likely value when its probability is <= 1 - top_p; "
                                   "0 = off."),
            io.Int.Input("regenerate_from_scale", default=-1, min=-1, max=16,
                         tooltip="Keep the first N scales of latent_image and generate from scale N on; -1 = follow "
                                 "denoise. N = number of scales reproduces the image."),
            io.Int.Input("stop_after_scale", default=0, min=0, max=16,
                         tooltip="Stop after this many scales (a coarse result); 0 = run all scales."),
            InfinityVAE.Input("vae", optional=True,
                              tooltip="Optional bitwise tokenizer: previews are decoded with it instead of a cheap "
                                      "colour projection."),
            io.Float.Input("prune_ratio", default=DEFAULT_RATIO, min=0.0, max=0.9, step=0.05,
                           tooltip="With pruning on: the fraction of tokens the pruned scales drop (FastVAR: 0.5; "
                                   "the first pruned scale drops 0.8 x this). 0 = prune nothing."),
        ]
        return schema
