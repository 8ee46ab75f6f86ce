"""Loading real-layout files: formats, key surgery, and the bad-file matrix (each error names the file + a hint)."""
import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from infinity_core.files.checkpoints import remap_transformer_keys, to_reference_keys
from infinity_core.model.config import INFINITY_PRESETS, VAE_PRESETS, VAEConfig
from infinity_core.files.convert import convert, describe
from infinity_core.errors import CheckpointError, IncompatibleModelsError
from infinity_core.files.loading import load_tokenizer, load_transformer, pair
from infinity_core.files.random_models import random_tokenizer, transformer_file_state_dict
from shared_paths import MODEL_A


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def assert_clear_error(excinfo, path, *needles):
    text = str(excinfo.value)
    assert str(path) in text and "HINT:" in text, text
    for needle in needles:
        assert needle in text, text


def test_pth_and_safetensors_give_identical_models(tiny_files, tiny_transformer, tiny_tokenizer):
    for fmt in ("pth", "safetensors"):
        assert same_weights(load_transformer(tiny_files[fmt]["transformer"]), tiny_transformer)
        assert same_weights(load_tokenizer(tiny_files[fmt]["tokenizer"]), tiny_tokenizer)


def test_remap_flattens_chunks_and_folds_biases(tiny_transformer):
    released = transformer_file_state_dict(tiny_transformer, blocks_per_chunk=2)
    assert "block_chunks.1.module.1.sa.q_bias" in released and "blocks.3.sa.q_bias" not in released
    ours = remap_transformer_keys(released)
    q, zero_k, v = ours["blocks.3.sa.mat_qkv.bias"].chunk(3)
    assert torch.equal(q, released["block_chunks.1.module.1.sa.q_bias"]) and not zero_k.any()
    assert torch.equal(v, released["block_chunks.1.module.1.sa.v_bias"])
    assert ours.keys() == tiny_transformer.state_dict().keys()
    assert to_reference_keys(ours, 2).keys() == released.keys()


def test_remap_accepts_wrappers_and_the_other_scale_mul_layout(tiny_transformer):
    released = transformer_file_state_dict(tiny_transformer)
    heads = tiny_transformer.config.num_heads
    wrapped = {"module." + k: (v.reshape(1, 1, heads, 1) if k.endswith("scale_mul_1H11") else v)
               for k, v in released.items()}
    wrapped["module.rope2d_freqs_grid"] = torch.zeros(1)
    ours = remap_transformer_keys(wrapped)
    assert all(torch.equal(ours[k], v) for k, v in tiny_transformer.state_dict().items())


