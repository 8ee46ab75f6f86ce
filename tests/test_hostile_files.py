"""Hostile and broken files: escaping shard indexes, mixed shards, odd tensors, impossible shapes, and
`convert` never overwriting or leaving half-written files. Each error names the file and has a HINT."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from infinity_core import cli
from infinity_core.files.checkpoints import read_file
from infinity_core.files.convert import convert, describe
from infinity_core.errors import CheckpointError
from infinity_core.files.loading import load_tokenizer, load_transformer
from infinity_core.files.random_models import transformer_file_state_dict
from pack_harness import expect_error


def refused(fn, *needles):
    return expect_error(fn, *needles, kind=CheckpointError)


@pytest.fixture
def released(tiny_transformer):
    return transformer_file_state_dict(tiny_transformer)


SHARD_NAMES = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")


def write_sharded(folder: Path, sd: dict, names=SHARD_NAMES, index_names=None) -> Path:
    """`sd` split in two shard files under `names`; the index lists them as `index_names` (default: the same)."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted(sd)
    parts = (keys[: len(keys) // 2], keys[len(keys) // 2:])
    weight_map = {}
    for part, name, listed in zip(parts, names, index_names or names):
        if name is not None:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            save_file({k: sd[k] for k in part}, str(folder / name))
        weight_map.update({k: listed for k in part})
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index


# ---- sharded indexes ------------------------------------------------------------------------------------
def test_an_index_that_names_a_file_outside_its_folder_is_refused(tmp_path, released):
    # the escaping shard is a perfectly good file: only the path rule stops it being read
    index = write_sharded(tmp_path / "weights", released, names=("a.safetensors", "../elsewhere/b.safetensors"))
    assert (tmp_path / "elsewhere" / "b.safetensors").is_file()
    refused(lambda: load_transformer(index), "../elsewhere/b.safetensors", "outside the index's folder")
    absolute = write_sharded(tmp_path / "abs", released, index_names=("model-00001-of-00002.safetensors",
                                                                      str(tmp_path / "elsewhere" / "b.safetensors")))
    refused(lambda: load_transformer(absolute), "outside the index's folder")


def test_a_symlink_that_leads_out_of_the_folder_is_refused(tmp_path, released):
    index = write_sharded(tmp_path / "weights", released)
    shard = tmp_path / "weights" / "model-00002-of-00002.safetensors"
    outside = tmp_path / "outside.safetensors"
    shard.rename(outside)
    shard.symlink_to(outside)
    refused(lambda: read_file(index), "a link to", "outside the index's folder")
    inside = tmp_path / "weights" / "real.safetensors"  # a link to a file inside the folder is fine
    outside.rename(inside)
    shard.unlink()
    shard.symlink_to(inside)
    assert read_file(index).keys() == released.keys()


def test_a_hugging_face_cache_snapshot_loads(tmp_path, released, tiny_transformer):
    """`hf download` without --local-dir: snapshot files are links to ../../blobs/<hash>; that is allowed."""
    repo = tmp_path / "models--FoundationVision--Infinity"
    snapshot = repo / "snapshots" / "abc123" / "infinity_8b_weights"
    write_sharded(repo / "staging", released)
    (repo / "blobs").mkdir()
    snapshot.mkdir(parents=True)
    for i, f in enumerate(sorted((repo / "staging").iterdir())):
        blob = repo / "blobs" / f"{i:064x}"
        f.rename(blob)
        (snapshot / f.name).symlink_to(Path("../../..") / "blobs" / blob.name)
    model = load_transformer(snapshot)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), tiny_transformer.state_dict().values()))


def test_mixed_and_inconsistent_shards_are_refused(tmp_path, released):
    index = write_sharded(tmp_path / "dup", released)
    first = load_file(str(tmp_path / "dup" / "model-00001-of-00002.safetensors"))
    second = load_file(str(tmp_path / "dup" / "model-00002-of-00002.safetensors"))
    key = sorted(first)[0]
    save_file({**second, key: first[key]}, str(tmp_path / "dup" / "model-00002-of-00002.safetensors"))
    refused(lambda: read_file(index), f"'{key}' is in two shards")
    save_file({k: v for k, v in second.items() if k != sorted(second)[0]},
              str(tmp_path / "dup" / "model-00002-of-00002.safetensors"))
    refused(lambda: read_file(index), "in no shard", sorted(second)[0])


def test_the_same_shard_under_two_spellings_is_read_once(tmp_path, released):
    index = write_sharded(tmp_path / "w", released, names=("a.safetensors", "b.safetensors"))
    weight_map = json.loads(index.read_text())["weight_map"]
    first_key = next(k for k, v in weight_map.items() if v == "a.safetensors")
    weight_map[first_key] = "./a.safetensors"
    index.write_text(json.dumps({"weight_map": weight_map}))
    assert read_file(index).keys() == released.keys()


