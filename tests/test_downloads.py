"""The download module against a stand-in hub on 127.0.0.1 (tests/hub_server.py), with the real
huggingface_hub client pointed at it through HF_ENDPOINT. No test reaches the internet."""
from __future__ import annotations

import errno
import json
import os

import pytest
import torch
from safetensors import safe_open

import hub_models
from hub_harness import needs_fixtures
from infinity_core.downloads import fetch as downloads, hub, official as model_files
from infinity_core.errors import DownloadError
from shared_paths import MODEL_A, TOKENIZER_DIR

pytestmark = needs_fixtures


def folders(root):
    return lambda folder: root / folder


def fetch(specs, root, progress=None):
    return downloads.ensure(specs, folders(root), progress)


def official(key):
    return model_files.OFFICIAL[key]


def leftovers(root):
    return sorted(p.name for p in root.rglob("*") if p.name.endswith(".part"))


# ---- a whole model -----------------------------------------------------------------------------------------
def test_full_download_lands_in_the_models_folder_verified_and_loads(online, tmp_path):
    from infinity_core.files.loading import load_tokenizer, load_transformer
    seen = []
    report = fetch(model_files.bundle("2b"), tmp_path, progress=seen.append)
    transformer = tmp_path / "infinity" / "infinity_2b_reg.pth"
    assert transformer.read_bytes() == (MODEL_A / "infinity_tiny_a.pth").read_bytes()
    assert (tmp_path / "infinity" / "infinity_vae_d32reg.pth").read_bytes() == (MODEL_A / "vae_tiny_a.pth").read_bytes()
    assert load_transformer(transformer).config.text_channels == 128
    assert load_tokenizer(tmp_path / "infinity" / "infinity_vae_d32reg.pth").config.codebook_dim == 16
    assert not leftovers(tmp_path) and not (tmp_path / "text_encoders" / "flan-t5-xl-encoder" / ".download").exists()
    assert report.fetched > 0 and report.mb_per_s > 0 and len(report.paths) == 3
    assert seen and seen[-1].done <= seen[-1].total and {p.phase for p in seen} >= {"download", "verify"}
    record = json.loads((tmp_path / "infinity" / downloads.RECORD).read_text())["infinity_2b_reg.pth"]
    assert record["etag"] == online.files[(hub_models.INFINITY, "infinity_2b_reg.pth")].sha256
    assert record["commit"] == online.commits[hub_models.INFINITY]
    # the token stays on the hub: the CDN (another origin) never sees an Authorization header
    assert all(not r.auth for r in online.requests if r.server == "cdn")


def test_t5_encoder_only_file_from_byte_ranges(online, tmp_path):
    from infinity_core.files.t5_file import load_single_file
    fetch([official("t5")], tmp_path)
    folder = tmp_path / "text_encoders" / "flan-t5-xl-encoder"
    out = folder / "flan_t5_xl_encoder_fp16.safetensors"
    source = online.content["t5_state_dict"]
    with safe_open(str(out), "pt") as f:
        assert set(f.keys()) == {k for k in source if k.startswith("encoder.")} | {"shared.weight"}
        for k in f.keys():
            value = f.get_tensor(k)
            assert value.dtype == (torch.float32 if k.endswith(".wo.weight") else torch.float16), k
            assert torch.equal(value, source[k].to(value.dtype)), k
        assert f.metadata()["source"] == f"{hub_models.T5}@{model_files.T5_REVISION}"
    for name in model_files.T5_TOKENIZER_FILES:
        assert (folder / name).read_bytes() == (TOKENIZER_DIR / name).read_bytes()
    # only encoder bytes were fetched: no decoder or lm_head range was requested
    shard_bytes = sum(online.served.get(("", n), 0) for n in ("model-00001-of-00002.safetensors",
                                                               "model-00002-of-00002.safetensors"))
    encoder_bytes = sum(t.numel() * 4 for k, t in source.items() if k.startswith("encoder.") or k == "shared.weight")
    assert encoder_bytes <= shard_bytes < encoder_bytes + 200_000  # + the two headers
    assert all(r.path.endswith(model_files.T5_REVISION + "/" + r.path.rsplit("/", 1)[-1]) or r.server == "cdn"
               for r in online.requests if "flan-t5-xl" in r.path)
    # loaded in fp16 like any single file: the weights HF's from_pretrained(dtype=float16) would hold
    encoder = load_single_file(out, tokenizer_dir=folder, dtype=torch.float16)
    for k, v in encoder.model.state_dict().items():
        if k == "encoder.embed_tokens.weight":
            continue
        assert v.dtype == (torch.float32 if k.endswith(".wo.weight") else torch.float16), k
        assert torch.equal(v, source[k].to(v.dtype)), k


