"""The example workflows (workflows/*.json, UI format 0.4) against the pack's own node schemas (no ComfyUI).

The pack is loaded with the fake ComfyUI of tests/comfy_fakes exactly as tests/test_nodes.py does;
core nodes are checked against CORE_NODES (which tests/test_comfyui_real.py compares with a real
server's /object_info). Also runs the web extension's size-snapping unit test (node --test) against
infinity_core.schedules, when `node` is installed.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from pack_harness import FAKES, REPO, _drop_modules, _load_by_path

WORKFLOW_DIR = REPO / "workflows"
WORKFLOWS = sorted(WORKFLOW_DIR.glob("*.json"))
EXPECTED = {"infinity_2b_text_to_image", "infinity_8b_text_to_image", "infinity_image_to_image",
            "infinity_batch_upscale", "infinity_low_vram", "infinity_inpaint", "infinity_outpaint"}
PACK = "custom_nodes_x_ComfyUI-Infinity_workflows_under_test"
FAKES_NAME = "comfy_fakes_workflows_under_test"
PACK_CNR_ID = "infinity-bitwise-ar"  # pyproject [project].name
WIDGET_KINDS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
FRONTEND_NODES = {"Note", "MarkdownNote"}  # frontend-only: one STRING widget, no sockets, not executed
TITLE_H = 30  # LiteGraph title bar above pos[1]
JS_TEST = REPO / "tests" / "js" / "infinity_schedule.test.mjs"


@dataclass(frozen=True)
class NodeSpec:
    """What a UI node must look like: sockets (name, TYPE, optional) and widgets (name, kind, extra values
    stored after it) in the frontend's order (required, then optional), outputs (name, TYPE)."""

    sockets: tuple = ()
    widgets: tuple = ()
    outputs: tuple = ()
    limits: dict = field(default_factory=dict, compare=False)  # widget -> {"min", "max", "options"}


# Core nodes the examples use (verified against a real /object_info by tests/test_comfyui_real.py).
CORE_NODES = {
    "LoadImage": NodeSpec(widgets=(("image", "COMBO", 1),), outputs=(("IMAGE", "IMAGE"), ("MASK", "MASK"))),
    "SaveImage": NodeSpec(sockets=(("images", "IMAGE", False),), widgets=(("filename_prefix", "STRING", 0),)),
    "UpscaleModelLoader": NodeSpec(widgets=(("model_name", "COMBO", 0),),
                                   outputs=(("UPSCALE_MODEL", "UPSCALE_MODEL"),)),
    "ImageUpscaleWithModel": NodeSpec(sockets=(("upscale_model", "UPSCALE_MODEL", False), ("image", "IMAGE", False)),
                                      outputs=(("IMAGE", "IMAGE"),)),
    "SetLatentNoiseMask": NodeSpec(sockets=(("samples", "LATENT", False), ("mask", "MASK", False)),
                                   outputs=(("LATENT", "LATENT"),)),
    "ImagePadForOutpaint": NodeSpec(sockets=(("image", "IMAGE", False),),
                                    widgets=tuple((side, "INT", 0) for side in ("left", "top", "right", "bottom",
                                                                                 "feathering")),
                                    outputs=(("IMAGE", "IMAGE"), ("MASK", "MASK"))),
}
LOADERS = {  # loader node -> (file widget, models/ folder the file goes to)
    "InfinityTransformerLoader": ("model_name", "infinity"),
    "InfinityBitwiseTokenizerLoader": ("vae_name", "infinity"),
    "InfinityTextEncoderLoader": ("text_encoder_name", "text_encoders"),
    "UpscaleModelLoader": ("model_name", "upscale_models"),
}


def _extra(name: str, control: bool, upload: bool = False) -> int:
    return int(bool(control) or name in ("seed", "noise_seed")) + int(bool(upload))


