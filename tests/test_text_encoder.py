"""T5TextEncoder against transformers' own T5EncoderModel on a tiny random model (CPU, fast)."""
from __future__ import annotations

import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import T5Config, T5EncoderModel

from infinity_core.errors import CheckpointError
from infinity_core.files.t5_file import infer_t5_config, load_single_file
from infinity_core.model.text_encoder import T5TextEncoder, load_t5_tokenizer

from shared_paths import TOKENIZER_DIR

PROMPTS = ["a photo of a cat sitting on a mat, highly detailed", "dog"]

pytestmark = pytest.mark.skipif(not (TOKENIZER_DIR / "tokenizer.json").is_file(),
                                reason="shared T5 tokenizer fixture missing")


def _tiny_config() -> T5Config:
    return T5Config(vocab_size=32128, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                    feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)


def _encoder_sd(model: T5EncoderModel) -> dict[str, torch.Tensor]:
    return {k: v.clone().contiguous() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    torch.manual_seed(0)
    hf = T5EncoderModel(_tiny_config()).eval()
    root = tmp_path_factory.mktemp("t5")
    folder = root / "flan-t5-tiny"
    hf.save_pretrained(folder)
    for f in TOKENIZER_DIR.iterdir():
        shutil.copy(f, folder / f.name)
    single = root / "t5_encoder.safetensors"
    save_file(_encoder_sd(hf), str(single))
    return hf, folder, single


@pytest.fixture(scope="module")
def encoder(files):
    return load_single_file(files[2], tokenizer_dir=TOKENIZER_DIR)


def _hf_features(hf, enc, prompts):
    ids, mask = enc.tokenize(prompts)
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=mask).last_hidden_state.float(), mask


@pytest.mark.parametrize("loader", ["folder", "single"])
def test_loaders_match_transformers(files, loader):
    hf, folder, single = files
    enc = T5TextEncoder.from_folder(folder) if loader == "folder" else \
        load_single_file(single, tokenizer_dir=TOKENIZER_DIR)
    emb = enc.encode(PROMPTS)
    ref, mask = _hf_features(hf, enc, PROMPTS)
    assert emb.lens == tuple(mask.sum(1).tolist())
    for b in range(len(PROMPTS)):
        torch.testing.assert_close(emb.prompt(b), ref[b, :emb.lens[b]], atol=1e-6, rtol=1e-6)
    assert emb.features_NC.dtype == torch.float32 and emb.features_NC.device.type == "cpu"
    assert enc.hidden_size == 16 and enc.dtype == torch.float32 and enc.device.type == "cpu"
    assert enc.model.encoder.embed_tokens.weight is enc.model.shared.weight


def test_lengths_include_eos(encoder):
    ids, mask = encoder.tokenize(PROMPTS)
    assert ids.shape == mask.shape == (2, 512)
    for b, n in enumerate(mask.sum(1).tolist()):
        assert ids[b, n - 1] == 1 and (ids[b, n:] == 0).all()
    assert encoder.encode(PROMPTS).lens == tuple(mask.sum(1).tolist())


def test_long_prompt_truncated_with_warning(encoder, caplog):
    with caplog.at_level(logging.WARNING, logger="infinity_core.model.text_encoder"):
        emb = encoder.encode(["word " * 600])
    assert emb.lens == (512,)
    assert any("truncated" in r.getMessage() and "89 tokens dropped" in r.getMessage() for r in caplog.records)
    ids, _ = encoder.tokenize(["word " * 600])
    assert ids[0, -1] == 1


def test_empty_prompt_is_eos_only(encoder):
    emb = encoder.encode([""])
    assert emb.lens == (1,) and emb.features_NC.shape == (1, 16)


def test_batch_packs_like_single_prompts(encoder):
    batch = encoder.encode(PROMPTS)
    singles = [encoder.encode([p]) for p in PROMPTS]
    assert batch.lens == tuple(s.lens[0] for s in singles)
    for b, s in enumerate(singles):
        torch.testing.assert_close(batch.prompt(b), s.features_NC, atol=1e-6, rtol=1e-6)


def test_infer_config(files):
    hf = files[0]
    cfg = infer_t5_config(hf.state_dict())
    ref = _tiny_config()
    for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
                 "relative_attention_num_buckets", "feed_forward_proj", "dense_act_fn", "is_gated_act"):
        assert getattr(cfg, name) == getattr(ref, name), name
    assert cfg.dense_act_fn == "gelu_new" and cfg.is_encoder_decoder is False and cfg.use_cache is False
    torch.manual_seed(1)
    other = T5EncoderModel(T5Config(vocab_size=300, d_model=16, d_kv=4, d_ff=24, num_layers=3, num_heads=4,
                                    relative_attention_num_buckets=16, feed_forward_proj="relu",
                                    is_encoder_decoder=False))
    cfg = infer_t5_config(other.state_dict())
    assert (cfg.vocab_size, cfg.d_kv, cfg.d_ff, cfg.num_layers, cfg.num_heads, cfg.relative_attention_num_buckets,
            cfg.feed_forward_proj) == (300, 4, 24, 3, 4, 16, "relu")


def test_full_model_file_with_prefix(files, tmp_path):
    hf = files[0]
    sd = {"text_encoders.t5xxl.transformer." + k: v for k, v in _encoder_sd(hf).items()}
    sd["text_encoders.t5xxl.transformer.decoder.block.0.layer.0.SelfAttention.q.weight"] = torch.zeros(16, 16)
    sd["text_encoders.t5xxl.transformer.lm_head.weight"] = torch.zeros(32128, 16)
    sd["text_encoders.clip_l.foo.weight"] = torch.zeros(3)
    path = tmp_path / "combined.safetensors"
    save_file(sd, str(path))
    enc = load_single_file(path, tokenizer_dir=TOKENIZER_DIR)
    ref, _ = _hf_features(hf, enc, PROMPTS[:1])
    emb = enc.encode(PROMPTS[:1])
    torch.testing.assert_close(emb.features_NC, ref[0, :emb.lens[0]], atol=1e-6, rtol=1e-6)


