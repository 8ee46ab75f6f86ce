"""Sampler nodes: next-scale generation from text, optionally teacher-forced from an image latent.

The Advanced node only extends the schema; both run `InfinitySampler.execute` (the GGUF pattern).
"""
from __future__ import annotations

from dataclasses import replace

import torch
from .node_api import io, ui
from PIL import Image

from ..infinity_core import validation
from ..infinity_core.model.config import VAE_PRESETS, VAEConfig
from ..infinity_core.devices import attention_plan_for
from ..infinity_core.errors import InfinityError, IncompatibleModelsError, PromptError, SamplingError
from ..infinity_core.files.file_kinds import peek_tokenizer_config
from ..infinity_core.images import preview_rgb, to_rgb01
from ..infinity_core.files.loading import pair
from ..infinity_core.downloads.official import by_name
from ..infinity_core.sampling.memory import decode_bytes
from ..infinity_core.model.pruning import DEFAULT_RATIO, PRESETS
from ..infinity_core.model.quantizer import token_bits_to_vae
from ..infinity_core.resize import area_2d
from ..infinity_core.sampling.plan import plan_run
from ..infinity_core.sampling.sampler import SamplerSettings, make_generators, sample
from ..infinity_core.schedules import MAX_SIDE, MIN_SIDE
from ..infinity_core.sampling.speed import SpeedSettings, run_memory
from . import comfy_glue as glue
from .inpaint import carry_extras, seed_indices, teacher_for
from .latent import LatentView, pack_latent, read_latent
from .types import Conditioning, InfinityConditioning, InfinityModel, InfinityVAE, ModelHandle, TokenizerHandle
from .widgets import BUDGETS, about, describe_schedule, schedule_for_widgets

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


def _speed(model: ModelHandle, schedule, settings: SamplerSettings, speed: SpeedSettings, n: int):
    """The sampler settings and pruning policy of a run of n scales with the speed widgets applied (errors
    name the widget)."""
    with about("prune_ratio" if speed.pruning != "off" else "pruning"):
        policy = speed.policy(schedule, model.config.depth)
    return speed.guidance(settings, schedule, policy, n), policy


def _schedule(model: ModelHandle, width: int, height: int, budget: str, latent) -> tuple:
    """The scale schedule: the latent's own when one is connected, else width/height snapped to a template."""
    if latent is not None:
        view = read_latent(latent, "latent_image", model.cell_bits, model.patchify, model.name)
        return view.schedule, view
    return schedule_for_widgets(width, height, budget), None


def _teacher_scales(n: int, view: LatentView | None, denoise: float, regenerate_from_scale: int) -> int:
    """How many leading scales come from the image: round((1 - denoise) * n), or regenerate_from_scale exactly
    (Advanced). Both set is refused: neither may silently override the other."""
    if regenerate_from_scale > n:
        raise SamplingError(f"regenerate_from_scale: {regenerate_from_scale}, but the schedule has {n} scales",
                            hint=f"use 0..{n}, or -1 to follow denoise")
    if not 0.0 <= denoise <= 1.0:
        raise SamplingError(f"denoise: {denoise} is outside 0..1", hint="1.0 generates from scratch")
    if regenerate_from_scale >= 0 and denoise != 1.0:
        raise SamplingError(f"denoise {denoise} and regenerate_from_scale {regenerate_from_scale} both choose how "
                            "many scales to keep from the image",
                            hint="use one: set denoise to 1.0 (then regenerate_from_scale decides), or "
                                 "regenerate_from_scale to -1 (then denoise decides)")
    widget = "regenerate_from_scale" if regenerate_from_scale >= 0 else "denoise"
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
    with about(widget):
        validation.text_features(emb, None, model.config.text_channels)
        return emb.expand_to(batch)


def _texts(model: ModelHandle, positive: Conditioning, negative: Conditioning | None, batch: int):
    if positive.empty:
        raise PromptError("positive: the prompt is empty (the 'text' widget of the Infinity Text Encode "
                          "connected to positive is blank)", hint=PROMPT_HINT)
    uncond = None if negative is None or negative.empty else _text(model, negative, batch, "negative")
    return _text(model, positive, batch, "positive"), uncond


def _check_pair(model: ModelHandle, config: VAEConfig, name: str, widget: str, where: str = "") -> None:
    """The tokenizer fits the model: bits per cell and spatial patchify."""
    with about(widget):
        layout = pair(model.config, config, transformer_name=model.name, tokenizer_name=f"{where}{name}")
    if layout.patchify != model.patchify:
        raise IncompatibleModelsError(f"{widget}: {where}{name} pairs {'with' if layout.patchify else 'without'} "
                                      f"spatial patchify, but the model was loaded with it "
                                      f"{'on' if model.patchify else 'off'}",
                                      hint="set spatial_patchify to auto in the Infinity Transformer Loader")


