"""The first hour in the fake ComfyUI: loaders fetching the official files from the stand-in hub (progress,
Cancel, resume), then a picture; the smaller first-run items (budget auto, previews settings, Decode cancel,
one img2img control, UI messages, the tokenizer checked before sampling, quiet names).

Harness: tests/pack_harness.py (fake ComfyUI) and tests/hub_harness.py (stand-in hub).
"""
from __future__ import annotations

import pytest


from pack_harness import SIZE, decode, expect_error, first, needs_shared, run, sampler

pytestmark = needs_shared
OFFICIAL_T5 = "flan-t5-xl-encoder/flan_t5_xl_encoder_fp16.safetensors"


def download_dir(env, folder):
    return env.fp.get_folder_paths(folder)[0]


def remove_official(env):
    import shutil
    from pathlib import Path
    for folder in ("infinity", "text_encoders"):
        root = Path(download_dir(env, folder))
        for name in ("infinity_2b_reg.pth", "infinity_vae_d32reg.pth", "flan-t5-xl-encoder",
                     ".infinity-downloads.json"):
            target = root / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        for part in root.glob("*.part"):
            part.unlink()


@pytest.fixture
def clean(env):
    remove_official(env)
    yield
    remove_official(env)


# ---- from no model files to a picture ------------------------------------------------------------------------
def test_a_missing_official_file_is_not_fetched_unless_asked(env, online, clean):
    expect_error(lambda: run(env, "InfinityTransformerLoader", model_name="infinity_2b_reg.pth"),
                 "model_name", "not in models/infinity", "download_missing",
                 "https://huggingface.co/FoundationVision/Infinity/resolve/main/infinity_2b_reg.pth")
    assert not online.requests and not env.mm.LOAD_CALLS


def test_loaders_fetch_the_official_files_then_a_picture(env, online, clean):
    model_out = run(env, "InfinityTransformerLoader", model_name="infinity_2b_reg.pth", download_missing=True)
    assert "downloaded infinity_2b_reg.pth" in model_out.ui.as_dict()["text"][0]
    updates = [u for u in env.utils.UPDATES if u["node_id"] == "42"]
    assert updates and updates[-1]["value"] == updates[-1]["total"]  # the bar reaches its end
    assert (env.base / "models" / "user_infinity" / "infinity_2b_reg.pth").is_file()  # the folder's first path
    vae = first(run(env, "InfinityBitwiseTokenizerLoader", vae_name="infinity_vae_d32reg.pth", download_missing=True))
    t5_out = run(env, "InfinityTextEncoderLoader", text_encoder_name=OFFICIAL_T5, dtype="default",
                 download_missing=True)
    assert (env.base / "models" / "text_encoders" / OFFICIAL_T5).is_file()
    t5 = first(t5_out)
    assert type(t5.patcher.model).__name__ == "T5Encoder"  # what "Requested to load ..." prints
    positive = first(run(env, "InfinityTextEncode", text_encoder=t5, text="a red fox in the snow"))
    models = type("Models", (), {"model": first(model_out), "positive": positive, "vae": vae})
    image = decode(env, models, first(sampler(env, models, **SIZE)))
    assert image.shape == (1, 256, 256, 3) and image.std() > 0.01
    online.requests.clear()  # present now: loading again asks nobody
    run(env, "InfinityTransformerLoader", model_name="infinity_2b_reg.pth", download_missing=True)
    assert not online.requests


