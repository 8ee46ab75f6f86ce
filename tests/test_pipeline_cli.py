"""End to end: the pipeline, the command line (generate / selfcheck / convert / info), memory refusal."""
import copy
import logging
import shutil

import pytest
import torch
import torch.nn.functional as F

from infinity_core import cli
from infinity_core.errors import MemoryBudgetError, PromptError, ResolutionError, SamplingError
from infinity_core.images import decode_tiled, from_rgb01, preview_rgb
from infinity_core.pipeline import GenerationRequest, generate
from infinity_core.sampling.sampler import SamplerSettings, make_generators, sample
from infinity_core.schedules import ScaleSchedule
from shared_paths import TOKENIZER_DIR


def request(prompt, **kw):
    return GenerationRequest(prompt, width=256, height=256, budget="0.06M", **kw)


def test_generate_is_deterministic_and_batches_by_seed(tiny_transformer, tiny_tokenizer, prompt):
    images, result = generate(tiny_transformer, tiny_tokenizer, None, request(prompt, seed=5, batch=2))
    assert images.shape == (2, 256, 256, 3) and 0 <= images.min() and images.max() <= 1
    again, _ = generate(tiny_transformer, tiny_tokenizer, None, request(prompt, seed=5, batch=2))
    assert torch.equal(images, again)
    single, _ = generate(tiny_transformer, tiny_tokenizer, None, request(prompt, seed=6))
    assert (images[1] - single[0]).abs().max() < 1e-4  # same bits; batched decoding differs in float rounding only


def test_generate_edits_a_picture_through_a_mask(tiny_transformer, tiny_tokenizer, prompt):
    y, x = torch.meshgrid(torch.linspace(0, 1, 300), torch.linspace(0, 1, 280), indexing="ij")
    picture = torch.stack([x, y, (x + y) / 2], -1)[None]
    mask = torch.zeros(1, 75, 70)  # another size: stretched onto the picture (rows 100..199, columns 80..159)
    mask[:, 25:50, 20:40] = 1
    images, result = generate(tiny_transformer, tiny_tokenizer, None, request(prompt, image=picture, mask=mask,
                                                                              feather=8, seed=3))
    assert images.shape == picture.shape and result.schedule.template == 1.0  # 300x280 -> the 1:1 template
    far = torch.ones(300, 280, dtype=torch.bool)
    far[100 - 9:200 + 9, 80 - 9:160 + 9] = False
    assert torch.equal(images[0][far], picture[0][far])
    assert (images[0, 120:180, 100:140] - picture[0, 120:180, 100:140]).abs().mean() > 0.02
    encoded = tiny_tokenizer.image_to_bits(from_rgb01(picture, (256, 256)), result.schedule.vae_grids(False))[1]
    whole, kept = generate(tiny_transformer, tiny_tokenizer, None, request(prompt, image=picture, keep_scales=7))
    assert all(torch.equal(a, b.flatten(1, 3)) for a, b in zip(kept.bits, encoded))  # img2img, all scales kept
    assert whole.shape == (1, 256, 256, 3)  # no mask: the template's frame, as Infinity Encode
    with pytest.raises(SamplingError, match="HINT"):
        generate(tiny_transformer, tiny_tokenizer, None, request(prompt, mask=mask))
    with pytest.raises(SamplingError, match="keep_scales 9"):
        generate(tiny_transformer, tiny_tokenizer, None, request(prompt, image=picture, keep_scales=9))


def test_generate_with_a_mask_and_pruning(tiny_transformer, tiny_tokenizer, prompt):
    """The command line's path: --image --mask with --pruning fastvar keeps the picture outside the mask."""
    from infinity_core.sampling.speed import SpeedSettings
    y, x = torch.meshgrid(torch.linspace(0, 1, 256), torch.linspace(0, 1, 256), indexing="ij")
    picture = torch.stack([x, y, (x + y) / 2], -1)[None]
    mask = torch.zeros(1, 256, 256)
    mask[:, 64:192, 32:160] = 1
    edit = dict(image=picture, mask=mask, feather=8, seed=3)
    fast, result = generate(tiny_transformer, tiny_tokenizer, None,
                            request(prompt, speed=SpeedSettings("fastvar"), **edit))
    exact, _ = generate(tiny_transformer, tiny_tokenizer, None, request(prompt, **edit))
    assert result.skipped == (5, 6) and len(result.bits) == 5
    far = torch.ones(256, 256, dtype=torch.bool)
    far[64 - 9:192 + 9, 32 - 9:160 + 9] = False
    assert torch.equal(fast[0][far], picture[0][far])
    assert not torch.equal(fast[0][~far], exact[0][~far])  # the skipped scales change the regenerated part


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
    assert torch.equal(decode_tiled(tiny_tokenizer, z, tile=32), tiny_tokenizer.decode(z))
    with pytest.raises(ResolutionError, match="HINT"):
        decode_tiled(tiny_tokenizer, z, tile=4, overlap=4)


def test_tiles_are_placed_and_blended_exactly(tiny_tokenizer, monkeypatch):
    """With a purely local decoder (each latent cell -> its own 16x16 pixels), tiling must be invisible."""
    def local_decoder(z):
        return F.interpolate(z[:, :3], scale_factor=16, mode="nearest")
    monkeypatch.setattr(tiny_tokenizer.decoder, "forward", local_decoder)
    z = torch.rand(2, 16, 24, 40) * 2 - 1
    assert torch.allclose(decode_tiled(tiny_tokenizer, z, tile=8, overlap=2), tiny_tokenizer.decode(z), atol=1e-6)