def _check_vae(model: ModelHandle, vae: TokenizerHandle | None) -> None:
    if vae is not None:
        _check_pair(model, vae.config, vae.name, "vae")


def _decode_tokenizer(prompt, node_id) -> str | None:
    """The file of the tokenizer loader feeding an Infinity Decode of this sampler's output (direct links in the
    queued graph), or None."""
    if not isinstance(prompt, dict) or node_id is None:
        return None
    for node in prompt.values():
        inputs = node.get("inputs", {}) if isinstance(node, dict) else {}
        samples, vae = inputs.get("samples"), inputs.get("vae")
        if node.get("class_type") != "InfinityDecode" or not isinstance(samples, list) or not isinstance(vae, list):
            continue
        loader = prompt.get(str(vae[0]), {})
        if str(samples[0]) == str(node_id) and loader.get("class_type") == "InfinityBitwiseTokenizerLoader":
            return loader.get("inputs", {}).get("vae_name")
    return None


def _check_downstream_tokenizer(model: ModelHandle, prompt, node_id) -> None:
    """Before sampling: the tokenizer that will decode this latent must fit the model (else the mismatch would
    show only at Decode, after the whole run). Files not readable here are left to their loader."""
    name = _decode_tokenizer(prompt, node_id)
    if not isinstance(name, str):
        return
    path = glue.find(glue.TOKENIZER_FOLDERS, name)
    official = by_name("infinity", name)
    try:
        preset = VAE_PRESETS[official.pairs_with["preset"]] if official else None
        config = peek_tokenizer_config(path) if path else preset
    except InfinityError:
        return
    if config is not None:
        _check_pair(model, config, name, "model", where="the Infinity Decode of this latent uses ")


# ---- running -------------------------------------------------------------------------------------
def _preview_grid(hw: tuple[int, int], stride: int, size: int) -> tuple[int, int]:
    scale = min(1.0, size / (max(hw) * stride))
    return max(1, round(hw[0] * scale)), max(1, round(hw[1] * scale))


def _previewer(grids, vae: TokenizerHandle | None, size: int):
    """First image of the batch after each scale (`size`: ComfyUI's --preview-size, at most): decoded at the
    scale's own grid if a VAE is given (opt-in: exact, costs a decode), else a cheap colour projection."""
    def preview(step) -> Image.Image:
        if vae is None:
            rgb = preview_rgb(step.summed_codes_Bd1HW[:1], size)[0]
        else:
            grid = _preview_grid(grids[step.index], vae.config.patch_size, size)
            z = area_2d(step.summed_codes_Bd1HW[:1, :, 0].float(), grid)
            rgb = to_rgb01(vae.patcher.model.decode(z.to(vae.patcher.load_device, vae.dtype)))[0]
        return Image.fromarray(rgb.mul(255).round().to(torch.uint8).cpu().numpy())
    return preview


def _run(model: ModelHandle, schedule, texts, settings: SamplerSettings, seed: int, batch: int, teacher,
         indices, n: int, vae: TokenizerHandle | None, node_id, pruning=None):
    attention = attention_plan_for(model.patcher.load_device, model.compute_dtype)
    need = run_memory(model.config, schedule, batch, settings, model.compute_dtype, pruning, n, attention=attention)
    previews, size = glue.preview_settings()
    vae = vae if previews else None  # no previews: no decoder to load
    if vae is not None:  # previews decode at most --preview-size px
        need += decode_bytes(vae.config, (size, size), 1, vae.dtype)
    h, w = schedule.image_hw
    glue.load_models([model.patcher] + ([vae.patcher] if vae else []), need, f"sampling {batch} image(s) of {w}x{h}",
                     hint="lower batch_size or the pixel budget")
    plan = plan_run(schedule, settings, pruning=pruning, teacher=teacher, stop_after=n)
    callback = glue.progress_callback(plan.output_scales, node_id,
                                      _previewer(schedule.vae_grids(model.patchify), vae, size))
    return sample(model.patcher.model, texts[0], schedule, generators=make_generators(seed, batch, indices=indices),
                  settings=settings, patchify=model.patchify, negative=texts[1], batch=batch, teacher=teacher,
                  stop_after=n, device=model.patcher.load_device, compute_dtype=model.compute_dtype,
                  callback=callback, pruning=pruning)


