"""Config inference and key layout for every preset, on synthetic (meta-device) state dicts.

The released layouts are re-stated here from the reference spec (§3, §4.7), independently of our
modules, so a mismatch between our module tree and the real files shows up without real weights.
"""
import pytest
import torch

from infinity_core.files.checkpoints import check_keys, remap_transformer_keys, remap_vae_keys
from infinity_core.model.config import (INFINITY_PRESETS, VAE_PRESETS, infinity_config_from_state_dict,
                                        mlp_hidden_width, preset_name, vae_config_from_state_dict)
from infinity_core.model.transformer import InfinityTransformer
from infinity_core.model.vae import BitwiseTokenizer

BLOCK_SUFFIXES = ["ada_gss", "sa.scale_mul_1H11", "sa.q_bias", "sa.v_bias", "sa.zero_k_bias", "sa.mat_qkv.weight",
                  "sa.proj.weight", "sa.proj.bias", "ca.v_bias", "ca.zero_k_bias", "ca.mat_q.weight", "ca.mat_q.bias",
                  "ca.mat_kv.weight", "ca.proj.weight", "ca.proj.bias", "ffn.fc1.weight", "ffn.fc1.bias",
                  "ffn.fc2.weight", "ffn.fc2.bias", "ca_norm.weight", "ca_norm.bias"]


def released_transformer_shapes(depth, C, H, d_t, Ct5=2048, chunks=8):
    """Key -> shape of a released transformer file (infinity-reference.md §3.1-3.3)."""
    M = round(C * 4 / 256) * 256
    Hp = Ct5 // (64 if C > 4096 else 128)
    shapes = {
        "cfg_uncond": (512, Ct5), "pos_start": (1, 1, C), "text_norm.weight": (Ct5,),
        "text_proj_for_sos.ca.mat_q": (1, Hp, C // Hp), "text_proj_for_sos.ca.v_bias": (C,),
        "text_proj_for_sos.ca.zero_k_bias": (C,), "text_proj_for_sos.ca.mat_kv.weight": (2 * C, Ct5),
        "text_proj_for_sos.ca.proj.weight": (C, C), "text_proj_for_sos.ca.proj.bias": (C,),
        "text_proj_for_ca.0.weight": (C, Ct5), "text_proj_for_ca.0.bias": (C,),
        "text_proj_for_ca.2.weight": (C, C), "text_proj_for_ca.2.bias": (C,), "lvl_embed.weight": (15, C),
        "word_embed.weight": (C, d_t), "word_embed.bias": (C,), "shared_ada_lin.1.weight": (6 * C, C),
        "shared_ada_lin.1.bias": (6 * C,), "head_nm.ada_lin.1.weight": (2 * C, C), "head_nm.ada_lin.1.bias": (2 * C,),
        "head.weight": (2 * d_t, C), "head.bias": (2 * d_t,),
    }
    block = {"ada_gss": (1, 1, 6, C), "sa.scale_mul_1H11": (1, H, 1, 1), "sa.mat_qkv.weight": (3 * C, C),
             "sa.proj.weight": (C, C), "ca.mat_q.weight": (C, C), "ca.mat_kv.weight": (2 * C, C),
             "ca.proj.weight": (C, C),
             "ffn.fc1.weight": (M, C), "ffn.fc1.bias": (M,), "ffn.fc2.weight": (C, M)}
    per = depth // chunks
    for n in range(depth):
        for suffix in BLOCK_SUFFIXES:
            shapes[f"block_chunks.{n // per}.module.{n % per}.{suffix}"] = block.get(suffix, (C,))
    return shapes


def meta_state_dict(shapes):
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


@pytest.mark.parametrize("name", list(INFINITY_PRESETS))
def test_every_preset_is_inferred_from_its_released_layout(name):
    cfg = INFINITY_PRESETS[name]
    chunks = 8 if cfg.depth % 8 == 0 else 2
    shapes = released_transformer_shapes(cfg.depth, cfg.embed_dim, cfg.num_heads, cfg.bits_per_token, chunks=chunks)
    sd = remap_transformer_keys(meta_state_dict(shapes))
    inferred = infinity_config_from_state_dict(sd)
    assert inferred == cfg and preset_name(inferred) == name
    model = InfinityTransformer(inferred, device="meta")
    check_keys(model, sd, "synthetic", "transformer")  # raises on any missing/unexpected key or shape
    # + the zero key biases the reference keeps as buffers (folded into our Linear biases)
    zero_key_biases = (2 * cfg.depth + 1) * cfg.embed_dim
    assert sum(v.numel() for v in model.state_dict().values()) == cfg.num_params() + zero_key_biases


def test_released_key_counts_and_parameter_counts():
    assert len(released_transformer_shapes(32, 2048, 16, 32)) == 694
    assert len(released_transformer_shapes(40, 3584, 28, 56)) == 862
    assert INFINITY_PRESETS["infinity_2b"].num_params() == 2_204_564_032
    assert INFINITY_PRESETS["infinity_8b"].num_params() == 8_375_791_824


def test_mlp_width_uses_bankers_rounding():
    assert [mlp_hidden_width(c) for c in (2048, 3584, 2080, 3360, 768)] == [8192, 14336, 8192, 13312, 3072]


def test_8b_bit_width_implies_spatial_patchify():
    assert INFINITY_PRESETS["infinity_8b"].patchify_guess
    assert not INFINITY_PRESETS["infinity_2b"].patchify_guess


@pytest.mark.parametrize("name", list(VAE_PRESETS))
@pytest.mark.parametrize("flat", [False, True])
def test_every_tokenizer_preset_round_trips_through_its_file_layout(name, flat):
    cfg = VAE_PRESETS[name]
    sd = {k: torch.empty(v.shape, device="meta") for k, v in BitwiseTokenizer(cfg, device="meta").state_dict().items()}
    expected = set(sd)
    sd["quantizer.lfq.mask"] = sd["quantize.lfq.mask"] = torch.empty(cfg.codebook_dim, dtype=torch.long, device="meta")
    if flat:  # the reference's load_cnn also accepts names without the .conv / .norm wrappers
        sd = {k.replace(".conv.weight", ".weight").replace(".conv.bias", ".bias")
              .replace(".norm.weight", ".weight").replace(".norm.bias", ".bias"): v for k, v in sd.items()}
    remapped = remap_vae_keys(sd)
    assert set(remapped) == expected
    assert vae_config_from_state_dict(remapped) == cfg


def test_released_tokenizer_tensor_counts():
    # §4.7: 268 weight tensors for the d32 tokenizer; the patchify one has 226 entries with its 2 masks
    assert len(BitwiseTokenizer(VAE_PRESETS["infinity_vae_d32"], device="meta").state_dict()) == 268
    assert len(BitwiseTokenizer(VAE_PRESETS["infinity_vae_d56_f8_14_patchify"], device="meta").state_dict()) == 224