def test_a_missing_tokenizer_file_does_not_rebuild_the_encoder(online, tmp_path):
    fetch([official("t5")], tmp_path)
    folder = tmp_path / "text_encoders" / "flan-t5-xl-encoder"
    out = folder / "flan_t5_xl_encoder_fp16.safetensors"
    built = out.stat().st_mtime_ns
    (folder / "tokenizer.json").unlink()
    online.requests.clear()
    report = fetch([official("t5")], tmp_path)
    assert (folder / "tokenizer.json").read_bytes() == (TOKENIZER_DIR / "tokenizer.json").read_bytes()
    assert out.stat().st_mtime_ns == built and report.paths == [out]
    shards = [r for r in online.requests if "model-0000" in r.path]
    assert not shards, [r.path for r in shards]  # no shard header or encoder byte asked for again


def test_sharded_8b_index_comes_last_and_loads(online, tmp_path):
    from infinity_core.files.loading import load_transformer
    fetch([official("8b")], tmp_path)
    folder = tmp_path / "infinity" / "infinity_8b_weights"
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"]
    gets = [r.path for r in online.requests if r.method == "GET" and r.server == "hub"]
    assert any(p.endswith("model.safetensors.index.json") for p in gets)
    assert load_transformer(folder / "model.safetensors.index.json").config.bits_per_token == 56


