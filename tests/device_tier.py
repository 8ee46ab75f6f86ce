"""Runs of the nodes' sampler, decode and encode on the stand-in accelerator (`device_checker`).

Shared by `test_device_tier.py` (assertions) and `bench/device_tier.py` (the table). Each run goes
through the pack as loaded in a (fake) ComfyUI, with the released shapes (2B with its d32 tokenizer,
8B with its patchify tokenizer) built on `meta` in bf16, as a GPU would hold them. `partial` leaves
every fourth transformer block (resp. every other decoder/encoder stage) on the host, as ComfyUI's
`--lowvram` does with the modules that do not fit: the ops layers cast them per call.
"""
from __future__ import annotations

import importlib
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import torch

from device_checker import DEVICE, HOST, DeviceChecker, offload, on_device

TEXT_TOKENS = 32
SEED = 7
DTYPE = torch.bfloat16


@contextmanager
def pack_env():
    """The pack loaded against the fake ComfyUI (what pack_harness's `env` fixture gives tests)."""
    from pack_harness import FAKES, PACK, _drop_modules, _load_by_path
    saved = dict(sys.modules)
    with tempfile.TemporaryDirectory() as base:
        (Path(base) / "models").mkdir()
        fakes = _load_by_path("comfy_fakes_under_test", FAKES / "__init__.py")
        modules = fakes.install(Path(base))
        sys.modules.update(modules)
        try:
            pack = _load_by_path(PACK, Path(__file__).resolve().parents[1] / "__init__.py")
            yield SimpleNamespace(pack=pack, mm=modules["comfy.model_management"], utils=modules["comfy.utils"],
                                  core=lambda name: importlib.import_module(f"{PACK}.infinity_core.{name}"))
        finally:
            _drop_modules(PACK)
            _drop_modules("comfy_fakes_under_test")
            for name in modules:
                if name in saved:
                    sys.modules[name] = saved[name]
                else:
                    sys.modules.pop(name, None)


def _module(env, name: str):
    return importlib.import_module(f"{env.pack.__name__}.{name}")


def shapes(env, model: str):
    config = env.core("model.config")
    if model == "2b":
        return config.INFINITY_PRESETS["infinity_2b"], config.VAE_PRESETS["infinity_vae_d32"]
    return config.INFINITY_PRESETS["infinity_8b"], config.VAE_PRESETS["infinity_vae_d56_f8_14_patchify"]


def _place(env, partial: bool):
    """ComfyUI's load: the fake moves whole models; a partial load keeps the placement made here."""
    if partial:
        env.mm.load_models_gpu = lambda models, memory_required=0, force_full_load=False, **kw: None


def host_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's tensors left on the host (what a partial load streams per call)."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values() if t.device == HOST)


def transformer_handle(env, model: str, partial: bool):
    config, vae_config = shapes(env, model)
    ops = sys.modules["comfy.ops"].manual_cast
    module = on_device(env.core("model.transformer").InfinityTransformer(config, ops=ops, device=DEVICE), DTYPE).eval()
    for i, block in enumerate(module.blocks):
        if partial and i % 4 == 3:
            offload(block)
    patcher = sys.modules["comfy.model_patcher"].ModelPatcher(module, DEVICE, HOST)
    return _module(env, "nodes.types").ModelHandle(patcher, config, DTYPE, vae_config.patchify, f"infinity_{model}")


def tokenizer_handle(env, model: str, partial: bool, dtype=torch.float32):
    _, config = shapes(env, model)
    ops = sys.modules["comfy.ops"].manual_cast
    module = on_device(env.core("model.vae").BitwiseTokenizer(config, ops=ops, device=DEVICE), dtype).eval()
    for coder in (module.encoder, module.decoder):
        for i, stage in enumerate(coder.down if hasattr(coder, "down") else coder.up):
            if partial and i % 2 == 1:
                offload(stage)
    patcher = sys.modules["comfy.model_patcher"].ModelPatcher(module, DEVICE, HOST)
    return _module(env, "nodes.types").TokenizerHandle(patcher, config, dtype, f"vae_{model}")


def _use_stand_in(env, partial: bool):
    env.mm.get_torch_device = env.mm.vae_device = lambda: DEVICE
    _place(env, partial)


def sampler_run(env, model: str, batch: int, partial: bool, vae_preview: bool = False, budget: str = "1M"):
    """The Infinity Sampler node (Advanced with a VAE for decoded previews) for `batch` images at `budget`,
    cfg 3 with the learned null text, progress bar and previews on. Returns (checker with one phase per
    scale plus 'finish', the model handle)."""
    _use_stand_in(env, partial)
    handle = transformer_handle(env, model, partial)
    sampling, types = _module(env, "nodes.sampling"), _module(env, "nodes.types")
    embedding = env.core("model.conditioning").TextEmbedding
    text = embedding.from_single(torch.zeros(TEXT_TOKENS, handle.config.text_channels))
    inputs = dict(model=handle, positive=types.Conditioning(text, "a prompt"), width=1024, height=1024, budget=budget,
                  seed=SEED, batch_size=batch, cfg=3.0, tau=0.5)
    node = sampling.InfinitySampler
    if vae_preview:
        node, inputs["vae"] = sampling.InfinitySamplerAdvanced, tokenizer_handle(env, model, False)
    checker = DeviceChecker()
    env.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: checker.split(f"scale {value}"))
    try:
        with checker, torch.inference_mode():
            latent = node.execute(**inputs).args[0]
            checker.split("finish")
    finally:
        env.utils.set_progress_bar_global_hook(None)
    assert latent["samples"].device == HOST and all(b.device == HOST for b in latent["infinity"]["bits"])
    return checker, handle


def decode_run(env, model: str, batch: int, partial: bool, budget: str = "1M"):
    """Infinity Decode of a `batch` of host latents at `budget` (whole image)."""
    _use_stand_in(env, partial)
    vae = tokenizer_handle(env, model, partial)
    schedule = env.core("schedules").ScaleSchedule(1.0, budget)
    H, W = schedule.vae_grids(vae.patchify)[-1]
    latent = {"samples": torch.zeros(batch, vae.config.codebook_dim, H, W)}
    checker = DeviceChecker()
    with checker, torch.inference_mode():
        image = _module(env, "nodes.latents").decode_latent(vae, latent, 0)
    assert image.device == HOST and image.shape == (batch, *schedule.image_hw, 3)
    return checker, vae


def encode_run(env, model: str, batch: int, partial: bool, budget: str = "1M"):
    """Infinity Encode of a `batch` of host images already at the template's size."""
    _use_stand_in(env, partial)
    vae = tokenizer_handle(env, model, partial)
    schedule = env.core("schedules").ScaleSchedule(1.0, budget)
    image = torch.full((batch, *schedule.image_hw, 3), 0.5)
    checker = DeviceChecker()
    with checker, torch.inference_mode():
        latent, _ = _module(env, "nodes.latents").encode_image(vae, image, 0, 0, budget)
    assert latent["samples"].device == HOST and all(b.device == HOST for b in latent["infinity"]["bits"])
    return checker, vae
