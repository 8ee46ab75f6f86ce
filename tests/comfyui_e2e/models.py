"""Tiny stand-in model files under the exact names the example workflows (workflows/*.json) load.

Run in the test's own Python (no ComfyUI needed): torch, safetensors, transformers and PIL. The real
files are gigabytes; these have the same layouts (flat `.pth`, `{'vae': ...}` `.pth`, a sharded
folder with `model.safetensors.index.json`, an HF T5 folder with two shards, the encoder-only
T5 file the pack downloads, a spandrel-loadable upscaler) and random weights, so every workflow runs
end to end on a CPU in seconds.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file

TEXT_WIDTH = 128  # the tiny transformers' text_channels = the tiny T5's d_model


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _sharded(folder: Path, sd: dict[str, torch.Tensor], prefix: str = "model") -> None:
    """`{prefix}-00001-of-00002.safetensors`, `...00002...` and `{prefix}.safetensors.index.json`."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted(sd)
    weight_map = {}
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:])):
        name = f"{prefix}-{i + 1:05d}-of-00002.safetensors"
        save_file({k: sd[k].contiguous() for k in part}, str(folder / name))
        weight_map.update({k: name for k in part})
    total = sum(t.numel() * t.element_size() for t in sd.values())
    (folder / f"{prefix}.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))


def infinity_8b_stand_in(models: Path) -> None:
    """A patchify pair like Infinity-8B: tokenizer d=14 at stride 8, transformer 4 x 14 = 56 bits per token
    (so the loader's spatial_patchify 'auto' turns patchify on), the transformer as a sharded folder."""
    from infinity_core.model.config import InfinityConfig, VAEConfig
    from infinity_core.files.random_models import (random_tokenizer, random_transformer, tokenizer_file_state_dict,
                                             transformer_file_state_dict)
    config = InfinityConfig(depth=2, embed_dim=64, num_heads=2, bits_per_token=56, text_channels=TEXT_WIDTH)
    vae = VAEConfig(codebook_dim=14, base_ch=24, encoder_ch_mult=(1, 1, 1, 2), decoder_ch_mult=(1, 1, 1, 2),
                    patch_size=8)
    _sharded(models / "infinity" / "infinity_8b_weights", transformer_file_state_dict(random_transformer(config, 5)))
    torch.save({"vae": tokenizer_file_state_dict(random_tokenizer(vae, 6))},
               models / "infinity" / "infinity_vae_d56_f8_14_patchify.pth")


def flan_t5_stand_in(folder: Path, tokenizer_dir: Path) -> None:
    """An HF T5 encoder folder laid out like google/flan-t5-xl (config.json, two safetensors shards + index,
    tokenizer files), d_model = TEXT_WIDTH."""
    from transformers import T5Config, T5EncoderModel
    torch.manual_seed(0)
    config = T5Config(vocab_size=32128, d_model=TEXT_WIDTH, d_kv=32, d_ff=256, num_layers=1, num_heads=4,
                      feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
    model = T5EncoderModel(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    sd = {k: v for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}  # tied to shared
    _sharded(folder, sd)
    for f in tokenizer_dir.iterdir():
        shutil.copyfile(f, folder / f.name)


def t5_encoder_stand_in(folder: Path, tokenizer_dir: Path) -> Path:
    """The official encoder-only layout the pack downloads (models/text_encoders/flan-t5-xl-encoder/): one
    safetensors file (fp16, `wo` fp32) and the tokenizer files beside it."""
    from transformers import T5Config, T5EncoderModel
    torch.manual_seed(0)
    config = T5Config(vocab_size=32128, d_model=TEXT_WIDTH, d_kv=32, d_ff=256, num_layers=1, num_heads=4,
                      feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
    sd = {k: v.to(torch.float32 if k.endswith(".wo.weight") else torch.float16).contiguous()
          for k, v in T5EncoderModel(config).state_dict().items() if k != "encoder.embed_tokens.weight"}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "flan_t5_xl_encoder_fp16.safetensors"
    save_file(sd, str(path))
    for f in tokenizer_dir.iterdir():
        shutil.copyfile(f, folder / f.name)
    return path


def upscaler_stand_in(path: Path, scale: int = 4, features: int = 8) -> None:
    """A tiny RealESRGAN-compact (SRVGGNetCompact) state dict: spandrel detects it from the keys."""
    g = torch.Generator().manual_seed(7)
    sd = {"body.0.weight": torch.randn(features, 3, 3, 3, generator=g) * 0.1,
          "body.0.bias": torch.zeros(features),
          "body.1.weight": torch.full((features,), 0.25),  # PReLU
          "body.2.weight": torch.randn(features, features, 3, 3, generator=g) * 0.1,
          "body.2.bias": torch.zeros(features),
          "body.3.weight": torch.full((features,), 0.25),
          "body.4.weight": torch.randn(3 * scale * scale, features, 3, 3, generator=g) * 0.1,
          "body.4.bias": torch.zeros(3 * scale * scale)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))


def input_image(path: Path, size=(320, 240)) -> None:
    w, h = size
    x = torch.linspace(0, 1, w).view(1, w).expand(h, w)
    y = torch.linspace(0, 1, h).view(h, 1).expand(h, w)
    rgb = torch.stack([x, y, 1 - x * y], -1).mul(255).round().to(torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


HOLE = (60, 120, 160, 200)  # top, left, bottom, right of the transparent part of example_masked.png


def masked_input_image(path: Path, size=(320, 240)) -> None:
    """The example picture with a transparent rectangle (HOLE): Load Image's MASK is 1 there."""
    input_image(path, size)
    with Image.open(path) as im:
        rgba = im.convert("RGBA")
    top, left, bottom, right = HOLE
    alpha = Image.new("L", rgba.size, 255)
    alpha.paste(0, (left, top, right, bottom))
    rgba.putalpha(alpha)
    rgba.save(path)


def populate(base: Path, model_a: Path, tokenizer_dir: Path) -> dict[str, Path]:
    """Every file the example workflows name, under a ComfyUI --base-directory."""
    models = base / "models"
    for sub in ("infinity", "text_encoders", "upscale_models"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    files = {
        "infinity_2b_reg.pth": models / "infinity" / "infinity_2b_reg.pth",
        "infinity_vae_d32reg.pth": models / "infinity" / "infinity_vae_d32reg.pth",
    }
    _link_or_copy(model_a / "infinity_tiny_a.pth", files["infinity_2b_reg.pth"])
    _link_or_copy(model_a / "vae_tiny_a.pth", files["infinity_vae_d32reg.pth"])
    infinity_8b_stand_in(models)
    flan_t5_stand_in(models / "text_encoders" / "flan-t5-xl", tokenizer_dir)
    t5_encoder_stand_in(models / "text_encoders" / "flan-t5-xl-encoder", tokenizer_dir)
    upscaler_stand_in(models / "upscale_models" / "RealESRGAN_x4plus.safetensors")
    input_image(base / "input" / "example.png")
    masked_input_image(base / "input" / "example_masked.png")
    return files
