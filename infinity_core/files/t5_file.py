"""T5 encoder weights in one file: read safely, keys brought to Hugging Face's `T5EncoderModel` names, the
config inferred from tensor shapes; and the one rule for what a T5 path means (an HF folder, a file inside
one, or a single file), used by the command line and the ComfyUI loader alike."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from transformers import T5Config, T5EncoderModel

from ..errors import CheckpointError
from ..model.text_encoder import T5TextEncoder, load_t5_tokenizer
from .checkpoints import read_file

logger = logging.getLogger(__name__)
_Q0 = "block.0.layer.0.SelfAttention.q.weight"


def hf_folder(path: str | Path) -> Path | None:
    """The Hugging Face folder a T5 path stands for: the path itself if it is a folder, the folder of a file
    that sits beside a config.json; None for a single file."""
    path = Path(path)
    if path.is_dir():
        return path
    return path.parent if (path.parent / "config.json").is_file() else None


def load_t5(path: str | Path, *, tokenizer_dir: str | Path | None, dtype: torch.dtype = torch.float32,
            device: str | torch.device = "cpu") -> T5TextEncoder:
    """A T5 encoder from any path `hf_folder` accepts; `tokenizer_dir` None: the folder's (or the file's)."""
    folder = hf_folder(path)
    if folder is not None:
        return T5TextEncoder.from_folder(folder, dtype=dtype, device=device, tokenizer_dir=tokenizer_dir)
    return load_single_file(path, tokenizer_dir=tokenizer_dir or Path(path).parent, dtype=dtype, device=device)


def read_t5_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a single T5 file, read safely by the same code as every other checkpoint."""
    obj = read_file(path)
    obj = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError("the file holds no plain tensor dictionary", path=str(path),
                              hint="use a .safetensors file")
    return obj


def canonical_t5_keys(sd: dict[str, torch.Tensor], path: str) -> dict[str, torch.Tensor]:
    """HF `T5EncoderModel` key names: prefix stripped, decoder/lm_head dropped, tied embedding merged."""
    anchors = [k for k in sd if k.endswith(_Q0) and not k.endswith("decoder." + _Q0)]
    if not anchors:
        sample = ", ".join(sorted(sd)[:4])
        raise CheckpointError(f"not a T5 encoder: no '{_Q0}' key (keys start: {sample})", path=path,
                              hint="pick the T5 text encoder file (flan-t5-xl), not an image model or VAE")
    anchor = min(anchors, key=len)
    stack_only = not anchor.endswith("encoder." + _Q0)  # a bare T5Stack: block.*, embed_tokens, final_layer_norm
    prefix = anchor[: -len(_Q0)] if stack_only else anchor[: -len("encoder." + _Q0)]
    out = {}
    for key, value in sd.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix):]
        if key.startswith(("decoder.", "lm_head.")):
            continue
        if stack_only:
            key = "shared.weight" if key == "embed_tokens.weight" else "encoder." + key
        out[key] = value
    if "encoder.embed_tokens.weight" in out:  # tied to shared.weight in T5EncoderModel
        embed = out.pop("encoder.embed_tokens.weight")
        out.setdefault("shared.weight", embed)
    if prefix:
        logger.debug("T5 keys under prefix %r in %s", prefix, path)
    return out


def infer_t5_config(state_dict: dict[str, torch.Tensor]) -> T5Config:
    """A `T5Config` from HF-named encoder tensors (prefixes, decoder keys and tied embeddings tolerated).

    Gated feed-forwards are taken as 'gated-gelu' (T5 v1.1 / flan-t5; transformers maps it to the
    tanh GELU 'gelu_new'), plain ones as 'relu'. Not inferable, left at T5 defaults:
    relative_attention_max_distance 128, layer_norm_epsilon 1e-6.
    """
    sd = state_dict if "shared.weight" in state_dict and "encoder." + _Q0 in state_dict \
        else canonical_t5_keys(state_dict, "<state dict>")
    try:
        vocab, d_model = sd["shared.weight"].shape
        num_layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.block\.(\d+)\.", k)))
        buckets, num_heads = sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape
        inner = sd["encoder." + _Q0].shape[0]
        gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in sd
        d_ff = sd["encoder.block.0.layer.1.DenseReluDense." + ("wi_0" if gated else "wi") + ".weight"].shape[0]
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"incomplete T5 encoder weights (missing {err})",
                              hint="the file is not a complete T5 encoder; re-download it") from err
    return T5Config(vocab_size=vocab, d_model=d_model, d_kv=inner // num_heads, d_ff=d_ff, num_layers=num_layers,
                    num_heads=num_heads, relative_attention_num_buckets=buckets,
                    feed_forward_proj="gated-gelu" if gated else "relu", is_encoder_decoder=False, use_cache=False)


def load_single_file(path: str | Path, *, tokenizer_dir: str | Path, dtype: torch.dtype = torch.float32,
                     device: str | torch.device = "cpu") -> T5TextEncoder:
    """One encoder-only (or full encoder-decoder) T5 file; the config is inferred from shapes.

    As HF's from_pretrained does, `wo` stays fp32 when dtype is fp16 (the T5 FF layer casts its
    input to `wo`'s dtype). A later blanket `.model.to(torch.float16)` would undo that.
    """
    path = Path(path)
    tokenizer = load_t5_tokenizer(tokenizer_dir)
    sd = canonical_t5_keys(read_t5_state_dict(path), str(path))
    config = infer_t5_config(sd)
    with torch.device("meta"):
        model = T5EncoderModel(config)
    keep_fp32 = dtype == torch.float16
    sd = {k: v.to(torch.float32 if keep_fp32 and k.endswith(".wo.weight") else dtype) for k, v in sd.items()}
    try:
        result = model.load_state_dict(sd, strict=False, assign=True)
    except RuntimeError as err:  # shape mismatch
        raise CheckpointError(f"T5 weights have inconsistent shapes: {err}", path=str(path),
                              hint="the file mixes weights of different models; re-download it") from err
    missing = sorted(set(result.missing_keys) - {"encoder.embed_tokens.weight"})
    if missing or result.unexpected_keys:
        raise CheckpointError(f"not a complete T5 encoder: missing {missing[:5]}, unexpected "
                              f"{sorted(result.unexpected_keys)[:5]}", path=str(path),
                              hint="use an HF-format T5 encoder file (flan-t5-xl); re-download if incomplete")
    model.set_input_embeddings(model.shared)  # re-tie encoder.embed_tokens to the loaded shared.weight
    logger.info("loaded T5 encoder %s (%d layers, d_model %d) as %s", path, config.num_layers, config.d_model,
                dtype)
    return T5TextEncoder(model.to(device), tokenizer)