def test_cancel_stops_a_download_and_the_next_run_resumes(env, online, clean, monkeypatch):
    from pathlib import Path

    import huggingface_hub.constants

    import hub_models
    data = online.files[(hub_models.INFINITY, "infinity_2b_reg.pth")].data
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)  # 10 MB > the tiny file
    env.utils.set_progress_bar_global_hook(
        lambda value, total, preview, node_id=None:
        value > len(data) // 2 and env.mm.interrupt_current_processing(True))
    with pytest.raises(env.mm.InterruptProcessingException):
        run(env, "InfinityTransformerLoader", model_name="infinity_2b_reg.pth", download_missing=True)
    env.utils.set_progress_bar_global_hook(None)
    folder = Path(download_dir(env, "infinity"))
    assert not (folder / "infinity_2b_reg.pth").exists()
    part, = folder.glob("infinity_2b_reg.pth.*.part")
    kept = part.stat().st_size
    assert 0 < kept < len(data)
    online.requests.clear()
    run(env, "InfinityTransformerLoader", model_name="infinity_2b_reg.pth", download_missing=True)
    assert (folder / "infinity_2b_reg.pth").read_bytes() == data
    assert [r.range for r in online.requests if r.server == "cdn"] == [f"bytes={kept}-{len(data) - 1}"]  # only the rest


def test_offline_loader_error_names_url_and_folder(env, online, clean, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = expect_error(lambda: run(env, "InfinityBitwiseTokenizerLoader", vae_name="infinity_vae_d32reg.pth",
                                   download_missing=True), "vae_name", "cannot reach")
    assert "infinity_vae_d32reg.pth" in str(err) and download_dir(env, "infinity") in str(err)


# ---- the smaller first-hour items ----------------------------------------------------------------------------
def test_budget_auto_picks_the_nearest_pixel_count_and_says_so(env, models):
    schema = {i.id: i for i in env.nodes["InfinitySampler"].GET_SCHEMA().inputs}
    assert schema["budget"].default == "auto" and schema["budget"].options[0] == "auto"
    out = sampler(env, models, width=256, height=256, budget="auto", stop_after_scale=2, node="InfinitySamplerAdvanced")
    assert "budget auto → 0.06M" in out.ui.as_dict()["text"][0]
    assert first(out)["infinity"]["budget"] == "0.06M"
    explicit = sampler(env, models, width=256, height=256, budget="0.25M", stop_after_scale=1,
                       node="InfinitySamplerAdvanced")
    assert first(explicit)["infinity"]["budget"] == "0.25M" and "budget 0.25M" in explicit.ui.as_dict()["text"][0]


def test_previews_follow_comfyui_preview_settings(env, models):
    env.cli_args.args.preview_method = env.cli_args.LatentPreviewMethod.NoPreviews  # ComfyUI's default
    sampler(env, models, node="InfinitySamplerAdvanced", vae=models.vae, stop_after_scale=4)
    assert [u["value"] for u in env.utils.UPDATES] == [1, 2, 3, 4] and all(u["preview"] is None
                                                                          for u in env.utils.UPDATES)
    assert env.mm.LOAD_CALLS[-1]["models"] == [models.model.patcher]  # no decoder loaded for previews
    env.utils.UPDATES.clear()
    env.cli_args.args.preview_method = env.cli_args.LatentPreviewMethod.Latent2RGB
    env.cli_args.args.preview_size = 64
    sampler(env, models, node="InfinitySamplerAdvanced", vae=models.vae, stop_after_scale=7)
    previews = [u["preview"] for u in env.utils.UPDATES]
    assert all(p[0] == "JPEG" and p[2] == 64 and max(p[1].size) <= 64 for p in previews)
    assert previews[-1][1].size == (64, 64)


def test_decode_moves_per_image_and_cancels_between_images(env, models):
    latent = first(sampler(env, models, batch_size=3, **SIZE))
    env.utils.UPDATES.clear()
    calls, decoder = [], models.vae.patcher.model
    real = decoder.decode
    decoder.decode = lambda z: calls.append(z.shape[0]) or real(z)
    try:
        images = decode(env, models, latent)
        assert images.shape[0] == 3 and calls == [1, 1, 1]
        assert [(u["value"], u["total"]) for u in env.utils.UPDATES] == [(1, 3), (2, 3), (3, 3)]
        env.utils.UPDATES.clear()
        calls.clear()
        env.utils.set_progress_bar_global_hook(
            lambda value, total, preview, node_id=None: env.mm.interrupt_current_processing(True))
        with pytest.raises(env.mm.InterruptProcessingException):
            decode(env, models, latent)
        assert calls == [1]  # stopped after the first image
        env.utils.set_progress_bar_global_hook(None)
        env.utils.UPDATES.clear()
        tiled = decode(env, models, latent, tile_size=8)  # 16x16 cells in 8-cell tiles, overlap 4: 9 tiles
        assert tiled.shape == images.shape and [u["total"] for u in env.utils.UPDATES] == [27] * 27
    finally:
        del decoder.decode
        env.utils.set_progress_bar_global_hook(None)


def test_denoise_and_regenerate_from_scale_cannot_both_decide(env, models, gradient_image):
    encoded = first(run(env, "InfinityEncode", image=gradient_image, vae=models.vae, width=256, height=256,
                        budget="0.06M"))
    expect_error(lambda: sampler(env, models, node="InfinitySamplerAdvanced", latent_image=encoded, denoise=0.5,
                                 regenerate_from_scale=3), "denoise 0.5 and regenerate_from_scale 3", "use one")
    out = sampler(env, models, node="InfinitySamplerAdvanced", latent_image=encoded, regenerate_from_scale=3)
    assert "3 of 7 scales from the image" in out.ui.as_dict()["text"][0]


def test_text_encode_says_how_many_tokens_and_what_was_cut(env, models):
    short = run(env, "InfinityTextEncode", text_encoder=models.t5, text="a red fox")
    assert short.ui.as_dict()["text"][0].endswith("of 512 T5 tokens")
    long = run(env, "InfinityTextEncode", text_encoder=models.t5, text=" ".join(f"fox{i}" for i in range(400)))
    text = long.ui.as_dict()["text"][0]
    assert text.startswith("⚠") and "only the first 512 are used" in text and first(long).embedding.lens == (512,)


def _decode_prompt(vae_name: str) -> dict:
    """A queued graph where the sampler (id 42) feeds an Infinity Decode whose tokenizer loader reads vae_name."""
    return {"42": {"class_type": "InfinitySampler", "inputs": {}},
            "7": {"class_type": "InfinityDecode", "inputs": {"samples": ["42", 0], "vae": ["2", 0], "tile_size": 0}},
            "2": {"class_type": "InfinityBitwiseTokenizerLoader", "inputs": {"vae_name": vae_name}}}


def test_a_tokenizer_that_does_not_fit_is_caught_before_sampling(env, models):
    incompatible = env.core("errors").IncompatibleModelsError
    expect_error(lambda: sampler(env, models, prompt=_decode_prompt("vae_d32.safetensors"), **SIZE),
                 "the Infinity Decode of this latent uses vae_d32.safetensors", "32 bits", kind=incompatible)
    expect_error(lambda: sampler(env, models, prompt=_decode_prompt("infinity_vae_d56_f8_14_patchify.pth"), **SIZE),
                 "infinity_vae_d56_f8_14_patchify.pth", kind=incompatible)  # official, not downloaded: from the table
    assert not env.mm.LOAD_CALLS  # refused before anything was loaded or sampled
    assert first(sampler(env, models, prompt=_decode_prompt("vae_tiny_a.safetensors"), stop_after_scale=1,
                         node="InfinitySamplerAdvanced", **SIZE))["samples"].shape[1] == 16
    assert first(sampler(env, models, prompt=_decode_prompt("no_such_file.pth"), stop_after_scale=1,
                         node="InfinitySamplerAdvanced", **SIZE))  # unknown files are left to their loader


def test_no_transformers_warning_when_loading_t5(env, caplog, monkeypatch):
    """transformers 4.x warns on every load that tokenizer.json names 'T5Tokenizer' (we load the fast file on
    purpose); the warning is silenced. Emulated here, since transformers 5 no longer says it."""
    import logging
    text_encoder = env.core("model.text_encoder")
    fast = text_encoder.PreTrainedTokenizerFast
    real = fast.from_pretrained.__func__

    def warning_then_load(cls, *args, **kwargs):
        logging.getLogger("transformers.tokenization_utils_base").warning(
            "The tokenizer class you load from this checkpoint is not the same type as the class this function is "
            "called from.")
        return real(cls, *args, **kwargs)
    monkeypatch.setattr(fast, "from_pretrained", classmethod(warning_then_load))
    caplog.set_level(logging.WARNING)
    run(env, "InfinityTextEncoderLoader", text_encoder_name="t5_tiny_encoder.safetensors", dtype="fp32")
    assert not [r for r in caplog.records if "tokenizer class" in r.getMessage()]
    logging.getLogger("transformers.tokenization_utils_base").warning("The tokenizer class you load ...")
    assert [r for r in caplog.records if "tokenizer class" in r.getMessage()]  # silenced only during the load


@pytest.mark.skipif(__import__("shutil").which("node") is None, reason="node is not installed")
def test_the_loader_status_line_reads_the_route(env, tmp_path):
    """GET /infinity/model_files (official_status) as the web extension's status line reads it."""
    import json
    import os
    import subprocess

    from pack_harness import REPO
    status = env.pack.nodes.comfy_glue.official_status()
    assert {s["name"] for s in status} >= {"infinity_2b_reg.pth", OFFICIAL_T5} and json.loads(json.dumps(status))
    assert all(s["size"].endswith("GB") and s["source"].startswith("huggingface.co/") for s in status)
    payload = tmp_path / "files.json"
    status[0]["present"] = True  # one present, the rest missing
    payload.write_text(json.dumps(status))
    script = REPO / "tests" / "js" / "infinity_models.test.mjs"
    result = subprocess.run(["node", "--test", "--test-reporter=tap", str(script)],
                            capture_output=True, text=True, env=dict(os.environ, INFINITY_MODEL_FILES=str(payload)),
                            timeout=120)
    passed = result.returncode == 0 and "# fail 0" in result.stdout and "# skipped 0" in result.stdout
    assert passed, result.stdout[-3000:]


def test_the_prompts_preview_method_applies_where_comfyui_has_one(env, models):
    """The newest frontend sends its "Live preview method" with each prompt and the server applies it for that
    prompt; the sampler reads the method when it runs, so "none" there means no previews even though ComfyUI
    was started with --preview-method auto (0.3.64 has no such setting: the launch flag rules)."""
    def previews(method):
        env.utils.UPDATES.clear()
        sampler(env, models, node="InfinitySamplerAdvanced", vae=models.vae, stop_after_scale=2,
                extra_data={"preview_method": method})
        return [u["preview"] is not None for u in env.utils.UPDATES]
    newest = env.generation != "0.3.64"
    assert previews("none") == ([False, False] if newest else [True, True])
    assert previews("auto") == [True, True]
    assert env.cli_args.args.preview_method == env.cli_args.LatentPreviewMethod.Auto  # the launch flag again
