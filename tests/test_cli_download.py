"""The command line's set-up: `download` into a models folder, `generate` finding the files there (and
`generate --download` doing both), against the stand-in hub (tests/hub_server.py)."""
from __future__ import annotations

import pytest
from PIL import Image

from hub_harness import needs_fixtures
from infinity_core import cli

pytestmark = needs_fixtures
FAST = ["--width", "256", "--height", "256", "--seed", "3"]  # budget auto: 0.06M, 7 scales


def test_download_then_generate_from_the_models_folder(online, tmp_path, capsys):
    models = tmp_path / "models"
    assert cli.main(["download", "2b", "--models-dir", str(models)]) == 0
    out = capsys.readouterr().out
    assert "ready:" in out and "MB/s" in out
    assert (models / "infinity" / "infinity_2b_reg.pth").is_file()
    assert (models / "text_encoders" / "flan-t5-xl-encoder" / "flan_t5_xl_encoder_fp16.safetensors").is_file()
    assert cli.main(["download", "2b", "--models-dir", str(models)]) == 0  # again: nothing to fetch
    assert capsys.readouterr().out.count("present (verified)") == 3
    assert cli.main(["generate", "--models-dir", str(models), "--prompt", "a red fox", *FAST,
                     "--out", str(tmp_path / "fox.png")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert Image.open(tmp_path / "fox.png").size == (256, 256)


def test_generate_download_is_one_command(online, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("INFINITY_MODELS_DIR", str(tmp_path / "m"))
    assert cli.main(["generate", "--download", "--prompt", "a red fox", *FAST, "--out", str(tmp_path / "x.png")]) == 0
    assert Image.open(tmp_path / "x.png").size == (256, 256)
    assert (tmp_path / "m" / "infinity" / "infinity_vae_d32reg.pth").is_file()


def test_dry_run_fetches_nothing(online, tmp_path, capsys):
    assert cli.main(["download", "8b", "--models-dir", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "infinity_8b_weights/model.safetensors.index.json: fetch" in out and "flan-t5-xl-encoder" in out
    assert not any(p.is_file() and not p.name.endswith(".part") for p in tmp_path.rglob("*"))


def test_download_offline_fails_at_once_with_urls_and_folders(online, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["download", "2b", "--models-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "HINT" in err and "Traceback" not in err
    assert "https://huggingface.co/FoundationVision/Infinity/resolve/main/infinity_2b_reg.pth" in err
    assert f"{tmp_path}/infinity/" in err and not online.requests


def test_generate_without_files_says_how_to_get_them(tmp_path, capsys):
    assert cli.main(["generate", "--prompt", "a fox", "--models-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    for needle in (f"{tmp_path}/infinity/infinity_2b_reg.pth (not found)", "download 2b", "--download",
                   "https://huggingface.co/FoundationVision/Infinity/resolve/main/infinity_vae_d32reg.pth"):
        assert needle in err, needle


@pytest.mark.parametrize("argv", [["download"], ["download", "3b"]])
def test_download_arguments(argv, capsys):
    with pytest.raises(SystemExit):
        cli.main(argv)