def spec_from_schema(schema) -> NodeSpec:
    """A NodeSpec from a (fake) V3 io.Schema."""
    sockets, widgets, limits = [], [], {}
    ordered = [i for i in schema.inputs if not i.optional] + [i for i in schema.inputs if i.optional]
    for item in ordered:
        kind = item.io_type
        if kind in WIDGET_KINDS and not getattr(item, "force_input", None):
            widgets.append((item.id, kind, _extra(item.id, getattr(item, "control_after_generate", None))))
            limits[item.id] = {"min": getattr(item, "min", None), "max": getattr(item, "max", None),
                               "options": getattr(item, "options", None)}
        else:
            sockets.append((item.id, kind, bool(item.optional)))
    outputs = tuple((o.display_name or o.io_type, o.io_type) for o in schema.outputs or [])
    return NodeSpec(tuple(sockets), tuple(widgets), outputs, limits)


def spec_from_object_info(info: dict) -> NodeSpec:
    """A NodeSpec from one /object_info entry of a real ComfyUI."""
    sockets, widgets, limits = [], [], {}
    for section in ("required", "optional"):
        for name in info.get("input_order", {}).get(section, []):
            spec = info["input"][section][name]
            kind, options = spec[0], spec[1] if len(spec) > 1 else {}
            kind = "COMBO" if isinstance(kind, list) else kind
            if kind in WIDGET_KINDS and not options.get("forceInput"):
                widgets.append((name, kind, _extra(name, options.get("control_after_generate"),
                                                   options.get("image_upload"))))
                limits[name] = {"min": options.get("min"), "max": options.get("max"),
                                "options": spec[0] if isinstance(spec[0], list) else options.get("options")}
            else:
                sockets.append((name, kind, section == "optional"))
    outputs = tuple(zip(info["output_name"], info["output"]))
    return NodeSpec(tuple(sockets), tuple(widgets), outputs, limits)


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    """The pack's node specs and schedule tables, loaded through the fake ComfyUI like tests/test_nodes.py."""
    base = tmp_path_factory.mktemp("comfy_base_workflows")
    fakes = _load_by_path(FAKES_NAME, FAKES / "__init__.py")
    modules = fakes.install(base)
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name, module in modules.items():
                mp.setitem(sys.modules, name, module)
            loaded = _load_by_path(PACK, REPO / "__init__.py")
            extension = asyncio.run(loaded.comfy_entrypoint())
            classes = asyncio.run(extension.get_node_list())
            specs = {cls.GET_SCHEMA().node_id: spec_from_schema(cls.GET_SCHEMA()) for cls in classes}
            tables = sys.modules[f"{PACK}.nodes"].schedule_tables()
            core = {"schedules": sys.modules[f"{PACK}.infinity_core.schedules"],
                    "memory": sys.modules[f"{PACK}.infinity_core.sampling.memory"],
                    "config": sys.modules[f"{PACK}.infinity_core.model.config"],
                    "model_files": sys.modules[f"{PACK}.infinity_core.downloads.official"]}
            yield {"specs": specs, "tables": tables, "schedules": core["schedules"], "core": core}
    finally:
        _drop_modules(PACK)
        _drop_modules(FAKES_NAME)


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def by_id(workflow: dict) -> dict:
    return {n["id"]: n for n in workflow["nodes"]}


def spec_of(pack, node_type: str) -> NodeSpec:
    if node_type in FRONTEND_NODES:
        return NodeSpec(widgets=(("text", "STRING", 0),))
    spec = pack["specs"].get(node_type) or CORE_NODES.get(node_type)
    assert spec is not None, f"unknown node type {node_type}"
    return spec


def notes(workflow: dict) -> str:
    return "\n".join(n["widgets_values"][0] for n in workflow["nodes"] if n["type"] in FRONTEND_NODES)


def widgets(pack, node: dict) -> dict:
    """Widget name -> value for a UI node (skipping the control_after_generate / upload extras)."""
    values, out, i = node.get("widgets_values") or [], {}, 0
    for name, _, extra in spec_of(pack, node["type"]).widgets:
        out[name] = values[i]
        i += 1 + extra
    return out


