"""The ComfyUI nodes through a fake ComfyUI: registration, loaders, text encoding, sampling, cancel.

Harness and fixtures: tests/pack_harness.py.
"""
from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from pack_harness import REPO, SCALES, _drop_modules, _load_by_path, decode, first, needs_shared, run, sampler

pytestmark = needs_shared


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
    assert len(env.nodes) == len(env.classes) == 9
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
    assert len(names) == 9
    simple = [i.id for i in env.nodes["InfinitySampler"].GET_SCHEMA().inputs]
    advanced = [i.id for i in env.nodes["InfinitySamplerAdvanced"].GET_SCHEMA().inputs]
    assert advanced[: len(simple)] == simple and len(advanced) == len(simple) + 9
    assert env.nodes["InfinitySamplerAdvanced"].execute.__func__ is env.nodes["InfinitySampler"].execute.__func__
    seed = next(i for i in env.nodes["InfinitySampler"].GET_SCHEMA().inputs if i.id == "seed")
    assert seed.control_after_generate


def test_folders_registered_without_dropping_user_paths(env):
    paths, extensions = env.fp.folder_names_and_paths["infinity"]
    assert paths == [str(env.base / "models" / "user_infinity"), str(env.base / "models" / "infinity")]
    assert {".safetensors", ".pth", ".json"} <= extensions


def test_loader_file_lists(env):
    """Each loader lists the files of its own kind (told by name and safetensors header) and the official names."""
    def options(node_id):
        return set(env.nodes[node_id].GET_SCHEMA().inputs[0].options)
    transformers = options("InfinityTransformerLoader")
    assert {"infinity_tiny_a.safetensors", "infinity_tiny_a.pth", "tiny_sharded/model.safetensors.index.json",
            "infinity_2b_reg.pth", "infinity_8b_weights/model.safetensors.index.json",
            "infinity_8b_512x512_weights/model.safetensors.index.json"} <= transformers
    assert not transformers & {"sd_unet.safetensors", "vae_tiny_a.safetensors", "infinity_vae_d32reg.pth"}
    assert not any("-of-" in name for name in transformers)
    tokenizers = options("InfinityBitwiseTokenizerLoader")
    assert {"vae_tiny_a.safetensors", "vae_d32.safetensors", "infinity_vae_d32reg.pth",
            "infinity_vae_d56_f8_14_patchify.pth"} <= tokenizers
    assert not tokenizers & {"infinity_tiny_a.safetensors", "infinity_2b_reg.pth"}
    assert not any(name.endswith(".json") or "-of-" in name for name in tokenizers)
    encoders = options("InfinityTextEncoderLoader")
    assert {"flan-t5-tiny/model.safetensors", "t5_tiny_encoder.safetensors",
            "flan-t5-xl-encoder/flan_t5_xl_encoder_fp16.safetensors"} <= encoders
    assert "not_t5.safetensors" not in encoders


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
        out = first(sampler(env, models, node="InfinitySamplerAdvanced", model=handle, stop_after_scale=3))
        assert torch.isfinite(out["samples"]).all() and len(out["infinity"]["bits"]) == 3


def test_the_loaders_build_through_the_running_comfyuis_ops_and_patcher(env, models):
    """Under dynamic VRAM (the newest ComfyUI on NVIDIA) a comfy.ops Linear has no weight until its state dict
    is loaded through it, and ComfyUI's core models go through `CoreModelPatcher` (= ModelPatcherDynamic).
    The loaders take whatever ComfyUI runs: every tensor of the file lands in the module bit for bit, and
    the sample equals the core's own model, built outside ComfyUI from the same file."""
    loading, sampler_mod = env.core("files.loading"), env.core("sampling.sampler")
    patchers = env.patcher_module
    want = patchers.ModelPatcherDynamic if env.dynamic_vram else patchers.ModelPatcher
    for handle in (models.model, models.vae, models.t5):
        assert type(handle.patcher) is want, type(handle.patcher)
        # the storage dtypes recorded as ComfyUI's own loaders do, where it asks for them
        assert any(hasattr(m, "weight_comfy_model_dtype") for m in handle.patcher.model.modules()) == \
            env.dynamic_vram
    path = env.base / "models" / "infinity" / "infinity_tiny_a.safetensors"
    handle = first(run(env, "InfinityTransformerLoader", model_name=path.name))
    _, file_sd = loading.transformer_state_dict(path)
    with torch.inference_mode():
        held = {k: v.as_subclass(torch.Tensor) for k, v in handle.patcher.model.state_dict().items()}
    assert held.keys() == file_sd.keys() and all(torch.equal(held[k], file_sd[k]) for k in file_sd)
    plain = loading.load_transformer(path)  # infinity_core's own ops, no ComfyUI
    schedule = env.core("schedules").ScaleSchedule(1.0, "0.06M")
    settings = sampler_mod.SamplerSettings(cfg=3.0, tau=0.5, top_k=0, top_p=0.97, cfg_insertion_layer=(0,))
    with torch.inference_mode():
        ours = sampler_mod.sample(plain, models.positive.embedding, schedule, generators=sampler_mod.make_generators(
            5, 1), settings=settings)
    latent = first(sampler(env, models, model=handle, seed=5))  # Infinity Sampler: the reference settings
    assert torch.equal(latent["samples"], ours.summed_codes)


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
    assert call["memory_required"] == 512 * 128 * 4 * 16  # 16 fp32 maps of [512 tokens, d_model 128]
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
    memory = env.core("sampling.memory")
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
    # the last preview: the codes summed so far, area-averaged to the scale's 8x8 grid, decoded
    z = torch.nn.functional.interpolate(out["samples"][:1], size=(8, 8), mode="area")
    with torch.no_grad():
        rgb = models.vae.patcher.model.decode(z).clamp(-1, 1).add(1).div(2)[0].permute(1, 2, 0)
    assert np.array_equal(np.asarray(previews[-1]), rgb.mul(255).round().to(torch.uint8).numpy())
    # sampling's estimate for the 5 scales that run (tiny model, 0.06M, guided; the formula term by term in
    # test_memory): its largest moment is building the RoPE table (twice its 11269 x 16 complex64) once the
    # KV cache of the 57 tokens before scale 5 (2 rows, 4 layers, C 64, K and V, fp32) and the text keys and
    # values exist; plus one 512x512 preview decode (VAE A: four 24-channel maps and RGB, float32)
    sampling = 2 * 4 * 57 * 64 * 2 * 4 + 2 * 4 * 512 * 64 * 2 * 4 + 2 * 11269 * 16 * 8
    assert env.mm.LOAD_CALLS[0]["memory_required"] == sampling + 512 * 512 * (4 * 24 + 3) * 4


