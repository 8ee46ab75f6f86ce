"""End to end: the pipeline, the command line (generate / selfcheck / convert / info), memory refusal."""
import logging

import pytest
import torch

from infinity_core import cli
from infinity_core.errors import MemoryBudgetError, PromptError
from infinity_core.images import decode_tiled, from_rgb01, preview_rgb
from infinity_core.pipeline import GenerationRequest, generate


def request(prompt, **kw):
    return GenerationRequest(prompt, width=256, height=256, budget="0.06M", **kw)


def test_generate_is_deterministic_and_batches_by_seed(tiny_transformer, tiny_tokenizer, prompt):
    images, result = generate(tiny_transformer, tiny_tokenizer, None, request(prompt, seed=5, batch=2))
    assert images.shape == (2, 256, 256, 3) and 0 <= images.min() and images.max() <= 1
    again, _ = generate(tiny_transformer, tiny_tokenizer, None, request(prompt, seed=5, batch=2))
    assert torch.equal(images, again)
    single, _ = generate(tiny_transformer, tiny_tokenizer, None, request(prompt, seed=6))
    assert (images[1] - single[0]).abs().max() < 1e-4  # same bits; batched decoding differs in float rounding only


def test_empty_prompt_is_refused(tiny_transformer, tiny_tokenizer):
    class Encoder:
        def encode(self, prompts):
            raise AssertionError("an empty prompt must not reach the text encoder")
    with pytest.raises(PromptError, match="HINT"):
        generate(tiny_transformer, tiny_tokenizer, Encoder(), request("   "))


def test_a_run_that_cannot_fit_is_refused_before_allocating(tiny_transformer, tiny_tokenizer, prompt, monkeypatch):
    monkeypatch.setattr("infinity_core.pipeline.available_bytes", lambda device: 1_000_000)
    with pytest.raises(MemoryBudgetError) as err:
        generate(tiny_transformer, tiny_tokenizer, None, request(prompt, batch=64))
    assert "GiB" in str(err.value) and "batch size" in str(err.value)


def test_tiled_decode_matches_whole_decode_when_one_tile_covers_it(tiny_tokenizer):
    z = torch.randn(1, 16, 12, 20)
    whole = tiny_tokenizer.decode(z)
    assert torch.equal(decode_tiled(tiny_tokenizer, z, tile=32), whole)
    tiled = decode_tiled(tiny_tokenizer, z, tile=8, overlap=2)
    assert tiled.shape == whole.shape and tiled.abs().max() <= 1


def test_input_images_are_cover_cropped_to_the_schedule():
    image = torch.rand(1, 300, 500, 3)
    x = from_rgb01(image, (256, 256))
    assert x.shape == (1, 3, 256, 256) and -1 <= x.min() and x.max() <= 1 and x.is_contiguous()
    assert preview_rgb(torch.randn(2, 16, 1, 4, 4)).shape == (2, 256, 256, 3)


def test_cli_generate_without_files_names_every_missing_file(capsys):
    assert cli.main(["generate", "--prompt", "a fox", "--vae", "/nowhere/infinity_vae_d32reg.pth"]) == 2
    err = capsys.readouterr().err
    for needle in ("--transformer (not given)", "/nowhere/infinity_vae_d32reg.pth (not found)", "--text-encoder",
                   "infinity_2b_reg.pth", "huggingface.co/FoundationVision/Infinity", "google/flan-t5-xl",
                   "models/infinity"):
        assert needle in err


def test_cli_selfcheck_writes_a_png(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    assert cli.main(["selfcheck", "--out", str(tmp_path / "check.png")]) == 0
    from PIL import Image
    assert Image.open(tmp_path / "check.png").size == (256, 256)
    assert "self-check passed" in caplog.text


def test_cli_convert_and_info(tmp_path, tiny_files, capsys):
    src = tiny_files["pth"]["transformer"]
    assert cli.main(["convert", str(src), str(tmp_path / "t.safetensors")]) == 0
    assert cli.main(["info", str(tmp_path / "t.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "infinity transformer" in out and "depth=4" in out


def test_cli_reports_bad_files_without_a_traceback(tmp_path, capsys):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"\x00" * 10)
    assert cli.main(["info", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "HINT" in err and "Traceback" not in err