def nodes_of(workflow: dict, node_type: str) -> list[dict]:
    return [n for n in workflow["nodes"] if n["type"] == node_type]


workflow_param = pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)


# ---- the set of examples ---------------------------------------------------------------------------
def test_the_examples_and_their_thumbnails_exist():
    from PIL import Image
    assert {p.stem for p in WORKFLOWS} == EXPECTED
    assert not (REPO / "example_workflows").exists(), "ComfyUI serves only the first template folder it finds"
    for path in WORKFLOWS:
        thumb = path.with_suffix(".jpg")
        assert thumb.is_file(), f"{thumb.name}: the template browser shows <name>.jpg"
        assert 20_000 <= thumb.stat().st_size <= 200_000, (thumb.name, thumb.stat().st_size)
        with Image.open(thumb) as im:
            assert im.format == "JPEG" and im.width >= 400 and im.height >= 225


# ---- structure -----------------------------------------------------------------------------------
@workflow_param
def test_top_level_and_ids(path):
    wf = load(path)
    assert wf["version"] == 0.4
    assert {"last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra"} <= set(wf)
    ids = [n["id"] for n in wf["nodes"]]
    link_ids = [link[0] for link in wf["links"]]
    assert len(ids) == len(set(ids)) and len(link_ids) == len(set(link_ids))
    assert wf["last_node_id"] == max(ids) and wf["last_link_id"] == max(link_ids)
    assert sorted(n["order"] for n in wf["nodes"]) == list(range(len(ids)))
    for node in wf["nodes"]:
        assert node["mode"] == 0 and len(node["pos"]) == 2 and len(node["size"]) == 2


@workflow_param
def test_node_types_are_known(pack, path):
    for node in load(path)["nodes"]:
        spec_of(pack, node["type"])


@workflow_param
def test_widgets_values_match_the_schema(pack, path):
    for node in load(path)["nodes"]:
        spec = spec_of(pack, node["type"])
        values = node.get("widgets_values", [])
        assert isinstance(values, list)
        assert len(values) == sum(1 + extra for _, _, extra in spec.widgets), (node["type"], values)
        i = 0
        for name, kind, extra in spec.widgets:
            value, limit = values[i], spec.limits.get(name, {})
            where = f"{path.stem}: node {node['id']} {node['type']}.{name}={value!r}"
            if kind == "INT":
                assert isinstance(value, int) and not isinstance(value, bool), where
            elif kind == "FLOAT":
                assert isinstance(value, (int, float)) and not isinstance(value, bool), where
            elif kind in ("STRING", "COMBO"):
                assert isinstance(value, str), where
            if limit.get("min") is not None:
                assert limit["min"] <= value <= limit["max"], where
            if kind == "COMBO" and limit.get("options"):  # file lists are empty here; fixed lists are checked
                assert value in limit["options"], where
            if extra:
                assert values[i + 1] in CONTROL_VALUES | {"image"}, where
            i += 1 + extra


@workflow_param
def test_sockets_and_outputs_match_the_schema(pack, path):
    for node in load(path)["nodes"]:
        spec = spec_of(pack, node["type"])
        sockets = {name: kind for name, kind, _ in spec.sockets}
        names = [i["name"] for i in node.get("inputs", [])]
        assert names == [s[0] for s in spec.sockets], (node["type"], names)  # all sockets, frontend order
        for slot in node.get("inputs", []):
            assert slot["type"] == sockets[slot["name"]] and "widget" not in slot, (node["type"], slot)
        outputs = [(o["name"], o["type"]) for o in node.get("outputs", [])]
        assert outputs == list(spec.outputs), (node["type"], outputs)
        for i, out in enumerate(node.get("outputs", [])):
            assert out.get("slot_index", i) == i