def test_preview_grids_fit_512_px(env):
    def grid(hw, stride):
        return env.pack.nodes.sampling._preview_grid(hw, stride, 512)
    assert grid((16, 16), 16) == (16, 16) and grid((32, 32), 16) == (32, 32)  # 512 px: as is
    assert grid((40, 40), 16) == (32, 32) and grid((48, 32), 16) == (32, 21)  # scaled to 512 px on the long side
    assert grid((1, 64), 16) == (1, 32) and grid((1, 1), 8) == (1, 1)


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


def test_sharded_index_in_diffusion_models_is_listed_and_loads(env, models):
    source = env.base / "models" / "infinity" / "tiny_sharded"
    target = env.base / "models" / "diffusion_models" / "sharded_copy"
    shutil.copytree(source, target)
    try:
        options = env.nodes["InfinityTransformerLoader"].GET_SCHEMA().inputs[0].options
        assert "sharded_copy/model.safetensors.index.json" in options
        assert not any(name.startswith("sharded_copy/") and "-of-" in name for name in options)
        handle = first(run(env, "InfinityTransformerLoader", model_name="sharded_copy/model.safetensors.index.json"))
        assert handle.config == models.model.config
    finally:
        shutil.rmtree(target)


def test_a_sharded_text_encoder_lists_its_first_shard_only(env):
    folder = env.base / "models" / "text_encoders" / "sharded_t5"
    folder.mkdir()
    try:
        from safetensors.torch import save_file
        for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
            save_file({"encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(2, 2)}, str(folder / name))
        options = env.nodes["InfinityTextEncoderLoader"].GET_SCHEMA().inputs[0].options
        assert "sharded_t5/model-00001-of-00002.safetensors" in options
        assert "sharded_t5/model-00002-of-00002.safetensors" not in options
    finally:
        shutil.rmtree(folder)


def test_an_fp8_file_stays_fp8_by_default_when_bf16_weights_would_not_fit(env, tmp_path):
    """weight_dtype default asks ComfyUI with the file's own dtype (the dtype of most of its weights)."""
    from safetensors.torch import load_file, save_file
    sd = load_file(str(env.base / "models" / "infinity" / "infinity_tiny_a.safetensors"))
    fp8 = {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 and k.endswith(".weight") else v for k, v in sd.items()}
    path = env.base / "models" / "infinity" / "tiny_fp8.safetensors"
    save_file(fp8, str(path))
    try:
        env.mm.FREE_MEMORY = 2**19  # 512 KiB free: the 0.4M-parameter model does not fit in bf16
        handle = first(run(env, "InfinityTransformerLoader", model_name="tiny_fp8.safetensors"))
        assert handle.patcher.model.blocks[0].sa.mat_qkv.weight.dtype == torch.float8_e4m3fn
        env.mm.FREE_MEMORY = 32 * 2**30
        roomy = first(run(env, "InfinityTransformerLoader", model_name="tiny_fp8.safetensors"))
        assert roomy.patcher.model.blocks[0].sa.mat_qkv.weight.dtype == torch.float32
    finally:
        path.unlink()


def test_a_text_encoder_folder_with_its_own_tokenizer_does_not_need_comfyuis(env, models):
    bundled = env.base / "comfy" / "text_encoders" / "t5_tokenizer"
    bundled.rename(bundled.with_name("moved_away"))
    try:
        own = first(run(env, "InfinityTextEncoderLoader", text_encoder_name="flan-t5-tiny/model.safetensors"))
        assert own.encoder.tokenizer("a fox").input_ids == models.t5.encoder.tokenizer("a fox").input_ids
    finally:
        bundled.with_name("moved_away").rename(bundled)
