"""Tiny models under the official repository paths, for the stand-in hub (tests/hub_server.py).

FoundationVision/Infinity gets the tiny fixture models as `infinity_2b_reg.pth` / `infinity_vae_d32reg.pth`,
a patchify pair as `infinity_8b_weights/` (index + 2 shards) and `infinity_vae_d56_f8_14_patchify.pth`;
google/flan-t5-xl a tiny encoder-decoder T5 (d_model 128, what the tiny transformers read) in two
safetensors shards laid out like the release (decoder and encoder tensors interleaved across shards, the
embedding under `shared.weight`, an untied `lm_head`), plus its tokenizer files.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from comfyui_e2e import models as e2e
from shared_paths import MODEL_A, TOKENIZER_DIR

INFINITY = "FoundationVision/Infinity"
T5 = "google/flan-t5-xl"


def tiny_t5_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    from transformers import T5Config, T5ForConditionalGeneration
    torch.manual_seed(seed)
    config = T5Config(vocab_size=32128, d_model=e2e.TEXT_WIDTH, d_kv=32, d_ff=256, num_layers=2, num_decoder_layers=1,
                      num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    model = T5ForConditionalGeneration(config).eval()
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    for tied in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        sd.pop(tied, None)  # stored once, as shared.weight, as in the released safetensors
    sd.setdefault("lm_head.weight", torch.randn(config.vocab_size, config.d_model) * 0.05)
    return sd


def t5_shards(sd: dict[str, torch.Tensor], folder: Path) -> list[str]:
    """Two shards; shard 1 holds the first encoder block and the decoder, shard 2 the rest (so each shard
    has encoder runs separated by decoder bytes)."""
    keys = sorted(sd)
    first = [k for k in keys if k.startswith(("decoder.", "encoder.block.0."))]
    second = [k for k in keys if k not in first]
    weight_map = {}
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, part in enumerate((first, second)):
        name = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: sd[k] for k in part}, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
        names.append(name)
    total = sum(t.numel() * t.element_size() for t in sd.values())
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                      "weight_map": weight_map}, indent=2))
    return names + ["model.safetensors.index.json"]


def populate(hub, tmp: Path) -> dict:
    """Every official file, tiny, on the stand-in hub; returns what tests compare against."""
    tmp = Path(tmp)
    hub.add(INFINITY, "infinity_2b_reg.pth", (MODEL_A / "infinity_tiny_a.pth").read_bytes())
    hub.add(INFINITY, "infinity_vae_d32reg.pth", (MODEL_A / "vae_tiny_a.pth").read_bytes())
    e2e.infinity_8b_stand_in(tmp / "models")
    weights = tmp / "models" / "infinity" / "infinity_8b_weights"
    for folder in ("infinity_8b_weights", "infinity_8b_512x512_weights"):
        for f in sorted(weights.iterdir()):
            hub.add(INFINITY, f"{folder}/{f.name}", f.read_bytes())
    hub.add(INFINITY, "infinity_vae_d56_f8_14_patchify.pth",
            (tmp / "models" / "infinity" / "infinity_vae_d56_f8_14_patchify.pth").read_bytes())
    sd = tiny_t5_state_dict()
    t5_dir = tmp / "flan-t5-xl"
    for name in t5_shards(sd, t5_dir):
        hub.add(T5, name, (t5_dir / name).read_bytes())
    for f in TOKENIZER_DIR.iterdir():
        hub.add(T5, f.name, f.read_bytes())
    hub.commits[T5] = "7d6315df2c2fb742f0f5b556879d730926ca9001"  # the pinned revision resolves
    return {"t5_state_dict": sd, "t5_dir": t5_dir}