@workflow_param
def test_links_agree_with_both_ends_and_the_schemas(pack, path):
    wf = load(path)
    nodes = by_id(wf)
    for link_id, origin, origin_slot, target, target_slot, kind in wf["links"]:
        out = nodes[origin]["outputs"][origin_slot]
        slot = nodes[target]["inputs"][target_slot]
        assert out["type"] == kind == spec_of(pack, nodes[origin]["type"]).outputs[origin_slot][1], link_id
        assert slot["type"] == kind and slot["link"] == link_id, link_id
        assert link_id in out["links"], link_id
    known = {link[0] for link in wf["links"]}
    for node in wf["nodes"]:
        for slot in node.get("inputs", []):
            assert slot["link"] is None or slot["link"] in known
        for out in node.get("outputs", []):
            assert all(link in known for link in out.get("links") or [])
        for name, _, optional in spec_of(pack, node["type"]).sockets:  # runnable: required sockets connected
            if not optional:
                assert next(s for s in node["inputs"] if s["name"] == name)["link"] is not None, (node["type"], name)


@workflow_param
def test_properties(path):
    for node in load(path)["nodes"]:
        if node["type"] in FRONTEND_NODES:
            continue
        props = node["properties"]
        assert props["Node name for S&R"] == node["type"]
        assert props["cnr_id"] == (PACK_CNR_ID if node["type"].startswith("Infinity") else "comfy-core")
        assert props.get("ver")


FRONTEND_FETCHABLE = (".safetensors", ".sft")  # frontend 1.27 MissingModelsWarning: allowedSuffixes
FRONTEND_SOURCES = ("https://civitai.com/", "https://huggingface.co/")  # ... and allowedSources


@workflow_param
def test_every_model_file_is_named(pack, path):
    """Model metadata (properties.models) lists only what the frontend's Missing Models dialog can fetch (else
    its Download button fails: .pth files, the pack-made T5 file); the pack's loaders fetch their official files
    themselves (download_missing on) and a Note names every file with its URL and destination folder."""
    wf = load(path)
    text = notes(wf)
    loaders = [n for n in wf["nodes"] if n["type"] in LOADERS]
    assert loaders
    official = {m.name: m for m in pack["core"]["model_files"].OFFICIAL.values()}
    for node in loaders:
        widget, folder = LOADERS[node["type"]]
        values = widgets(pack, node)
        name = values[widget]
        models = node["properties"].get("models")
        for m in models or []:
            assert m["name"].endswith(FRONTEND_FETCHABLE) and m["url"].startswith(FRONTEND_SOURCES), m
            assert m["name"] == name and m["directory"] == folder
        top = name.split("/")[0]
        assert top in text and f"models/{folder}/" in text, (path.stem, name)
        if node["type"].startswith("Infinity"):
            assert name in official and models is None, (node["type"], name)
            assert values["download_missing"] is True, node["type"]  # one click from the template to a picture
            spec = official[name]
            assert f"https://huggingface.co/{spec.repo}" in text
            assert pack["core"]["model_files"].gb(spec.approx_bytes) in text  # the size the Note states
        else:
            assert models, node["type"]  # e.g. the upscaler: fetchable by the dialog


