"""The ComfyUI nodes, run through a fake ComfyUI (tests/comfy_fakes) on the tiny reference models.

The pack is loaded the way ComfyUI loads it: the repo's `__init__.py` by file path under a synthetic
module name, so its relative imports resolve inside the pack and the repo root is never on sys.path.
Node `execute`s run under `torch.inference_mode()`, as ComfyUI's executor runs them.
"""
from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from shared_paths import MODEL_A, REPO, SHARED, TOKENIZER_DIR

FAKES = Path(__file__).resolve().parent / "comfy_fakes"
PACK = "custom_nodes_x_ComfyUI-Infinity_under_test"  # synthetic, like ComfyUI's path-derived module names

pytestmark = pytest.mark.skipif(not MODEL_A.is_dir() or not (TOKENIZER_DIR / "tokenizer.json").is_file(),
                                reason=f"shared fixtures not found under {SHARED}")

SIZE = dict(width=256, height=256, budget="0.06M")  # template 1.0, 7 scales, 16x16 latent, 256x256 px
SCALES = 7


def _load_by_path(name: str, init_file: Path):
    spec = importlib.util.spec_from_file_location(name, init_file, submodule_search_locations=[str(init_file.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _drop_modules(prefix: str) -> None:
    for key in [k for k in sys.modules if k == prefix or k.startswith(prefix + ".")]:
        del sys.modules[key]


# ---- model files ---------------------------------------------------------------------------------
def _tiny_t5(models: Path) -> None:
    from transformers import T5Config, T5EncoderModel
    torch.manual_seed(0)
    config = T5Config(vocab_size=32128, d_model=128, d_kv=32, d_ff=256, num_layers=1, num_heads=4,
                      feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
    hf = T5EncoderModel(config).eval()
    folder = models / "text_encoders" / "flan-t5-tiny"
    hf.save_pretrained(folder)
    for f in TOKENIZER_DIR.iterdir():
        shutil.copy(f, folder / f.name)
    sd = {k: v.clone().contiguous() for k, v in hf.state_dict().items() if k != "encoder.embed_tokens.weight"}
    save_file(sd, str(models / "text_encoders" / "t5_tiny_encoder.safetensors"))


def _sharded(folder: Path) -> None:
    sd = load_file(str(MODEL_A / "infinity_tiny_a.safetensors"))
    keys = sorted(sd)
    folder.mkdir(parents=True)
    weight_map = {}
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:])):
        name = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: sd[k] for k in part}, str(folder / name))
        weight_map.update({k: name for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _populate(base: Path) -> None:
    models = base / "models"
    for sub in ("infinity", "diffusion_models", "vae", "text_encoders", "user_infinity"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    (models / "infinity" / "infinity_tiny_a.safetensors").symlink_to(MODEL_A / "infinity_tiny_a.safetensors")
    (models / "infinity" / "vae_tiny_a.safetensors").symlink_to(MODEL_A / "vae_tiny_a.safetensors")
    (models / "diffusion_models" / "infinity_tiny_a.pth").symlink_to(MODEL_A / "infinity_tiny_a.pth")
    (models / "text_encoders" / "not_t5.safetensors").symlink_to(MODEL_A / "vae_tiny_a.safetensors")
    save_file({"input_blocks.0.0.weight": torch.zeros(4, 4)}, str(models / "diffusion_models" / "sd_unet.safetensors"))
    _sharded(models / "infinity" / "tiny_sharded")
    _tiny_t5(models)
    bundled = base / "comfy" / "text_encoders" / "t5_tokenizer"  # ComfyUI ships the T5 tokenizer here
    bundled.parent.mkdir(parents=True)
    shutil.copytree(TOKENIZER_DIR, bundled)


def _d32_tokenizer(pack, path: Path) -> None:
    """A tokenizer with 32 bits per cell: does not fit the d16 tiny transformer."""
    core = importlib.import_module(f"{pack.__name__}.infinity_core")
    rm = importlib.import_module(f"{pack.__name__}.infinity_core.random_models")
    config = core.VAEConfig(codebook_dim=32, base_ch=24, encoder_ch_mult=(1, 1, 1, 1, 2),
                            decoder_ch_mult=(1, 1, 1, 1, 2))
    save_file(rm.tokenizer_file_state_dict(rm.random_tokenizer(config, seed=3)), str(path))


# ---- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_base")
    _populate(base)
    fakes = _load_by_path("comfy_fakes_under_test", FAKES / "__init__.py")
    modules = fakes.install(base)
    with pytest.MonkeyPatch.context() as mp:
        for name, module in modules.items():
            mp.setitem(sys.modules, name, module)
        fp = modules["folder_paths"]
        fp.add_model_folder_path("infinity", str(base / "models" / "user_infinity"))  # as extra_model_paths.yaml
        pack = _load_by_path(PACK, REPO / "__init__.py")
        extension = asyncio.run(pack.comfy_entrypoint())
        classes = asyncio.run(extension.get_node_list())
        _d32_tokenizer(pack, base / "models" / "vae" / "vae_d32.safetensors")
        yield SimpleNamespace(base=base, pack=pack, classes=classes, mm=modules["comfy.model_management"],
                              utils=modules["comfy.utils"], fp=fp,
                              nodes={c.GET_SCHEMA().node_id: c for c in classes},
                              core=lambda name: importlib.import_module(f"{PACK}.infinity_core.{name}"))
    _drop_modules(PACK)
    _drop_modules("comfy_fakes_under_test")


@pytest.fixture(autouse=True)
def _fresh_fake_state(request):
    if "env" in request.fixturenames:
        env = request.getfixturevalue("env")
        env.mm.TOTAL_MEMORY, env.mm.FREE_MEMORY = 64 * 2**30, 32 * 2**30
        env.mm.interrupt_current_processing(False)
        env.mm.LOAD_CALLS.clear()
        env.utils.UPDATES.clear()
        env.utils.set_progress_bar_global_hook(None)
    yield


def run(env, node_id: str, **inputs):
    """Execute a node as ComfyUI does: on a class clone carrying the hidden inputs, in inference mode."""
    cls = env.nodes[node_id].PREPARE_CLASS_CLONE({"UNIQUE_ID": "42"})
    with torch.inference_mode():
        return cls.execute(**inputs)


def first(output):
    return output.args[0]


@pytest.fixture(scope="module")
def models(env):
    model = first(run(env, "InfinityTransformerLoader", model_name="infinity_tiny_a.safetensors",
                      weight_dtype="default", spatial_patchify="auto"))
    vae = first(run(env, "InfinityBitwiseTokenizerLoader", vae_name="vae_tiny_a.safetensors"))
    t5 = first(run(env, "InfinityTextEncoderLoader", text_encoder_name="flan-t5-tiny/model.safetensors",
                   dtype="default"))
    positive = first(run(env, "InfinityTextEncode", text_encoder=t5, text="a red fox in the snow"))
    negative = first(run(env, "InfinityTextEncode", text_encoder=t5, text="blurry"))
    return SimpleNamespace(model=model, vae=vae, t5=t5, positive=positive, negative=negative)


def sampler(env, models, node="InfinitySampler", **overrides):
    inputs = dict(model=models.model, positive=models.positive, seed=7, batch_size=1, cfg=3.0, tau=0.5, **SIZE)
    inputs.update(overrides)
    return run(env, node, **inputs)


def decode(env, models, latent, tile_size=0):
    return first(run(env, "InfinityDecode", samples=latent, vae=models.vae, tile_size=tile_size))


def expect_error(fn, *needles, kind=Exception):
    with pytest.raises(kind) as info:
        fn()
    message = str(info.value)
    assert "HINT:" in message, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in: {message}"
    return info.value


@pytest.fixture(scope="module")
def gradient_image():
    y, x = torch.meshgrid(torch.linspace(0, 1, 300), torch.linspace(0, 1, 280), indexing="ij")
    return torch.stack([x, y, (x + y) / 2], -1)[None]  # [1, 300, 280, 3]


# ---- registration and schemas --------------------------------------------------------------------
def test_root_init_is_inert_without_comfyui(monkeypatch):
    monkeypatch.setitem(sys.modules, "comfy_api", None)  # import comfy_api -> ImportError
    name = "ComfyUI-Infinity_without_comfy"
    try:
        module = _load_by_path(name, REPO / "__init__.py")
        assert module.WEB_DIRECTORY == "./web"
        assert not hasattr(module, "comfy_entrypoint") and not hasattr(module, "NODE_CLASS_MAPPINGS")
        assert f"{name}.nodes" not in sys.modules
    finally:
        _drop_modules(name)


def test_entrypoint_and_schemas(env):
    assert not hasattr(env.pack, "NODE_CLASS_MAPPINGS")  # it would make ComfyUI ignore comfy_entrypoint
    assert len(env.nodes) == len(env.classes) == 8
    names = set()
    for node_id, cls in env.nodes.items():
        schema = cls.GET_SCHEMA()
        assert node_id.startswith("Infinity") and schema.category.startswith("Infinity")
        assert schema.description and schema.display_name.startswith("Infinity")
        names.add(schema.display_name)
        for item in schema.inputs:
            assert item.tooltip, f"{node_id}.{item.id} has no tooltip"
        for item in schema.outputs:
            assert item.tooltip, f"{node_id} output has no tooltip"
    assert len(names) == 8
    simple = [i.id for i in env.nodes["InfinitySampler"].GET_SCHEMA().inputs]
    advanced = [i.id for i in env.nodes["InfinitySamplerAdvanced"].GET_SCHEMA().inputs]
    assert advanced[: len(simple)] == simple and len(advanced) == len(simple) + 8
    assert env.nodes["InfinitySamplerAdvanced"].execute.__func__ is env.nodes["InfinitySampler"].execute.__func__
    seed = next(i for i in env.nodes["InfinitySampler"].GET_SCHEMA().inputs if i.id == "seed")
    assert seed.control_after_generate


def test_folders_registered_without_dropping_user_paths(env):
    paths, extensions = env.fp.folder_names_and_paths["infinity"]
    assert paths == [str(env.base / "models" / "user_infinity"), str(env.base / "models" / "infinity")]
    assert {".safetensors", ".pth", ".json"} <= extensions


def test_loader_file_lists(env):
    def options(node_id):
        return env.nodes[node_id].GET_SCHEMA().inputs[0].options
    transformers = options("InfinityTransformerLoader")
    assert {"infinity_tiny_a.safetensors", "infinity_tiny_a.pth", "tiny_sharded/model.safetensors.index.json",
            "sd_unet.safetensors"} <= set(transformers)
    assert not any("-of-" in name for name in transformers)
    tokenizers = options("InfinityBitwiseTokenizerLoader")
    assert "vae_tiny_a.safetensors" in tokenizers and "vae_d32.safetensors" in tokenizers
    assert not any(name.endswith(".json") or "-of-" in name for name in tokenizers)
    encoders = set(options("InfinityTextEncoderLoader"))
    assert {"flan-t5-tiny/model.safetensors", "t5_tiny_encoder.safetensors"} <= encoders


# ---- loaders -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, dtype, patchify, storage", [
    ("tiny_sharded/model.safetensors.index.json", "bf16", "off", torch.bfloat16),
    ("infinity_tiny_a.pth", "fp8_e4m3fn", "on", torch.float8_e4m3fn),
])
def test_transformer_loader_variants(env, models, name, dtype, patchify, storage):
    handle = first(run(env, "InfinityTransformerLoader", model_name=name, weight_dtype=dtype,
                       spatial_patchify=patchify))
    module = handle.patcher.model
    assert handle.config == models.model.config and handle.patchify == (patchify == "on")
    assert handle.compute_dtype == torch.float32  # no bf16 compute on a CPU
    assert module.blocks[0].sa.mat_qkv.weight.dtype == storage
    assert module.cfg_uncond.dtype == (torch.float32 if storage == torch.float8_e4m3fn else storage)
    assert type(module.head).__module__.endswith("ops") and module.head.comfy_cast_weights
    if patchify == "off":  # the bf16 model samples (fp8 with forced patchify cannot pair with d16 latents)
        out = first(sampler(env, models, model=handle, stop_after_scale=3))
        assert torch.isfinite(out["samples"]).all() and len(out["infinity"]["bits"]) == 3


def test_default_loaders(models):
    assert models.model.patchify is False and models.model.compute_dtype == torch.float32
    assert models.model.patcher.load_device == torch.device("cpu")
    assert models.vae.config.codebook_dim == 16 and models.vae.dtype == torch.float32
    assert models.t5.encoder.hidden_size == 128


def test_text_encoder_folder_and_single_file_agree(env, models):
    single = first(run(env, "InfinityTextEncoderLoader", text_encoder_name="t5_tiny_encoder.safetensors", dtype="fp32"))
    cond = first(run(env, "InfinityTextEncode", text_encoder=single, text="a red fox in the snow"))
    assert cond.embedding.lens == models.positive.embedding.lens
    torch.testing.assert_close(cond.embedding.features_NC, models.positive.embedding.features_NC)
    assert cond.embedding.features_NC.device.type == "cpu" and cond.prompt == "a red fox in the snow"
    call = env.mm.LOAD_CALLS[-1]
    assert call["force_full_load"] and call["models"] == [single.patcher]
    assert single.patcher.model.t5 is single.encoder.model


def test_empty_text_gives_empty_conditioning(env, models):
    cond = first(run(env, "InfinityTextEncode", text_encoder=models.t5, text="  \n"))
    assert cond.empty and not env.mm.LOAD_CALLS


# ---- text to image -------------------------------------------------------------------------------
def test_text_to_image(env, models):
    out = sampler(env, models, negative=models.negative)
    latent = first(out)
    info = latent["infinity"]
    assert latent["samples"].shape == (1, 16, 16, 16) and latent["samples"].dtype == torch.float32
    assert [tuple(b.shape) for b in info["bits"]] == [(1, 1, h, h, 16) for h in (1, 2, 4, 6, 8, 12, 16)]
    assert all(b.dtype == torch.uint8 for b in info["bits"])
    assert (info["template"], info["budget"], info["patchify"], info["codebook_dim"]) == (1.0, "0.06M", False, 16)
    assert "256x256 px" in out.ui.as_dict()["text"][0]
    updates = env.utils.UPDATES
    assert [u["value"] for u in updates] == list(range(1, SCALES + 1)) and {u["node_id"] for u in updates} == {"42"}
    assert all(u["preview"][0] == "JPEG" and isinstance(u["preview"][1], Image.Image) and u["preview"][2] == 512
               for u in updates)
    memory = env.core("memory")
    schedule = env.core("schedules").ScaleSchedule(1.0, "0.06M")
    expected = memory.sampling_bytes(models.model.config, schedule, 1, True, torch.float32)
    assert env.mm.LOAD_CALLS[0]["memory_required"] == expected
    assert env.mm.LOAD_CALLS[0]["models"] == [models.model.patcher]
    image = decode(env, models, latent)
    assert image.shape == (1, 256, 256, 3) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1 and image.std() > 0.01


def test_width_height_snap_to_a_template(env, models):
    out = sampler(env, models, width=1000, height=1500)
    assert first(out)["samples"].shape[-2:] == (21, 14)  # h/w template 1.5 at 0.06M: 336x224 px
    text = out.ui.as_dict()["text"][0]
    assert "224x336 px" in text and "asked for 1000x1500" in text


def test_batch_image_equals_single_run_with_seed_plus_i(env, models):
    batch = first(sampler(env, models, seed=5, batch_size=2))
    for i in range(2):
        single = first(sampler(env, models, seed=5 + i))
        for b_batch, b_single in zip(batch["infinity"]["bits"], single["infinity"]["bits"]):
            assert torch.equal(b_batch[i:i + 1], b_single)
        torch.testing.assert_close(batch["samples"][i:i + 1], single["samples"])


def test_cancel_frees_the_cache_and_leaves_no_trace(env, models):
    reference = first(sampler(env, models, seed=11))
    module, freed, free = models.model.patcher.model, [], models.model.patcher.model.free

    def spy(state):
        freed.append(state)
        free(state)
    module.free = spy
    env.utils.set_progress_bar_global_hook(
        lambda value, total, preview, node_id=None: value == 3 and env.mm.interrupt_current_processing(True))
    env.utils.UPDATES.clear()
    try:
        with pytest.raises(env.mm.InterruptProcessingException):
            sampler(env, models, seed=11)
    finally:
        del module.free
        env.utils.set_progress_bar_global_hook(None)
    assert [u["value"] for u in env.utils.UPDATES] == [1, 2, 3]  # stopped right after the scale that saw Cancel
    assert len(freed) == 1 and all(c.k is None and c.v is None for c in freed[0].caches)
    assert not env.mm.processing_interrupted()
    again = first(sampler(env, models, seed=11))
    assert all(torch.equal(a, b) for a, b in zip(again["infinity"]["bits"], reference["infinity"]["bits"]))
    assert torch.equal(again["samples"], reference["samples"])


def test_advanced_preview_with_vae_and_settings(env, models):
    out = first(sampler(env, models, node="InfinitySamplerAdvanced", vae=models.vae, cfg_list="1,2,3,3,3,3,3,9",
                        tau_list="", top_k=1, top_p=0.0, cfg_insertion_layer=-1, stop_after_scale=5))
    previews = [u["preview"][1] for u in env.utils.UPDATES]
    assert [p.size for p in previews] == [(16 * h, 16 * h) for h in (1, 2, 4, 6, 8)]
    assert out["samples"].shape == (1, 16, 16, 16)
    assert env.mm.LOAD_CALLS[0]["models"] == [models.model.patcher, models.vae.patcher]


def test_a_single_number_in_a_list_widget_applies_to_every_scale(env, models):
    plain = first(sampler(env, models, node="InfinitySamplerAdvanced", seed=4, cfg=2.0, tau=0.7, stop_after_scale=3))
    listed = first(sampler(env, models, node="InfinitySamplerAdvanced", seed=4, cfg_list="2", tau_list="0.7",
                           stop_after_scale=3))
    assert torch.equal(plain["samples"], listed["samples"])


def test_stop_early_then_continue_equals_a_full_run(env, models):
    full = first(sampler(env, models, seed=3))
    env.utils.UPDATES.clear()
    partial = sampler(env, models, node="InfinitySamplerAdvanced", seed=3, stop_after_scale=3)
    assert len(first(partial)["infinity"]["bits"]) == 3 and "3 scales" in partial.ui.as_dict()["text"][0]
    assert [u["total"] for u in env.utils.UPDATES] == [3, 3, 3]
    resumed = first(sampler(env, models, node="InfinitySamplerAdvanced", seed=3, latent_image=first(partial),
                            regenerate_from_scale=3))
    assert all(torch.equal(a, b) for a, b in zip(resumed["infinity"]["bits"], full["infinity"]["bits"]))
    assert torch.equal(resumed["samples"], full["samples"])


# ---- image to image ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def encoded(env, models, gradient_image):
    return first(run(env, "InfinityEncode", image=gradient_image, vae=models.vae, width=256, height=256,
                     budget="0.06M"))


def test_encode_layout(encoded):
    assert encoded["samples"].shape == (1, 16, 16, 16)
    assert len(encoded["infinity"]["bits"]) == SCALES and encoded["infinity"]["budget"] == "0.06M"


def test_encode_size_from_image_aspect(env, models, gradient_image):
    out = run(env, "InfinityEncode", image=gradient_image[:, :, :200], vae=models.vae, width=0, height=0,
              budget="0.06M")  # 300x200 (h x w): h/w 1.5
    assert first(out)["samples"].shape[-2:] == (21, 14) and "224x336 px" in out.ui.as_dict()["text"][0]


def test_encode_width_or_height_alone_is_refused(env, models, gradient_image):
    schema = {i.id: i for i in env.nodes["InfinityEncode"].GET_SCHEMA().inputs}
    max_side = env.core("schedules").MAX_SIDE
    assert (schema["width"].min, schema["width"].max) == (schema["height"].min, schema["height"].max) == (0, max_side)
    resolution = env.core("errors").ResolutionError
    for width, height, named, missing in ((512, 0, "width", "height"), (0, 768, "height", "width")):
        err = expect_error(lambda: run(env, "InfinityEncode", image=gradient_image, vae=models.vae, width=width,
                                       height=height, budget="0.06M"), f"{named}: ", f"set {missing} too",
                           kind=resolution)
        assert "both to 0" in err.hint
    assert not env.mm.LOAD_CALLS


def test_encode_splits_a_batch_to_the_free_memory(env, models, gradient_image, monkeypatch):
    memory, schedules = env.core("memory"), env.core("schedules")
    pair = torch.cat([gradient_image, gradient_image.flip(1)])
    singles = [first(run(env, "InfinityEncode", image=pair[i:i + 1], vae=models.vae, **SIZE)) for i in range(2)]
    env.mm.LOAD_CALLS.clear()
    env.mm.FREE_MEMORY = 1  # one image per encoder call
    calls, tokenizer = [], models.vae.patcher.model
    image_to_bits = tokenizer.image_to_bits
    monkeypatch.setitem(tokenizer.__dict__, "image_to_bits",
                        lambda x, grids: calls.append(x.shape[0]) or image_to_bits(x, grids))
    both = first(run(env, "InfinityEncode", image=pair, vae=models.vae, **SIZE))
    assert calls == [1, 1]
    per_image = memory.encode_bytes(models.vae.config, schedules.ScaleSchedule(1.0, "0.06M").image_hw, 1,
                                    torch.float32)
    assert [c["memory_required"] for c in env.mm.LOAD_CALLS] == [per_image]
    assert torch.equal(both["samples"], torch.cat([s["samples"] for s in singles]))
    for si, bits in enumerate(both["infinity"]["bits"]):
        assert torch.equal(bits, torch.cat([s["infinity"]["bits"][si] for s in singles]))
    env.mm.interrupt_current_processing(True)  # Cancel is checked after every chunk
    with pytest.raises(env.mm.InterruptProcessingException):
        run(env, "InfinityEncode", image=pair, vae=models.vae, **SIZE)


def test_image_to_image_with_every_scale_kept_reproduces_the_image(env, models, encoded):
    out = first(sampler(env, models, node="InfinitySamplerAdvanced", latent_image=encoded,
                        regenerate_from_scale=SCALES, seed=1))
    assert torch.equal(out["samples"], encoded["samples"])
    assert all(torch.equal(a, b) for a, b in zip(out["infinity"]["bits"], encoded["infinity"]["bits"]))
    assert torch.equal(decode(env, models, out), decode(env, models, encoded))


def test_denoise_keeps_the_coarse_scales(env, models, encoded):
    out = sampler(env, models, latent_image=encoded, denoise=0.5, seed=2)  # round(0.5 * 7) = 4 scales kept
    bits, ref = first(out)["infinity"]["bits"], encoded["infinity"]["bits"]
    assert all(torch.equal(bits[si], ref[si]) for si in range(4))
    assert not all(torch.equal(bits[si], ref[si]) for si in range(4, SCALES))
    assert "4 from the image" in out.ui.as_dict()["text"][0]


def test_bits_survive_core_latent_nodes(env, models, encoded):
    repeated = dict(encoded, samples=encoded["samples"].repeat(3, 1, 1, 1))  # RepeatLatentBatch
    out = first(sampler(env, models, node="InfinitySamplerAdvanced", latent_image=repeated,
                        regenerate_from_scale=SCALES))
    assert out["samples"].shape[0] == 3 and all(torch.equal(s, encoded["samples"][0]) for s in out["samples"])
    sliced = dict(repeated, samples=repeated["samples"][1:2], batch_index=[1])  # LatentFromBatch keeps extras
    out = first(sampler(env, models, node="InfinitySamplerAdvanced", latent_image=sliced,
                        regenerate_from_scale=SCALES))
    assert torch.equal(out["samples"], encoded["samples"])
    loaded = {"samples": encoded["samples"].clone()}  # LoadLatent: extras lost, bits re-quantised
    out = first(sampler(env, models, node="InfinitySamplerAdvanced", latent_image=loaded, regenerate_from_scale=2))
    assert out["samples"].shape == (1, 16, 16, 16) and len(out["infinity"]["bits"]) == SCALES
    single = first(sampler(env, models, latent_image=encoded, denoise=0.6, batch_size=2))
    assert single["samples"].shape[0] == 2


@pytest.mark.parametrize("info", [{"template": 1.0}, "junk",
                                  {"bits": None, "template": 1.0, "budget": "0.06M", "patchify": False},
                                  {"bits": [], "template": 7.0, "budget": "0.06M", "patchify": False}])
def test_a_damaged_infinity_entry_is_treated_as_missing(env, models, encoded, info):
    damaged = dict(encoded, infinity=info)  # e.g. written by another pack: schedule and bits re-derived
    out = first(sampler(env, models, node="InfinitySamplerAdvanced", latent_image=damaged, regenerate_from_scale=2))
    assert out["samples"].shape == (1, 16, 16, 16) and len(out["infinity"]["bits"]) == SCALES
    assert decode(env, models, damaged).shape == (1, 256, 256, 3)


# ---- decode --------------------------------------------------------------------------------------
def test_decode_tiled_and_batched(env, models, encoded):
    whole = decode(env, models, encoded)
    tiled = decode(env, models, encoded, tile_size=8)  # per-tile GroupNorm statistics: close, not equal
    assert tiled.shape == whole.shape and 0 <= tiled.min() and tiled.max() <= 1 and tiled.std() > 0.01
    assert torch.equal(decode(env, models, encoded, tile_size=64), whole)  # a tile covering the grid: exact
    batch = dict(encoded, samples=encoded["samples"].repeat(2, 1, 1, 1))
    env.mm.FREE_MEMORY = 1  # one image per decoder call
    torch.testing.assert_close(decode(env, models, batch), whole.repeat(2, 1, 1, 1))


def test_tiled_decode_of_a_local_decoder_is_exact(env, models, monkeypatch):
    """With a decoder whose every output pixel depends on one latent cell only (nearest upsampling of
    channels 0..2), the blended tiles must give exactly the whole-image decode; values are powers of two
    (or 0), so the linear blend is exact in floating point too."""
    import torch.nn.functional as F
    f = models.vae.config.patch_size
    monkeypatch.setitem(models.vae.patcher.model.decoder.__dict__, "forward",
                        lambda z: F.interpolate(z[:, :3], scale_factor=f, mode="nearest"))
    g = torch.Generator().manual_seed(0)
    latent = {"samples": torch.randint(-2, 3, (2, 16, 24, 40), generator=g).float() / 2}  # -1, -0.5, 0, 0.5, 1
    whole = decode(env, models, latent)
    assert whole.shape == (2, 24 * f, 40 * f, 3)
    torch.testing.assert_close(whole, latent["samples"][:, :3].add(1).div(2).repeat_interleave(f, 2)
                               .repeat_interleave(f, 3).permute(0, 2, 3, 1), rtol=0, atol=0)
    for tile in (8, 12, 20):
        assert torch.equal(decode(env, models, latent, tile_size=tile), whole), tile


# ---- bad input: each error names the widget / file and gives a hint --------------------------------
@pytest.mark.parametrize("node, inputs, needles", [
    ("InfinityTransformerLoader", dict(model_name="vae_tiny_a.safetensors"), ("model_name", "vae_tiny_a.safetensors")),
    ("InfinityTransformerLoader", dict(model_name="sd_unet.safetensors"), ("model_name", "sd_unet.safetensors")),
    ("InfinityTransformerLoader", dict(model_name="missing.pth"), ("model_name", "missing.pth", "not found")),
    ("InfinityBitwiseTokenizerLoader", dict(vae_name="infinity_tiny_a.safetensors"),
     ("vae_name", "infinity_tiny_a.safetensors")),
    ("InfinityTextEncoderLoader", dict(text_encoder_name="not_t5.safetensors"), ("text_encoder_name", "not_t5")),
])
def test_loaders_reject_wrong_files(env, node, inputs, needles):
    expect_error(lambda: run(env, node, **inputs), *needles)


def test_bad_sampler_inputs(env, models, encoded):
    core_errors = env.core("errors")
    expect_error(lambda: sampler(env, models, width=8), "width", kind=core_errors.ResolutionError)
    expect_error(lambda: sampler(env, models, width=16, height=16), "width/height")
    expect_error(lambda: sampler(env, models, width=100, height=3000), "width/height")
    empty = first(run(env, "InfinityTextEncode", text_encoder=models.t5, text=""))
    expect_error(lambda: sampler(env, models, positive=empty), "positive", "'text'", kind=core_errors.PromptError)
    foreign = {"samples": torch.zeros(1, 4, 32, 32)}
    expect_error(lambda: sampler(env, models, latent_image=foreign), "latent_image", "another model family")
    emb = models.negative.embedding
    three = type(models.negative)(type(emb).cat([emb, emb, emb]), "x")
    expect_error(lambda: sampler(env, models, negative=three, batch_size=2), "negative", "3 prompts")
    narrow = type(models.negative)(type(emb)(emb.features_NC[:, :64], emb.lens), "x")
    expect_error(lambda: sampler(env, models, positive=narrow), "positive", "128")
    advanced = "InfinitySamplerAdvanced"
    expect_error(lambda: sampler(env, models, node=advanced, cfg_list="3, x"), "cfg_list")
    expect_error(lambda: sampler(env, models, node=advanced, tau_list="0.5, 0.5"), "tau_list", "7 scales")
    expect_error(lambda: sampler(env, models, node=advanced, cfg_list="3, 3"), "cfg_list", "7 scales")
    expect_error(lambda: sampler(env, models, node=advanced, cfg_insertion_layer=-9), "cfg_insertion_layer")
    sampling_error = core_errors.SamplingError
    expect_error(lambda: sampler(env, models, tau=0.0), "tau: ", "above 0", kind=sampling_error)
    expect_error(lambda: sampler(env, models, node=advanced, tau_list="0.5, 0.5, 0, 0.5, 0.5, 0.5, 0.5"),
                 "tau_list: ", "above 0", kind=sampling_error)
    expect_error(lambda: sampler(env, models, node=advanced, top_p=1.5), "top_p 1.5", kind=sampling_error)
    expect_error(lambda: sampler(env, models, node=advanced, top_k=-1), "top_k -1", kind=sampling_error)
    expect_error(lambda: sampler(env, models, budget="2M"), "budget: ", "2M", kind=core_errors.ResolutionError)
    expect_error(lambda: sampler(env, models, denoise=0.5), "denoise", "latent_image")
    expect_error(lambda: sampler(env, models, node=advanced, latent_image=encoded, regenerate_from_scale=9),
                 "regenerate_from_scale")
    two = dict(encoded, samples=encoded["samples"].repeat(2, 1, 1, 1))
    expect_error(lambda: sampler(env, models, latent_image=two, batch_size=3), "batch_size")
    assert not env.mm.LOAD_CALLS  # every error above comes before any model is loaded
    env.mm.TOTAL_MEMORY = 2**20
    expect_error(lambda: sampler(env, models), "MiB", "batch_size", kind=core_errors.MemoryBudgetError)
    assert not env.mm.LOAD_CALLS  # refused before loading anything


def test_vae_that_does_not_match_the_model(env, models, encoded, gradient_image):
    d32 = first(run(env, "InfinityBitwiseTokenizerLoader", vae_name="vae_d32.safetensors"))
    incompatible = env.core("errors").IncompatibleModelsError
    expect_error(lambda: sampler(env, models, node="InfinitySamplerAdvanced", vae=d32), "vae", "32 bits",
                 kind=incompatible)
    expect_error(lambda: run(env, "InfinityDecode", samples=encoded, vae=d32, tile_size=0), "samples", "16 channels",
                 kind=incompatible)
    latent32 = first(run(env, "InfinityEncode", image=gradient_image, vae=d32, width=0, height=0, budget="0.06M"))
    expect_error(lambda: sampler(env, models, latent_image=latent32, denoise=0.5), "latent_image", "32 channels",
                 kind=incompatible)
    expect_error(lambda: run(env, "InfinityDecode", samples={"samples": torch.zeros(1, 4, 8, 8)}, vae=models.vae),
                 "samples", "another model family")
    expect_error(lambda: decode(env, models, encoded, tile_size=3), "tile_size")
    patchified = dict(encoded, infinity=dict(encoded["infinity"], patchify=True))  # same channels, other layout
    expect_error(lambda: sampler(env, models, latent_image=patchified, denoise=0.5), "latent_image: ",
                 "with spatial patchify", kind=incompatible)
    expect_error(lambda: decode(env, models, patchified), "samples: ", "with spatial patchify", kind=incompatible)