@pytest.mark.parametrize("content, needle", [
    ('{"weight_map": ["a.safetensors"]}', "no 'weight_map'"),
    ('{"weight_map": {"x": 5}}', "no 'weight_map'"),
    ('{"weight_map": {}}', "no 'weight_map'"),
    ("[1, 2, 3]", "no 'weight_map'"),
    ('{"weight_map": {"x": "sub\\u0000.safetensors"}}', "outside"),
    ('{"weight_map": {"x": "notes.txt"}}', "missing"),
    ("\xff\xfe not json", "unreadable shard index"),
])
def test_malformed_indexes_are_refused(tmp_path, content, needle):
    index = tmp_path / "model.safetensors.index.json"
    index.write_bytes(content.encode("latin-1"))
    refused(lambda: read_file(index), needle)


# ---- tensors and shapes a model cannot be -----------------------------------------------------------------
@pytest.mark.parametrize("make, needle", [  # each of head.weight's true shape: only its kind is wrong
    (lambda w: torch.empty(w.shape, device="meta"), "meta device"),
    (lambda w: w.to(torch.complex64), "complex64"),
    (lambda w: w.to_sparse(), "sparse"),
    (lambda w: w.abs().to(torch.float8_e8m0fnu), "float8_e8m0fnu"),
])
def test_pickles_with_odd_tensors_are_refused(tmp_path, released, make, needle):
    path = tmp_path / "odd.pth"
    torch.save({**released, "head.weight": make(released["head.weight"])}, path)
    refused(lambda: load_transformer(path), "head.weight", needle)
    torch.save({1: torch.zeros(1), **released}, path)
    refused(lambda: load_transformer(path), "non-text key")


def test_damaged_shapes_end_in_a_named_error(tmp_path, released):
    cases = {  # a stray block number must not build 10^5 blocks
        "stray_block": ({**released, "block_chunks.0.module.99999.ffn.fc1.weight": torch.zeros(1)},
                        "'blocks.N.' skip number(s) [2, 3"),
        "no_heads": ({**released, "block_chunks.0.module.0.sa.scale_mul_1H11": torch.zeros(0)}, "'num_heads': 0"),
        "flat_embed": ({**released, "word_embed.weight": torch.zeros(5)}, "do not form a valid model (ValueError"),
        "scalar_bias": ({**released, "block_chunks.0.module.0.sa.v_bias": torch.zeros(())}, "IndexError"),
        "int_weights": ({**released, "head.weight": released["head.weight"].to(torch.int32)},
                        "'head.weight' is torch.int32"),
    }
    for name, (sd, needle) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(sd, str(path))
        refused(lambda: load_transformer(path), str(path), needle)
        if name != "int_weights":  # `info` reads the config only
            refused(lambda: describe(path), str(path), needle)


def test_info_on_a_transformer_missing_a_tensor_is_an_error_not_a_traceback(tmp_path, released, capsys):
    path = tmp_path / "partial.safetensors"
    save_file({k: v for k, v in released.items() if not k.endswith("sa.scale_mul_1H11")}, str(path))
    assert cli.main(["info", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "scale_mul_1H11" in err and "HINT" in err


# ---- convert: nothing the user made is lost ----------------------------------------------------------------
def test_convert_never_overwrites_unless_asked(tmp_path, tiny_files, capsys):
    src, dst = tiny_files["pth"]["tokenizer"], tmp_path / "vae.safetensors"
    dst.write_bytes(b"my own file")
    refused(lambda: convert(src, dst), "already exists", "--overwrite")
    assert dst.read_bytes() == b"my own file"
    assert cli.main(["convert", str(src), str(dst)]) == 1
    assert "already exists" in capsys.readouterr().err and dst.read_bytes() == b"my own file"
    assert cli.main(["convert", str(src), str(dst), "--overwrite"]) == 0
    assert load_tokenizer(dst).config.codebook_dim == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae.safetensors"]


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_convert_leaves_nothing_under_the_final_name(tmp_path, tiny_files, monkeypatch, failure):
    import safetensors.torch

    def half_then_fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1000)  # a partial write
        raise failure
    monkeypatch.setattr(safetensors.torch, "save_file", half_then_fail)
    src, dst = tiny_files["pth"]["transformer"], tmp_path / "t.safetensors"
    with pytest.raises(type(failure) if isinstance(failure, KeyboardInterrupt) else CheckpointError):
        convert(src, dst)
    assert list(tmp_path.iterdir()) == []
    dst.write_bytes(b"kept")  # --overwrite that fails keeps the old file whole
    with pytest.raises((CheckpointError, KeyboardInterrupt)):
        convert(src, dst, overwrite=True)
    assert dst.read_bytes() == b"kept" and [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]


def test_convert_into_a_missing_folder_is_a_named_error(tmp_path, tiny_files):
    refused(lambda: convert(tiny_files["pth"]["tokenizer"], tmp_path / "nowhere" / "v.safetensors"), "nowhere")