def _speed_text(schedule, settings: SamplerSettings, pruning, n: int) -> str:
    """What the speed settings did in a run of n scales, for the node's text ('' in exact mode)."""
    parts = [pruning.describe(schedule, n)] if pruning is not None else []
    plan = plan_run(schedule, settings, pruning=pruning, stop_after=n)
    if plan.truncates:
        parts.append(f"scales {plan.guided_scales + 1}-{plan.net_scales} unguided (no unconditional half)")
    return "".join("; " + p for p in parts)


def _describe(schedule, requested: tuple[int, int] | None, budget: str, k: int, scales: int) -> str:
    h, w = schedule.image_hw
    text = describe_schedule(budget, schedule, scales)
    if k:
        text += f"; {k} of {schedule.num_scales} scales from the image"
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
            io.Combo.Input("budget", options=BUDGETS, default="auto",
                           tooltip="Pixel budget: auto = the one nearest to width x height (shown on the node); 1M is "
                                   "about 1024x1024 (13 scales), 0.06M about 256x256 (7 scales). Ignored when "
                                   "latent_image is connected."),
            io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                         tooltip="Random seed; image i of a batch uses seed + i, so it equals a single run."),
            io.Int.Input("batch_size", default=1, min=1, max=64,
                         tooltip="Images to generate at once (with latent_image: 1 = one per latent image)."),
            io.Float.Input("cfg", default=3.0, min=0.0, max=100.0, step=0.1, round=0.01,
                           tooltip="Classifier-free guidance strength; 1 turns guidance off."),
            io.Float.Input("tau", default=0.5, min=0.01, max=5.0, step=0.01,
                           tooltip="Temperature of the bit logits; lower is more deterministic."),
            io.Latent.Input("latent_image", optional=True,
                            tooltip="Optional image latent (Infinity Encode) for image-to-image; it sets the size. "
                                    "With a noise_mask (Infinity Encode's mask, Set Latent Noise Mask) only the "
                                    "masked part is regenerated; batch_index (Latent From Batch) sets the seeds."),
            io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                           tooltip="With latent_image: 1.0 = text-to-image (with a mask: regenerate the masked part "
                                   "from the first scale); lower keeps round((1-denoise) x scales) coarse scales of "
                                   "the image whole and generates the rest (only inside the mask, if there is one; "
                                   "the node shows how many)."),
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
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
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
        stop = min(stop_after_scale, n) if stop_after_scale > 0 else n  # the scales this run takes
        k = _teacher_scales(n, view, denoise, regenerate_from_scale)
        settings = _settings(model, n, cfg, tau, cfg_list, tau_list, top_k, top_p, cfg_insertion_layer)
        settings, policy = _speed(model, schedule, settings, SpeedSettings(pruning, prune_ratio, unguided_last_scales),
                                  stop)
        batch, view = _batch(view, batch_size)
        texts = _texts(model, positive, negative, batch)
        _check_vae(model, vae)
        teacher, mask_text = teacher_for(view, k, batch, model.patchify)
        indices = seed_indices(view, batch)
        node_id = glue.hidden_input(cls, "unique_id")
        _check_downstream_tokenizer(model, glue.hidden_input(cls, "prompt"), node_id)
        result = _run(model, schedule, texts, settings, seed, batch, teacher, indices, stop, vae, node_id, policy)
        bits = [token_bits_to_vae(b, schedule.grids[si], model.patchify) for si, b in enumerate(result.bits)]
        latent = pack_latent(result.summed_codes, bits, schedule, model.patchify, glue.intermediate_device())
        latent = carry_extras(latent_image, latent, indices)
        requested = None if view is not None else (width, height)
        seeds = f"; seeds: seed + batch_index {indices}" if indices is not None else ""
        text = _describe(schedule, requested, budget if view is None else schedule.budget, k, len(bits))
        text += mask_text + seeds + _speed_text(schedule, settings, policy, stop)
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
                         tooltip="Exact alternative to denoise: keep the first N scales of latent_image and generate "
                                 "from scale N on (N = all scales reproduces the image). -1 = use denoise; setting "
                                 "both is refused."),
            io.Int.Input("stop_after_scale", default=0, min=0, max=16,
                         tooltip="Stop after this many scales (a coarse result); 0 = run all scales."),
            InfinityVAE.Input("vae", optional=True,
                              tooltip="Optional bitwise tokenizer: previews are decoded with it instead of a cheap "
                                      "colour projection (when ComfyUI shows previews: --preview-method other than "
                                      "none); it is also checked against the model before sampling."),
            io.Float.Input("prune_ratio", default=DEFAULT_RATIO, min=0.0, max=0.9, step=0.05,
                           tooltip="With pruning on: the fraction of tokens the pruned scales drop (FastVAR: 0.5; "
                                   "the first pruned scale drops 0.8 x this). 0 = prune nothing."),
        ]
        return schema