# ---- resume, damage, repeats --------------------------------------------------------------------------------
@pytest.fixture
def big(online):
    """A file larger than the client's 10 MB read chunk, so drops and cancels come after bytes were written."""
    data = torch.randint(0, 256, (25_000_000,), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    online.add(hub_models.INFINITY, "big/blob.safetensors", data.numpy().tobytes())
    spec = model_files.ModelFile("big", "big/blob.safetensors", "infinity", "transformer", "a big file",
                                 hub_models.INFINITY, "main", "big/blob.safetensors")
    return spec, data.numpy().tobytes()


def test_resume_after_a_connection_dropped_mid_file(online, big, tmp_path):
    spec, data = big
    drop = 15_000_000
    online.drop_after[spec.path] = drop
    fetch([spec], tmp_path)
    assert (tmp_path / "infinity" / spec.name).read_bytes() == data
    gets = [r.range for r in online.requests if r.server == "cdn" and r.method == "GET"]
    assert gets[0] is None and len(gets) == 2 and gets[1].startswith("bytes=")
    resumed_at = int(gets[1][len("bytes="):].split("-")[0])
    assert 0 < resumed_at <= drop
    assert online.bytes_served(spec.path) == len(data) + drop - resumed_at  # only the tail again


def test_cancel_keeps_the_part_and_the_next_run_resumes_it(online, big, tmp_path):
    spec, data = big

    class Cancelled(Exception):
        pass

    def cancel_halfway(p):
        if p.phase == "download" and p.done > len(data) // 2:
            raise Cancelled()
    with pytest.raises(Cancelled):
        fetch([spec], tmp_path, progress=cancel_halfway)
    assert not (tmp_path / "infinity" / spec.name).exists()
    part, = (tmp_path / "infinity" / "big").glob("blob.safetensors.*.part")
    kept = part.stat().st_size
    assert 0 < kept < len(data)
    online.requests.clear()
    fetch([spec], tmp_path)
    assert (tmp_path / "infinity" / spec.name).read_bytes() == data and not leftovers(tmp_path)
    assert [r.range for r in online.requests if r.server == "cdn"] == [f"bytes={kept}-{len(data) - 1}"]


def test_a_corrupted_byte_is_refused_and_nothing_keeps_the_final_name(online, tmp_path):
    name = "infinity_2b_reg.pth"
    online.corrupt_at[name] = 12345
    with pytest.raises(DownloadError) as err:
        fetch([official("2b")], tmp_path)
    assert "checksum" in str(err.value) and "HINT" in str(err.value)
    assert not (tmp_path / "infinity" / name).exists() and not leftovers(tmp_path)
    online.corrupt_at.clear()
    fetch([official("2b")], tmp_path)  # a clean second run succeeds
    assert (tmp_path / "infinity" / name).is_file()


def test_present_files_are_skipped_without_asking_the_hub(online, tmp_path, monkeypatch):
    fetch(model_files.bundle("2b"), tmp_path)
    online.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # verified before: works offline
    report = fetch(model_files.bundle("2b"), tmp_path)
    assert report.fetched == 0 and len(report.skipped) == 3 and not online.requests


def test_a_file_placed_by_hand_is_adopted_when_it_is_official_and_never_overwritten(online, tmp_path):
    folder = tmp_path / "infinity"
    folder.mkdir()
    (folder / "infinity_2b_reg.pth").write_bytes((MODEL_A / "infinity_tiny_a.pth").read_bytes())
    report = fetch([official("2b")], tmp_path)
    assert report.fetched == 0 and downloads.is_verified(folder / "infinity_2b_reg.pth")
    assert online.bytes_served("infinity_2b_reg.pth") == 0
    (folder / "infinity_vae_d32reg.pth").write_bytes(b"my own file")
    with pytest.raises(DownloadError, match="not the official file"):
        fetch([official("vae_d32")], tmp_path)
    assert (folder / "infinity_vae_d32reg.pth").read_bytes() == b"my own file"


# ---- no network, no space, no permission, hostile names --------------------------------------------------
def test_offline_fails_at_once_naming_every_url_and_folder(online, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError) as err:
        fetch(model_files.bundle("2b"), tmp_path)
    text = str(err.value)
    assert "offline" in text and "HINT" in text and not online.requests
    for spec in model_files.bundle("2b"):
        assert str(tmp_path / spec.folder) in text
    assert official("2b").url in text and official("vae_d32").url in text and "google/flan-t5-xl" in text
    assert not any(tmp_path.rglob("*"))


def test_no_network_fails_the_same_way(tmp_path, monkeypatch):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(DownloadError) as err:
        fetch([official("2b")], tmp_path)
    assert "cannot reach" in str(err.value) and official("2b").url in str(err.value)


def test_a_full_disk_is_refused_before_writing(online, tmp_path, monkeypatch):
    monkeypatch.setattr(downloads.shutil, "disk_usage", lambda p: type("Usage", (), {"free": 1000})())
    with pytest.raises(DownloadError, match="free but the download needs"):
        fetch([official("2b")], tmp_path)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_a_disk_filling_up_mid_file_gives_a_clear_error(online, tmp_path, monkeypatch):
    real_open = open

    def filling(path, mode="r", *a, **kw):
        f = real_open(path, mode, *a, **kw)
        if "a" in mode:
            def write(data, _w=f.write):
                raise OSError(errno.ENOSPC, "No space left on device")
            f.write = write
        return f
    monkeypatch.setattr(hub, "open", filling, raising=False)
    with pytest.raises(DownloadError) as err:
        fetch([official("2b")], tmp_path)
    assert "disk is full" in str(err.value) and not (tmp_path / "infinity" / "infinity_2b_reg.pth").exists()


def test_a_read_only_folder_gives_a_clear_error(online, tmp_path, monkeypatch):
    def read_only(path, mode="r", *a, **kw):
        raise OSError(errno.EROFS, "Read-only file system", str(path))
    monkeypatch.setattr(hub, "open", read_only, raising=False)
    with pytest.raises(DownloadError) as err:
        fetch([official("vae_d32")], tmp_path)
    assert "read-only" in str(err.value) and "HINT" in str(err.value)
    assert not (tmp_path / "infinity" / "infinity_vae_d32reg.pth").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_a_folder_without_write_permission(online, tmp_path):
    (tmp_path / "infinity").mkdir()
    (tmp_path / "infinity").chmod(0o555)
    try:
        with pytest.raises(DownloadError, match="permission"):
            fetch([official("vae_d32")], tmp_path)
    finally:
        (tmp_path / "infinity").chmod(0o755)


def test_names_that_escape_the_models_folder_are_refused(online, tmp_path):
    online.add(hub_models.INFINITY, "evil/model.safetensors.index.json",
               json.dumps({"weight_map": {"a": "../../escaped.safetensors"}}).encode())
    spec = model_files.ModelFile("evil", "evil/model.safetensors.index.json", "infinity", "transformer", "evil",
                                 hub_models.INFINITY, "main", "evil/model.safetensors.index.json", recipe="sharded")
    with pytest.raises(DownloadError, match="outside the models folder|not a plain path"):
        fetch([spec], tmp_path)
    assert not (tmp_path / "escaped.safetensors").exists() and not (tmp_path.parent / "escaped.safetensors").exists()
    for bad in ("../x.pth", "/etc/x.pth", "a/../../x.pth"):
        with pytest.raises(DownloadError):
            downloads.safe_join(tmp_path, bad)
    (tmp_path / "link").symlink_to(tmp_path.parent)
    with pytest.raises(DownloadError, match="resolves outside"):
        downloads.safe_join(tmp_path, "link/x.pth")


def test_a_checksum_the_table_requires_is_required_of_the_hub(online, tmp_path):
    from dataclasses import replace
    spec = replace(official("2b"), sha256="0" * 64)
    with pytest.raises(DownloadError, match="another version"):
        fetch([spec], tmp_path)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
    good = replace(official("2b"), sha256=online.files[(hub_models.INFINITY, "infinity_2b_reg.pth")].sha256,
                   size=len(online.files[(hub_models.INFINITY, "infinity_2b_reg.pth")].data))
    fetch([good], tmp_path)


def test_the_token_goes_to_the_hub(online, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_for_the_stand_in")
    fetch([official("vae_d32")], tmp_path)
    assert any(r.auth for r in online.requests if r.server == "hub")
    assert not any(r.auth for r in online.requests if r.server == "cdn")


def test_the_table(monkeypatch):
    assert set(model_files.BUNDLES["all"]) == set(model_files.OFFICIAL)
    for spec in model_files.OFFICIAL.values():
        assert spec.url.startswith(f"https://huggingface.co/{spec.repo}/resolve/{spec.revision}/")
        assert spec.approx_bytes > 0
        assert spec.sha256 is None or len(spec.sha256) == 64
    assert model_files.T5_REVISION == "7d6315df2c2fb742f0f5b556879d730926ca9001"
    assert 2.9e9 < official("t5").approx_bytes < 3.0e9  # fp16 encoder + fp32 wo
    assert 4.8e9 < model_files.t5_download_bytes() < 5.0e9
    assert 4.0e9 < official("2b").approx_bytes < 5.0e9
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.example:8080/")
    assert hub.resolve_url("a/b", "main", "x y.pth") == "http://mirror.example:8080/a/b/resolve/main/x%20y.pth"


def test_the_readme_states_the_table():
    """The README's model table is the table: every official file with its size as model_files states it."""
    from shared_paths import REPO
    text = (REPO / "README.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| `")}
    for spec in model_files.OFFICIAL.values():
        row = next((line for key, line in rows.items() if key.startswith(f"`{spec.name}`")), None)
        assert row is not None, spec.name
        assert f"| {model_files.gb(spec.approx_bytes)} |" in row, (spec.name, row)
    assert f"encoder bytes fetched: {model_files.gb(model_files.t5_download_bytes())}" in text
    assert model_files.T5_REVISION[:7] in text