def test_input_images_are_cover_cropped_to_the_schedule():
    image = torch.zeros(1, 300, 500, 3)
    image[:, 148:152, 248:252] = 1.0  # a marker at the centre
    x = from_rgb01(image, (256, 256))
    assert x.shape == (1, 3, 256, 256) and -1 <= x.min() and x.max() <= 1 and x.is_contiguous()
    ys, xs = torch.nonzero(x[0, 0] > 0, as_tuple=True)
    assert abs(ys.float().mean() - 127.5) < 1.5 and abs(xs.float().mean() - 127.5) < 1.5
    assert preview_rgb(torch.randn(2, 16, 1, 4, 4)).shape == (2, 256, 256, 3)


@pytest.mark.parametrize("storage,compute", [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.bfloat16),
                                             (torch.float16, torch.float16), (torch.float8_e4m3fn, torch.float32)])
def test_reduced_precision_weights_and_compute_sample_close_to_float32(tiny_transformer, prompt, storage, compute):
    schedule = ScaleSchedule(1.0, "0.06M")
    reference = sample(tiny_transformer, prompt, schedule, generators=make_generators(3, 1),
                       settings=SamplerSettings(top_k=1))
    low = copy.deepcopy(tiny_transformer).to(storage)
    result = sample(low, prompt, schedule, generators=make_generators(3, 1), settings=SamplerSettings(top_k=1),
                    compute_dtype=compute)
    agreement = [(a == b).float().mean().item() for a, b in zip(result.bits, reference.bits)]
    assert sum(agreement) / len(agreement) > 0.8, agreement  # unrelated bits would agree half the time


@pytest.mark.parametrize("settings,batch,needle", [(SamplerSettings(tau=0.0), 1, "tau"),
                                                   (SamplerSettings(top_p=1.5), 1, "top_p"),
                                                   (SamplerSettings(), 0, "batch")])
def test_impossible_sampler_settings_are_refused_with_a_hint(tiny_transformer, tiny_tokenizer, prompt, settings,
                                                             batch, needle):
    with pytest.raises(SamplingError, match=needle) as err:
        generate(tiny_transformer, tiny_tokenizer, None, request(prompt, batch=batch, settings=settings))
    assert "HINT" in str(err.value)


def test_cli_generate_without_files_names_every_missing_file(tmp_path, capsys):
    assert cli.main(["generate", "--prompt", "a fox", "--vae", "/nowhere/infinity_vae_d32reg.pth",
                     "--models-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    for needle in ("--transformer", "infinity_2b_reg.pth (not found)", "/nowhere/infinity_vae_d32reg.pth (not found)",
                   "--text-encoder", "huggingface.co/FoundationVision/Infinity", "google/flan-t5-xl",
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


@pytest.mark.skipif(not (TOKENIZER_DIR / "tokenizer.json").is_file(), reason="shared T5 tokenizer missing")
def test_cli_generate_end_to_end(tmp_path, tiny_files, capsys):
    """The run command with every file given: T5 folder -> sampler -> decoder -> PNGs (tiny models)."""
    import numpy as np
    from PIL import Image
    from transformers import T5Config, T5EncoderModel
    torch.manual_seed(0)
    t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=128, d_kv=32, d_ff=256, num_layers=1, num_heads=4,
                                 feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False))
    t5.save_pretrained(tmp_path / "flan-t5")
    for f in TOKENIZER_DIR.iterdir():
        shutil.copy(f, tmp_path / "flan-t5" / f.name)
    files = tiny_files["pth"]
    argv = ["generate", "--prompt", "a red fox", "--negative-prompt", "blurry", "--transformer",
            str(files["transformer"]), "--vae", str(files["tokenizer"]), "--text-encoder", str(tmp_path / "flan-t5"),
            "--width", "320", "--height", "240", "--budget", "0.06M", "--batch", "2", "--out", str(tmp_path / "x.png")]
    assert cli.main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    for i in range(2):
        assert Image.open(tmp_path / f"x_0{i}.png").size == (320, 240)
    rgba = Image.open(tmp_path / "x_00.png").convert("RGBA")  # inpaint its transparent hole
    alpha = Image.new("L", rgba.size, 255)
    alpha.paste(0, (100, 60, 180, 140))
    rgba.putalpha(alpha)
    rgba.save(tmp_path / "hole.png")
    argv[argv.index("--batch") + 1], argv[-1] = "1", str(tmp_path / "y.png")
    assert cli.main(argv + ["--image", str(tmp_path / "hole.png")]) == 0
    out = torch.from_numpy(np.asarray(Image.open(tmp_path / "y.png").convert("RGB")).copy())
    source = torch.from_numpy(np.asarray(rgba.convert("RGB")).copy())
    far = torch.ones(240, 320, dtype=torch.bool)
    far[60 - 16:140 + 16, 100 - 16:180 + 16] = False
    assert torch.equal(out[far], source[far]) and not torch.equal(out[60:140, 100:180], source[60:140, 100:180])
    (tmp_path / "not_a_picture.png").write_text("x")
    assert cli.main(argv + ["--image", str(tmp_path / "not_a_picture.png")]) == 1
    assert "cannot read the picture" in capsys.readouterr().err
