"""The pack under a fake ComfyUI (tests/comfy_fakes), for the node and workflow tests.

The pack is loaded the way ComfyUI loads it: the repo's `__init__.py` by file path under a synthetic
module name, so its relative imports resolve inside the pack and the repo root is never on sys.path.
Node `execute`s run under `torch.inference_mode()`, as ComfyUI's executor runs them. Test modules
import the fixtures they use from here.
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
from safetensors.torch import load_file, save_file

from shared_paths import MODEL_A, REPO, SHARED, TOKENIZER_DIR

FAKES = Path(__file__).resolve().parent / "comfy_fakes"
PACK = "custom_nodes_x_ComfyUI-Infinity_under_test"  # synthetic, like ComfyUI's path-derived module names

needs_shared = pytest.mark.skipif(not MODEL_A.is_dir() or not (TOKENIZER_DIR / "tokenizer.json").is_file(),
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
    rm = importlib.import_module(f"{pack.__name__}.infinity_core.files.random_models")
    config = core.VAEConfig(codebook_dim=32, base_ch=24, encoder_ch_mult=(1, 1, 1, 1, 2),
                            decoder_ch_mult=(1, 1, 1, 1, 2))
    save_file(rm.tokenizer_file_state_dict(rm.random_tokenizer(config, seed=3)), str(path))


# ---- fixtures ------------------------------------------------------------------------------------
GENERATIONS = ("0.3.64", "0.38")  # comfy_fakes.GENERATIONS: every node test runs against each ComfyUI double


@pytest.fixture(scope="module", params=GENERATIONS, ids=[f"comfy{g}" for g in GENERATIONS])
def env(request, tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_base")
    _populate(base)
    fakes = _load_by_path("comfy_fakes_under_test", FAKES / "__init__.py")
    modules = fakes.install(base, request.param)
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
                              generation=request.param, dynamic_vram=request.param == "0.38",
                              utils=modules["comfy.utils"], fp=fp, cli_args=modules["comfy.cli_args"],
                              execution=fakes.execution,
                              patcher_module=modules["comfy.model_patcher"],
                              nodes={c.GET_SCHEMA().node_id: c for c in classes},
                              core=lambda name: importlib.import_module(f"{PACK}.infinity_core.{name}"))
    _drop_modules(PACK)
    _drop_modules("comfy_fakes_under_test")


@pytest.fixture(autouse=True)
def _fresh_fake_state(request):
    if "env" in request.fixturenames:
        env = request.getfixturevalue("env")
        env.mm.reset()
        env.utils.UPDATES.clear()
        env.utils.set_progress_bar_global_hook(None)
        env.cli_args.args.preview_method = env.cli_args.LatentPreviewMethod.Auto  # as `--preview-method auto`
        env.cli_args.args.preview_size = 512
    yield


def run(env, node_id: str, linked=(), prompt: dict | None = None, extra_data: dict | None = None, **inputs):
    """Execute a node as ComfyUI's server does (comfy_fakes/execution.py): widget defaults and range checks
    first (skipped for the names in `linked`, values that come over a link), the declared hidden inputs on
    a class clone (UNIQUE_ID "42", PROMPT the queued API prompt if given), in inference mode."""
    return env.execution.execute_node(env.nodes[node_id], inputs, unique_id="42", linked=linked, prompt=prompt,
                                      extra_data=extra_data)


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


def sampler(env, models, node="InfinitySampler", linked=(), extra_data=None, **overrides):
    inputs = dict(model=models.model, positive=models.positive, seed=7, batch_size=1, cfg=3.0, tau=0.5, **SIZE)
    inputs.update(overrides)
    return run(env, node, linked=linked, extra_data=extra_data, **inputs)


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