def test_training_checkpoint_and_sharded_folder(tmp_path, tiny_transformer):
    released = transformer_file_state_dict(tiny_transformer)
    torch.save({"args": argparse.Namespace(model="tiny"), "trainer": {"gpt_fsdp": released}}, tmp_path / "ar-ckpt.pth")
    assert same_weights(load_transformer(tmp_path / "ar-ckpt.pth"), tiny_transformer)
    keys, shards = sorted(released), tmp_path / "sharded"
    shards.mkdir()
    weight_map = {}
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:])):
        name = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: released[k] for k in part}, str(shards / name))
        weight_map.update({k: name for k in part})
    (shards / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert same_weights(load_transformer(shards), tiny_transformer)
    (shards / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError) as err:
        load_transformer(shards)
    assert_clear_error(err, shards, "model-00002-of-00002.safetensors")


def test_truncated_safetensors(tmp_path, tiny_files):
    bad = tmp_path / "infinity_2b_reg.safetensors"
    data = Path(tiny_files["safetensors"]["transformer"]).read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_transformer(bad)
    assert_clear_error(err, bad, "incomplete or corrupt")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pth_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker, evil = tmp_path / "pwned", tmp_path / "infinity_2b_reg.pth"
    torch.save({"cfg_uncond": torch.zeros(1), "payload": _Payload(marker)}, evil)
    with pytest.raises(CheckpointError) as err:
        load_transformer(evil)
    assert not marker.exists()
    assert_clear_error(err, evil, "refused")


def test_text_file_renamed_pth(tmp_path):
    bad = tmp_path / "model.pth"
    bad.write_text("this is not a model\n")
    with pytest.raises(CheckpointError) as err:
        load_transformer(bad)
    try:  # torch's own first line is quoted
        torch.load(bad, weights_only=True, mmap=True)
    except Exception as failure:  # noqa: BLE001 - whatever torch raises
        detail = f"{type(failure).__name__}: {str(failure).splitlines()[0][:30]}"
    assert_clear_error(err, bad, "not a readable PyTorch checkpoint", detail)


@pytest.mark.parametrize("keys,kind,hint", [
    (["model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.decoder.conv_in.weight"],
     "stable diffusion", "infinity_2b_reg.pth"),
    (["encoder.block.0.layer.0.SelfAttention.q.weight", "shared.weight"], "t5 text encoder", "text encoder loader"),
    (["foo.weight"], "unknown", "infinity_2b_reg.pth"),
])
def test_other_model_families_are_named(tmp_path, keys, kind, hint):
    path = tmp_path / "other.safetensors"
    save_file({k: torch.zeros(2) for k in keys}, str(path))
    with pytest.raises(CheckpointError) as err:
        load_transformer(path)
    assert_clear_error(err, path, kind, hint)


def test_loaders_point_at_each_other(tiny_files):
    with pytest.raises(CheckpointError) as err:
        load_transformer(tiny_files["safetensors"]["tokenizer"])
    assert_clear_error(err, tiny_files["safetensors"]["tokenizer"], "tokenizer loader")
    with pytest.raises(CheckpointError) as err:
        load_tokenizer(tiny_files["safetensors"]["transformer"])
    assert_clear_error(err, tiny_files["safetensors"]["transformer"], "transformer loader")


def test_missing_key_and_nan_weight_are_named(tmp_path, tiny_transformer):
    released = transformer_file_state_dict(tiny_transformer)
    partial = {k: v for k, v in released.items() if k != "head.bias"}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_transformer(tmp_path / "partial.safetensors")
    assert_clear_error(err, tmp_path / "partial.safetensors", "head.bias", "missing")
    broken = dict(released)
    broken["block_chunks.0.module.1.ffn.fc1.weight"] = broken["block_chunks.0.module.1.ffn.fc1.weight"].clone()
    broken["block_chunks.0.module.1.ffn.fc1.weight"][3, 5] = float("nan")
    save_file(broken, str(tmp_path / "nan.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_transformer(tmp_path / "nan.safetensors")
    assert_clear_error(err, tmp_path / "nan.safetensors", "blocks.1.ffn.fc1.weight", "NaN")


def test_tokenizer_that_does_not_match_the_transformer(tiny_config):
    with pytest.raises(IncompatibleModelsError, match="infinity_vae_d32reg.pth") as err:
        pair(INFINITY_PRESETS["infinity_2b"], VAE_PRESETS["infinity_vae_d16"], tokenizer_name="infinity_vae_d16.pth")
    assert "infinity_vae_d16.pth has 16 bits" in str(err.value) and "predicts 32 bits" in str(err.value)
    with pytest.raises(IncompatibleModelsError, match="HINT"):
        pair(tiny_config, VAEConfig(codebook_dim=32))
    assert not pair(tiny_config, VAEConfig(codebook_dim=16)).patchify
    assert pair(tiny_config, VAEConfig(codebook_dim=4, encoder_ch_mult=(1, 2, 4, 4), decoder_ch_mult=(1, 2, 4, 4),
                                       patch_size=8)).patchify


def test_bf16_file_is_cast_on_load(tmp_path, tiny_transformer):
    released = {k: v.to(torch.bfloat16) if v.is_floating_point() else v
                for k, v in transformer_file_state_dict(tiny_transformer).items()}
    save_file(released, str(tmp_path / "bf16.safetensors"))
    model = load_transformer(tmp_path / "bf16.safetensors", dtype=torch.float32)
    assert model.head.weight.dtype == torch.float32
    assert torch.equal(model.head.weight, tiny_transformer.head.weight.to(torch.bfloat16).float())


def test_convert_writes_a_pickle_free_copy(tmp_path, tiny_files, tiny_tokenizer):
    out = convert(tiny_files["pth"]["tokenizer"], tmp_path / "vae.safetensors")
    assert same_weights(load_tokenizer(out), tiny_tokenizer)
    assert "bitwise tokenizer" in describe(out)
    with pytest.raises(CheckpointError):
        convert(tiny_files["pth"]["tokenizer"], tiny_files["pth"]["tokenizer"])


def test_decoder_only_tokenizer_loads_but_cannot_encode(tmp_path):
    full = random_tokenizer(VAEConfig(codebook_dim=16, base_ch=24, encoder_ch_mult=(1, 1, 1, 1, 2),
                                      decoder_ch_mult=(1, 1, 1, 1, 2)))
    decoder_only = {k: v for k, v in full.state_dict().items() if k.startswith("decoder.")}
    save_file(decoder_only, str(tmp_path / "dec.safetensors"))
    dec = load_tokenizer(tmp_path / "dec.safetensors")
    assert dec.encoder is None and dec.config.decoder_ch_mult == (1, 1, 1, 1, 2)


@pytest.mark.skipif(not (MODEL_A / "infinity_tiny_a.pth").is_file(), reason=f"shared fixtures not found at {MODEL_A}")
def test_remap_of_a_file_the_reference_wrote():
    """Key surgery on the reference's own file (not ours written back): chunks of 2 blocks flattened, the
    q/zero-k/v biases concatenated as the reference adds them, and the inverse giving the file back."""
    raw = torch.load(MODEL_A / "infinity_tiny_a.pth", weights_only=True)
    ours = remap_transformer_keys(raw)
    sa, ca, pool = "block_chunks.1.module.1.sa.", "block_chunks.1.module.1.ca.", "text_proj_for_sos.ca."
    assert torch.equal(ours["blocks.3.sa.mat_qkv.bias"],
                       torch.cat([raw[sa + "q_bias"], torch.zeros(64), raw[sa + "v_bias"]]))
    assert torch.equal(ours["blocks.3.ca.mat_kv.bias"], torch.cat([torch.zeros(64), raw[ca + "v_bias"]]))
    assert torch.equal(ours["text_proj_for_sos.ca.mat_kv.bias"], torch.cat([torch.zeros(64), raw[pool + "v_bias"]]))
    assert torch.equal(ours["blocks.2.ffn.fc1.weight"], raw["block_chunks.1.module.0.ffn.fc1.weight"])
    assert torch.equal(ours["blocks.1.ada_gss"], raw["block_chunks.0.module.1.ada_gss"])
    assert ours["blocks.0.sa.scale_mul_1H11"].shape == (1, 2, 1, 1)
    assert not any("block_chunks" in k or k.endswith(("q_bias", "v_bias", "zero_k_bias")) for k in ours)
    back = to_reference_keys(ours, 2)
    assert back.keys() == raw.keys() and all(torch.equal(back[k], raw[k]) for k in raw)


def test_a_folder_with_one_safetensors_file_loads_and_one_with_two_is_refused(tmp_path, tiny_transformer):
    folder = tmp_path / "infinity_model"
    folder.mkdir()
    save_file(transformer_file_state_dict(tiny_transformer), str(folder / "weights.safetensors"))
    assert same_weights(load_transformer(folder), tiny_transformer)
    save_file({"x": torch.zeros(1)}, str(folder / "other.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_transformer(folder)
    assert_clear_error(err, folder, "not exactly one .safetensors")


def test_a_pth_without_tensors_is_named(tmp_path):
    for content in ({"epoch": 3, "note": "x"}, {}, {"state_dict": {"step": 1}}):
        path = tmp_path / "notes.pth"
        torch.save(content, path)
        with pytest.raises(CheckpointError) as err:
            load_transformer(path)
        assert_clear_error(err, path, "no state dict of tensors")


def test_biases_merged_without_zero_k_keep_the_file_dtype(tiny_transformer):
    """Files without the zero key-bias buffers (e.g. the slim releases): the zeros take the v_bias's dtype."""
    released = {k: v.to(torch.bfloat16) for k, v in transformer_file_state_dict(tiny_transformer).items()
                if not k.endswith("zero_k_bias")}
    ours = remap_transformer_keys(released)
    for key in ("blocks.0.sa.mat_qkv.bias", "blocks.0.ca.mat_kv.bias", "text_proj_for_sos.ca.mat_kv.bias"):
        assert ours[key].dtype == torch.bfloat16, key
    q, zero_k, v = ours["blocks.0.sa.mat_qkv.bias"].chunk(3)
    assert not zero_k.any() and torch.equal(v, released["block_chunks.0.module.0.sa.v_bias"])