def test_fp16_keeps_wo_fp32(files):
    enc = load_single_file(files[2], tokenizer_dir=TOKENIZER_DIR, dtype=torch.float16)
    hf16 = T5TextEncoder.from_folder(files[1], dtype=torch.float16)
    for e in (enc, hf16):
        ff = e.model.encoder.block[0].layer[1].DenseReluDense
        assert e.dtype == torch.float16 and ff.wi_0.weight.dtype == torch.float16
        assert ff.wo.weight.dtype == torch.float32
    assert enc.encode(["dog"]).features_NC.dtype == torch.float32


def test_tokenizer_is_tokenizer_json_verbatim():
    from tokenizers import Tokenizer
    raw = Tokenizer.from_file(str(TOKENIZER_DIR / "tokenizer.json"))
    tok = load_t5_tokenizer(TOKENIZER_DIR)
    for text in ["<pad>dog", "x<unk>y", "hello</s>world", "  spaced   out  ", "Ünïcödé café"]:
        assert tok(text).input_ids == raw.encode(text).ids, text


def test_not_t5_file(tmp_path):
    path = tmp_path / "image_model.safetensors"
    save_file({"block_chunks.0.module.0.sa.mat_qkv.weight": torch.zeros(4, 4), "cfg_uncond": torch.zeros(2, 4)},
              str(path))
    with pytest.raises(CheckpointError, match="HINT") as err:
        load_single_file(path, tokenizer_dir=TOKENIZER_DIR)
    assert "image_model.safetensors" in str(err.value)


def test_truncated_file(files, tmp_path):
    data = files[2].read_bytes()
    path = tmp_path / "t5_broken.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="HINT") as err:
        load_single_file(path, tokenizer_dir=TOKENIZER_DIR)
    assert "t5_broken.safetensors" in str(err.value) and "download it again" in str(err.value)


def test_incomplete_encoder(files, tmp_path):
    sd = _encoder_sd(files[0])
    del sd["encoder.block.1.layer.0.SelfAttention.k.weight"]
    path = tmp_path / "t5_partial.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError, match="HINT") as err:
        load_single_file(path, tokenizer_dir=TOKENIZER_DIR)
    assert "t5_partial.safetensors" in str(err.value) and "SelfAttention.k.weight" in str(err.value)


def test_missing_tokenizer(files, tmp_path):
    with pytest.raises(CheckpointError, match="HINT") as err:
        load_single_file(files[2], tokenizer_dir=tmp_path)
    assert str(tmp_path) in str(err.value)


@pytest.mark.parametrize("layout", ["bare stack", "encoder.embed_tokens"])
def test_other_single_file_layouts(files, tmp_path, layout):
    """A bare T5Stack (`block.*`, `embed_tokens.weight`, `final_layer_norm.weight`) and a file with the tied
    `encoder.embed_tokens.weight` instead of `shared.weight` encode as transformers' model does."""
    hf = files[0]
    sd = _encoder_sd(hf)
    if layout == "bare stack":
        sd = {("embed_tokens.weight" if k == "shared.weight" else k[len("encoder."):]): v for k, v in sd.items()}
    else:
        sd["encoder.embed_tokens.weight"] = sd.pop("shared.weight")
    path = tmp_path / "t5.safetensors"
    save_file(sd, str(path))
    enc = load_single_file(path, tokenizer_dir=TOKENIZER_DIR)
    ref, _ = _hf_features(hf, enc, PROMPTS[:1])
    torch.testing.assert_close(enc.encode(PROMPTS[:1]).features_NC, ref[0, :enc.encode(PROMPTS[:1]).lens[0]],
                               atol=1e-6, rtol=1e-6)
    assert enc.to("meta").device.type == "meta" and enc.dtype == torch.float32  # moves weights, keeps dtypes


def test_folder_whose_weights_do_not_fit_its_config(files, tmp_path):
    hf, folder, _ = files
    broken = tmp_path / "flan-t5-broken"
    shutil.copytree(folder, broken)
    sd = load_file(str(broken / "model.safetensors"))
    del sd["encoder.block.1.layer.0.SelfAttention.k.weight"]
    save_file(sd, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="do not fit config.json") as err:
        T5TextEncoder.from_folder(broken)
    assert "HINT" in str(err.value) and "SelfAttention.k.weight" in str(err.value)


def test_a_t5_file_without_tensors(tmp_path):
    path = tmp_path / "t5.pth"
    torch.save({"encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(2, 2), "step": 3}, path)
    with pytest.raises(CheckpointError, match="no plain tensor dictionary"):
        load_single_file(path, tokenizer_dir=TOKENIZER_DIR)


def test_one_rule_for_what_a_t5_path_means(tmp_path):
    """The command line and the ComfyUI loader share it: a folder, or a file beside a config.json, is the Hugging
    Face folder; any other file is a single encoder file."""
    from infinity_core.files.t5_file import hf_folder
    folder = tmp_path / "flan"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    lone = tmp_path / "t5_encoder.safetensors"
    lone.write_bytes(b"")
    assert hf_folder(folder) == folder and hf_folder(lone) is None
    assert hf_folder(folder / "model.safetensors") is None  # no config.json yet
    (folder / "config.json").write_text("{}")
    assert hf_folder(folder / "model.safetensors") == folder