@workflow_param
def test_layout_is_tidy(path):
    """No two nodes overlap (title bars included)."""
    boxes = [(n["id"], n["pos"][0], n["pos"][1] - TITLE_H, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in load(path)["nodes"]]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            overlap = a[1] < b[3] and b[1] < a[3] and a[2] < b[4] and b[2] < a[4]
            assert not overlap, f"{path.stem}: nodes {a[0]} and {b[0]} overlap"


@workflow_param
def test_samplers_have_room_for_their_previews(path):
    """A sampler shows a preview after each scale and grows by about its width: nothing may sit below it."""
    wf = load(path)
    for sampler in (n for n in wf["nodes"] if n["type"].startswith("InfinitySampler")):
        x0, y0 = sampler["pos"][0], sampler["pos"][1] + sampler["size"][1]
        x1, y1 = x0 + sampler["size"][0], y0 + sampler["size"][0]
        for n in wf["nodes"]:
            bx0, by0 = n["pos"][0], n["pos"][1] - TITLE_H
            bx1, by1 = bx0 + n["size"][0], n["pos"][1] + n["size"][1]
            assert n is sampler or not (bx0 < x1 and x0 < bx1 and by0 < y1 and y0 < by1), (path.stem, n["id"])


# ---- what each example shows -------------------------------------------------------------------
def the(pack, wf: dict, node_type: str) -> tuple[dict, dict]:
    found = nodes_of(wf, node_type)
    assert len(found) == 1, node_type
    return found[0], widgets(pack, found[0])


def upstream(wf: dict, node: dict, input_name: str) -> dict:
    link_id = next(s["link"] for s in node["inputs"] if s["name"] == input_name)
    link = next(link for link in wf["links"] if link[0] == link_id)
    return by_id(wf)[link[1]]


def test_2b_text_to_image(pack):
    wf = load(WORKFLOW_DIR / "infinity_2b_text_to_image.json")
    sampler, w = the(pack, wf, "InfinitySampler")
    assert (w["width"], w["height"], w["budget"], w["cfg"], w["tau"]) == (1024, 1024, "auto", 3.0, 0.5)
    assert pack["schedules"].schedule_for_size(1024, 1024, "auto").budget == "1M"
    assert sampler["widgets_values"][4] == "randomize"
    assert the(pack, wf, "InfinityTransformerLoader")[1]["model_name"] == "infinity_2b_reg.pth"
    assert the(pack, wf, "InfinityBitwiseTokenizerLoader")[1]["vae_name"] == "infinity_vae_d32reg.pth"
    positive, negative = upstream(wf, sampler, "positive"), upstream(wf, sampler, "negative")
    assert positive["type"] == negative["type"] == "InfinityTextEncode" and positive is not negative
    assert positive["widgets_values"][0].strip()
    decode = the(pack, wf, "InfinityDecode")[0]
    assert upstream(wf, decode, "samples") is sampler
    assert upstream(wf, the(pack, wf, "SaveImage")[0], "images") is decode


def test_8b_text_to_image(pack):
    wf = load(WORKFLOW_DIR / "infinity_8b_text_to_image.json")
    _, w = the(pack, wf, "InfinitySampler")
    assert (w["cfg"], w["tau"]) == (3.0, 1.0)
    loader = the(pack, wf, "InfinityTransformerLoader")[1]
    assert loader["model_name"] == "infinity_8b_weights/model.safetensors.index.json"
    assert loader["spatial_patchify"] == "auto"
    assert the(pack, wf, "InfinityBitwiseTokenizerLoader")[1]["vae_name"] == "infinity_vae_d56_f8_14_patchify.pth"


def test_image_to_image(pack):
    wf = load(WORKFLOW_DIR / "infinity_image_to_image.json")
    sampler, w = the(pack, wf, "InfinitySamplerAdvanced")
    encode = upstream(wf, sampler, "latent_image")
    assert encode["type"] == "InfinityEncode" and upstream(wf, encode, "image")["type"] == "LoadImage"
    n = pack["schedules"].PIXEL_BUDGETS[widgets(pack, encode)["budget"]]
    assert w["regenerate_from_scale"] == -1, "one control: denoise (the exact alternative is off)"
    assert 0 < round((1 - w["denoise"]) * n) < n, "keeps some coarse scales of the image, regenerates the rest"
    assert f"{round((1 - w['denoise']) * n)} of the {n} scales" in notes(wf)
    assert upstream(wf, sampler, "vae")["type"] == "InfinityBitwiseTokenizerLoader"
    assert upstream(wf, the(pack, wf, "InfinityDecode")[0], "samples") is sampler


def test_inpaint(pack):
    """Load Image (its MASK) -> Encode -> Set Latent Noise Mask -> Sampler -> Decode -> Inpaint Composite."""
    wf = load(WORKFLOW_DIR / "infinity_inpaint.json")
    loader = the(pack, wf, "LoadImage")[0]
    setmask = the(pack, wf, "SetLatentNoiseMask")[0]
    assert upstream(wf, setmask, "samples")["type"] == "InfinityEncode" and upstream(wf, setmask, "mask") is loader
    sampler, w = the(pack, wf, "InfinitySampler")
    assert upstream(wf, sampler, "latent_image") is setmask and w["denoise"] == 1.0
    composite, c = the(pack, wf, "InfinityInpaintComposite")
    assert upstream(wf, composite, "original") is loader and upstream(wf, composite, "mask") is loader
    assert upstream(wf, composite, "generated")["type"] == "InfinityDecode" and c["feather"] > 0
    assert upstream(wf, the(pack, wf, "SaveImage")[0], "images") is composite
    assert "MaskEditor" in notes(wf) and "Zero-shot" in notes(wf)


def test_outpaint(pack):
    """Load Image -> Pad Image for Outpainting -> Encode (image + mask) -> Sampler -> Decode -> Inpaint Composite."""
    wf = load(WORKFLOW_DIR / "infinity_outpaint.json")
    pad, p = the(pack, wf, "ImagePadForOutpaint")
    assert upstream(wf, pad, "image")["type"] == "LoadImage" and p["right"] > 0
    encode = the(pack, wf, "InfinityEncode")[0]
    assert upstream(wf, encode, "image") is pad and upstream(wf, encode, "mask") is pad
    assert {link[2] for link in wf["links"] if link[1] == pad["id"] and link[3] == encode["id"]} == {0, 1}
    sampler = the(pack, wf, "InfinitySampler")[0]
    assert upstream(wf, sampler, "latent_image") is encode
    composite = the(pack, wf, "InfinityInpaintComposite")[0]
    assert upstream(wf, composite, "original") is pad and upstream(wf, composite, "mask") is pad
    assert upstream(wf, the(pack, wf, "SaveImage")[0], "images") is composite


def test_batch_upscale(pack):
    wf = load(WORKFLOW_DIR / "infinity_batch_upscale.json")
    _, w = the(pack, wf, "InfinitySampler")
    assert w["batch_size"] == 4
    upscale = the(pack, wf, "ImageUpscaleWithModel")[0]
    assert upstream(wf, upscale, "image")["type"] == "InfinityDecode"
    model = upstream(wf, upscale, "upscale_model")
    assert "4x" in model["widgets_values"][0].lower() or "x4" in model["widgets_values"][0].lower()
    assert upstream(wf, the(pack, wf, "SaveImage")[0], "images") is upscale
    assert "seed + i" in notes(wf)


def gb(n_bytes: float) -> str:
    """How the Notes state a memory figure: GB = 1e9 bytes, one decimal."""
    return f"~{n_bytes / 1e9:.1f} GB"


def memory_figures(pack, model: str, budget: str, weight_bytes_per_param: int) -> dict:
    """The Notes' figures, from infinity_core.sampling.memory: weights, sampling at `budget` (batch 1, cfg, bf16)."""
    memory, config = pack["core"]["memory"], pack["core"]["config"]
    transformer = config.INFINITY_PRESETS[model]
    sampling = memory.sampling_bytes(transformer, pack["schedules"].ScaleSchedule(1.0, budget), 1, True,
                                     torch.bfloat16)
    weights = transformer.num_params() * weight_bytes_per_param
    return {"weights": weights, "sampling": sampling, "total": weights + sampling}


def test_low_vram(pack):
    wf = load(WORKFLOW_DIR / "infinity_low_vram.json")
    assert the(pack, wf, "InfinityTransformerLoader")[1]["weight_dtype"] == "fp8_e4m3fn"
    assert the(pack, wf, "InfinityTextEncoderLoader")[1]["dtype"] == "fp16"
    assert the(pack, wf, "InfinityDecode")[1]["tile_size"] == 32
    _, sampler = the(pack, wf, "InfinitySampler")
    assert (sampler["width"], sampler["height"], sampler["budget"], sampler["batch_size"]) == (1024, 1024, "auto", 1)
    text = notes(wf)
    assert "--lowvram" in text and "GB = 10^9 bytes" in text
    assert "batch_size" not in text  # already 1: no advice to lower it
    fp8, bf16 = memory_figures(pack, "infinity_2b", "1M", 1), memory_figures(pack, "infinity_2b", "1M", 2)
    vae = pack["core"]["config"].VAE_PRESETS["infinity_vae_d32"]
    decode = pack["core"]["memory"].decode_bytes
    figures = [fp8["weights"], bf16["weights"], fp8["sampling"], fp8["total"],
               decode(vae, (1024, 1024), 1, torch.float32), decode(vae, (32 * 16, 32 * 16), 1, torch.float32)]
    figures += [memory_figures(pack, "infinity_2b", budget, 1)["sampling"] for budget in ("0.60M", "0.25M")]
    for n_bytes in figures:
        assert gb(n_bytes) in text, (gb(n_bytes), text)
    assert "GiB" not in text.replace("1 GiB (~1.1 GB; ComfyUI counts this flag in GiB)", "")


def test_8b_memory_figures(pack):
    text = notes(load(WORKFLOW_DIR / "infinity_8b_text_to_image.json"))
    bf16, fp8 = memory_figures(pack, "infinity_8b", "1M", 2), memory_figures(pack, "infinity_8b", "1M", 1)
    for n_bytes in (bf16["weights"], bf16["sampling"], fp8["weights"]):
        assert gb(n_bytes) in text, (gb(n_bytes), text)
    for n_bytes in (bf16["total"], fp8["total"]):
        assert f"~{n_bytes / 1e9:.0f} GB in all" in text, text


# ---- the web extension's size snapping ---------------------------------------------------------------
def preview_text(schedule, auto: bool = False) -> str:
    """What the web extension shows on a sampler for this schedule (web/infinity_schedule.js formatSize)."""
    h, w = schedule.image_hw
    return (f"→ {w}×{h} · template {schedule.template:g} · {schedule.num_tokens:,} tokens · "
            f"{schedule.num_scales} scales" + (f" · auto: {schedule.budget}" if auto else ""))


def _cases(schedules) -> list[dict]:
    sides = [16, 71, 72, 100, 144, 256, 300, 500, 512, 640, 768, 800, 900, 1000, 1024, 1152, 1280, 1344, 1536,
             2048, 2500, 3552, 3553, 5000]
    rng = random.Random(0)
    pairs = [(w, h) for w in sides for h in sides] + [(rng.randint(16, 4000), rng.randint(16, 4000))
                                                      for _ in range(400)]
    cases = []
    for i, (w, h) in enumerate(pairs):
        choices = [*schedules.PIXEL_BUDGETS, schedules.AUTO_BUDGET]
        budget = choices[i % len(choices)]
        try:
            s = schedules.schedule_for_size(w, h, budget)
        except schedules.ResolutionError:
            cases.append({"width": w, "height": h, "budget": budget, "ok": False})
            continue
        hh, ww = s.image_hw
        cases.append({"width": w, "height": h, "budget": budget, "ok": True, "out_width": ww, "out_height": hh,
                      "template": s.template, "tokens": s.num_tokens, "scales": s.num_scales,
                      "text": preview_text(s, budget == schedules.AUTO_BUDGET)})
    return cases


def test_schedule_tables_route_payload(pack):
    schedules, tables = pack["schedules"], pack["tables"]
    assert json.loads(json.dumps(tables)) == tables  # plain JSON
    assert [t for t, _ in tables["templates"]] == list(schedules.TEMPLATES)
    assert dict(tables["budgets"]) == schedules.PIXEL_BUDGETS
    assert tables["vae_stride"] == schedules.VAE_STRIDE


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_size_snapping_js_matches_the_core(pack, tmp_path):
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps({"tables": pack["tables"], "cases": _cases(pack["schedules"])}))
    env = dict(os.environ, INFINITY_SCHEDULE_CASES=str(cases))
    result = subprocess.run(["node", "--test", "--test-reporter=tap", str(JS_TEST)], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout and "# skipped 0" in result.stdout, result.stdout[-2000:]
