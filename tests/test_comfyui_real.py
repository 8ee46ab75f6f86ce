"""The pack in a real ComfyUI server (and, if available, the real frontend in headless chromium).

Gated: runs only with `COMFYUI_PATH` = a ComfyUI checkout (e.g. 0.3.64). The server runs with the
Python in `COMFYUI_PYTHON` (default: this one) from a temporary working directory, with a temporary
`--base-directory` holding custom_nodes/ComfyUI-Infinity (a symlink to this repo), tiny stand-in
models under the exact file names the example workflows load (tests/comfyui_e2e/models.py), an input
image and user settings for the frontend. The browser part also needs `PLAYWRIGHT_CORE_DIR` (a
node_modules folder with playwright-core), `node` and chromium (`CHROMIUM`, default /usr/bin/chromium).
With `COMFYUI_FRONTEND_ROOT` (the `static` folder of a newer `comfyui-frontend-package`, e.g. 1.58.1) every
test runs again on a server started with `--front-end-root` there, and the browser checks run in both
canvases where that frontend has Nodes 2.0.

    COMFYUI_PATH=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/comfy-venv/bin/python \
    PLAYWRIGHT_CORE_DIR=/path/to/node_modules python -m pytest tests/test_comfyui_real.py -v
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from comfyui_e2e import models as tiny_models
from comfyui_e2e.ui_to_api import convert

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("INFINITY_SHARED", REPO.parent / "shared"))
MODEL_A = SHARED / "fixtures" / "infinity_ref" / "model_a"
TOKENIZER_DIR = SHARED / "fixtures" / "t5_tokenizer"
COMFYUI = Path(os.environ["COMFYUI_PATH"]) if os.environ.get("COMFYUI_PATH") else None
PYTHON = os.environ.get("COMFYUI_PYTHON", sys.executable)
PACK_DIR_NAME = "ComfyUI-Infinity"  # the custom_nodes folder name = the template module name
E2E = Path(__file__).resolve().parent / "comfyui_e2e"
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
PACK_NODES = {"InfinityTransformerLoader", "InfinityBitwiseTokenizerLoader", "InfinityTextEncoderLoader",
              "InfinityTextEncode", "InfinitySampler", "InfinitySamplerAdvanced", "InfinityDecode", "InfinityEncode",
              "InfinityInpaintComposite"}
RUN_TIMEOUT = 600
FRONTEND_ROOT = os.environ.get("COMFYUI_FRONTEND_ROOT")
FRONTENDS = ["own_frontend"] + (["newer_frontend"] if FRONTEND_ROOT else [])

pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.skipif(COMFYUI is None or not (COMFYUI / "main.py").is_file(),
                       reason="set COMFYUI_PATH to a ComfyUI checkout to run the real-ComfyUI tests"),
    pytest.mark.skipif(not MODEL_A.is_dir() or not (TOKENIZER_DIR / "tokenizer.json").is_file(),
                       reason=f"shared fixtures not found under {SHARED}"),
]


# ---- HTTP ----------------------------------------------------------------------------------------
def http(url: str, data=None, timeout: float = 60):
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, raw.decode(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """End exactly the server we started, by its PID: SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


# ---- the server ----------------------------------------------------------------------------------
@contextmanager
def comfyui_server(populate: bool, env_extra: dict, frontend: str = "own_frontend"):
    """A ComfyUI server on 127.0.0.1 from a temporary --base-directory holding the pack (a symlink to this repo),
    user settings, an input image and, with `populate`, tiny stand-ins for every model file the templates name."""
    root = Path(tempfile.mkdtemp(prefix="infinity_comfyui_"))
    base, cwd = root / "base", root / "cwd"
    proc = None
    try:
        for sub in ("custom_nodes", "input", "output", "temp", "user/default", "models/infinity",
                    "models/text_encoders"):
            (base / sub).mkdir(parents=True)
        cwd.mkdir()
        (base / "custom_nodes" / PACK_DIR_NAME).symlink_to(REPO, target_is_directory=True)
        (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(
            {"Comfy.TutorialCompleted": True, "Comfy.Canvas.NavigationMode": "custom"}))
        if populate:
            tiny_models.populate(base, MODEL_A, TOKENIZER_DIR)
        else:
            tiny_models.input_image(base / "input" / "example.png")
            tiny_models.masked_input_image(base / "input" / "example_masked.png")
        port = free_port()
        log_path = root / "server.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1", **env_extra)
        for key in [k for k, v in env_extra.items() if v is None]:
            env.pop(key, None)
        env.pop("PYTHONPATH", None)
        cmd = [PYTHON, str(COMFYUI / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--base-directory", str(base), "--disable-auto-launch", "--disable-api-nodes",
               "--database-url", "sqlite:///:memory:", "--preview-method", "auto"]
        if frontend == "newer_frontend":
            cmd += ["--front-end-root", FRONTEND_ROOT]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ComfyUI exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-4000:]}")
            try:
                if http(url + "/system_stats", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"ComfyUI did not start:\n{log_path.read_text(errors='replace')[-4000:]}")
            time.sleep(0.5)
        _, object_info = http(url + "/object_info", timeout=120)
        yield SimpleNamespace(url=url, base=base, log=log_path, object_info=object_info, proc=proc)
    finally:
        if proc is not None:
            stop(proc)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module", params=FRONTENDS)
def comfy(request):
    """Every model file in place; no network (HF_HUB_OFFLINE)."""
    with comfyui_server(True, {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}, request.param) as server:
        server.frontend = request.param
        yield server


@pytest.fixture(scope="module")
def hub_stand_in(tmp_path_factory):
    """The stand-in hub (tests/hub_server.py) serving the tiny official files: the internet for comfy_bare."""
    import hub_models
    from hub_server import FakeHub
    server = FakeHub().start()
    hub_models.populate(server, tmp_path_factory.mktemp("hub_src"))
    yield server
    server.stop()


@pytest.fixture(scope="module", params=FRONTENDS)
def comfy_bare(request, hub_stand_in):
    """No model files at all; HF_ENDPOINT points at the stand-in hub, so the loaders' downloads reach it."""
    with comfyui_server(False, {"HF_ENDPOINT": hub_stand_in.endpoint, "HF_HUB_OFFLINE": None,
                                "TRANSFORMERS_OFFLINE": None, "HF_TOKEN": None}, request.param) as server:
        server.frontend = request.param
        server.hub = hub_stand_in
        yield server


def run_prompt(comfy, prompt: dict, extra_data: dict | None = None) -> dict:
    status, response = http(comfy.url + "/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex,
                                                    "extra_data": extra_data or {}})
    assert status == 200, f"prompt refused ({status}): {json.dumps(response)[:3000]}"
    return wait_for(comfy, response["prompt_id"])


def wait_for(comfy, prompt_id: str) -> dict:
    deadline = time.time() + RUN_TIMEOUT
    while time.time() < deadline:
        _, history = http(f"{comfy.url}/history/{prompt_id}")
        entry = (history or {}).get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None \
                and entry["status"].get("status_str") in ("success", "error"):
            errors = [m for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
            assert entry["status"]["status_str"] == "success", \
                f"run failed: {json.dumps(errors)[:4000]}\n{comfy.log.read_text(errors='replace')[-3000:]}"
            return entry
        assert comfy.proc.poll() is None, f"ComfyUI died:\n{comfy.log.read_text(errors='replace')[-4000:]}"
        time.sleep(0.5)
    http(comfy.url + "/interrupt", {})
    pytest.fail(f"prompt {prompt_id} did not finish in {RUN_TIMEOUT}s")


def saved_images(comfy, entry: dict) -> list[Path]:
    files = []
    for output in entry.get("outputs", {}).values():
        for image in output.get("images", []):
            if image.get("type") == "output":
                files.append(comfy.base / "output" / image.get("subfolder", "") / image["filename"])
    return files


def make_fast(prompt: dict) -> dict:
    """Keep the runs short on a CPU: every budget to 0.06M (7 scales, 256 px at 1:1) and tiled decodes at
    the smallest tile (8 cells), so tiling still runs on the small latents. Everything else is as shipped."""
    for node in prompt.values():
        inputs = node["inputs"]
        if "budget" in inputs:
            inputs["budget"] = "0.06M"
        if inputs.get("tile_size", 0) > 0:
            inputs["tile_size"] = 8
    return prompt


def image_size(prompt: dict, ref: list, input_dir: Path) -> tuple[int, int]:
    """(width, height) of the IMAGE an output slot [node_id, slot] gives, following the graph."""
    from PIL import Image

    from infinity_core.schedules import schedule_for_size
    node = prompt[ref[0]]
    kind, inputs = node["class_type"], node["inputs"]
    if kind == "LoadImage":
        with Image.open(input_dir / inputs["image"]) as im:
            return im.size
    if kind == "ImagePadForOutpaint":
        w, h = image_size(prompt, inputs["image"], input_dir)
        return w + inputs["left"] + inputs["right"], h + inputs["top"] + inputs["bottom"]
    if kind == "ImageUpscaleWithModel":
        w, h = image_size(prompt, inputs["image"], input_dir)
        return 4 * w, 4 * h
    if kind == "InfinityInpaintComposite":  # the original's size
        return image_size(prompt, inputs["original"], input_dir)
    if kind == "InfinityDecode":
        return image_size(prompt, inputs["samples"], input_dir)
    if kind == "SetLatentNoiseMask":
        return image_size(prompt, inputs["samples"], input_dir)
    if kind == "InfinityEncode":
        w, h = inputs["width"], inputs["height"]
        if not (w and h):
            w, h = image_size(prompt, inputs["image"], input_dir)
        return schedule_for_size(w, h, inputs["budget"]).image_hw[::-1]
    if kind.startswith("InfinitySampler"):
        if isinstance(inputs.get("latent_image"), list):
            return image_size(prompt, inputs["latent_image"], input_dir)
        return schedule_for_size(inputs["width"], inputs["height"], inputs["budget"]).image_hw[::-1]
    raise AssertionError(f"no size rule for {kind}")


def expected_sizes(prompt: dict, input_dir: Path) -> set[tuple[int, int]]:
    """(width, height) of the saved images: the snapped sampler size (or the encoded image's), x4 after an
    upscaler, the original's after Infinity Inpaint Composite."""
    return {image_size(prompt, n["inputs"]["images"], input_dir) for n in prompt.values()
            if n["class_type"] == "SaveImage"}


def check_outputs(comfy, prompt: dict, entry: dict) -> list[Path]:
    """One PNG per image of the batch, each of the size the schedule gives."""
    from PIL import Image
    batch = max([n["inputs"].get("batch_size", 1) for n in prompt.values()] + [1])
    files = saved_images(comfy, entry)
    assert len(files) == batch, files
    want = expected_sizes(prompt, comfy.base / "input")
    for f in files:
        assert f.is_file() and f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f
        with Image.open(f) as im:
            assert im.size in want, (f.name, im.size, want)
    return files


# ---- tests ---------------------------------------------------------------------------------------
def test_pack_loads_without_errors(comfy):
    log = comfy.log.read_text(errors="replace")
    pack_lines = [line for line in log.splitlines() if PACK_DIR_NAME in line or "infinity" in line.lower()]
    bad = [line for line in pack_lines if "IMPORT FAILED" in line or "Cannot import" in line
           or "Error while calling comfy_entrypoint" in line]
    assert not bad, bad
    assert f"custom_nodes/{PACK_DIR_NAME}" in log  # listed among the loaded custom nodes


def test_object_info_lists_every_node(comfy):
    info = comfy.object_info
    assert PACK_NODES <= set(info), sorted(PACK_NODES - set(info))
    for node_id in PACK_NODES:
        assert info[node_id]["display_name"].startswith("Infinity")
        assert info[node_id]["python_module"].startswith("custom_nodes"), info[node_id]["python_module"]
    # the combos list the tiny models under the names the workflows use
    assert "infinity_8b_weights/model.safetensors.index.json" in \
        info["InfinityTransformerLoader"]["input"]["required"]["model_name"][1]["options"]


def test_core_node_table_of_the_ci_tests_matches_object_info(comfy):
    """tests/test_workflows.py checks the core nodes against a table; it must be what ComfyUI says."""
    from test_workflows import CORE_NODES, spec_from_object_info
    for node_type, spec in CORE_NODES.items():
        assert spec_from_object_info(comfy.object_info[node_type]) == spec, node_type


def test_schedules_route(comfy):
    from infinity_core import schedules as s
    status, tables = http(comfy.url + "/infinity/schedules")
    assert status == 200
    assert http(comfy.url + "/api/infinity/schedules") == (200, tables)
    assert [t for t, _ in tables["templates"]] == list(s.TEMPLATES)
    assert {t: tuple(map(tuple, g)) for t, g in tables["templates"]} == s.TEMPLATES
    assert dict(tables["budgets"]) == s.PIXEL_BUDGETS
    assert (tables["min_side"], tables["max_side"], tables["max_aspect"], tables["vae_stride"]) == \
        (s.MIN_SIDE, s.MAX_SIDE, s.MAX_ASPECT, s.VAE_STRIDE)


def test_templates_served(comfy):
    status, listing = http(comfy.url + "/api/workflow_templates")
    assert status == 200
    assert sorted(listing.get(PACK_DIR_NAME, [])) == sorted(p.stem for p in WORKFLOWS)
    for path in WORKFLOWS:
        assert http(f"{comfy.url}/api/workflow_templates/{PACK_DIR_NAME}/{path.name}") == \
            (200, json.loads(path.read_text()))
        with urllib.request.urlopen(f"{comfy.url}/api/workflow_templates/{PACK_DIR_NAME}/{path.stem}.jpg") as r:
            assert r.status == 200 and r.read(3) == b"\xff\xd8\xff"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs(comfy, path):
    workflow = json.loads(path.read_text())
    prompt = make_fast(convert(workflow, comfy.object_info))
    entry = run_prompt(comfy, prompt, {"extra_pnginfo": {"workflow": workflow}})
    check_outputs(comfy, prompt, entry)


def test_a_mismatched_tokenizer_is_refused_before_sampling(comfy):
    """The 2B template with Infinity-8B's tokenizer in its loader: the sampler refuses (hidden PROMPT: it sees the
    Decode's tokenizer) instead of sampling first and failing at Decode."""
    workflow = json.loads((REPO / "workflows" / "infinity_2b_text_to_image.json").read_text())
    prompt = make_fast(convert(workflow, comfy.object_info))
    loader = next(k for k, n in prompt.items() if n["class_type"] == "InfinityBitwiseTokenizerLoader")
    prompt[loader]["inputs"]["vae_name"] = "infinity_vae_d56_f8_14_patchify.pth"
    status, response = http(comfy.url + "/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
    assert status == 200, response
    deadline = time.time() + RUN_TIMEOUT
    while time.time() < deadline:
        _, history = http(f"{comfy.url}/history/{response['prompt_id']}")
        entry = (history or {}).get(response["prompt_id"])
        if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
            break
        time.sleep(0.5)
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert entry["status"]["status_str"] == "error" and errors[0]["node_type"] == "InfinitySampler", errors
    assert "the Infinity Decode of this latent uses infinity_vae_d56_f8_14_patchify.pth" in \
        errors[0]["exception_message"]


@pytest.mark.parametrize("pruning", ["off", "fastvar"])
def test_inpainting_respects_the_mask(comfy, pruning):
    """The inpaint template with the transparent hole of example_masked.png: Set Latent Noise Mask is
    respected (the sampled latent is the encoded one, cell for cell, wherever the mask paints nothing; it
    differs inside), and Infinity Inpaint Composite leaves every pixel farther than its feather from the
    mask identical to the input file. The same with FastVAR pruning on (its skipped scales keep the
    image's tokens too)."""
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    from comfyui_e2e.models import HOLE
    from infinity_core.sampling.masks import fit_mask
    from infinity_core.schedules import schedule_for_size
    workflow = json.loads((REPO / "workflows" / "infinity_inpaint.json").read_text())
    prompt = make_fast(convert(workflow, comfy.object_info))
    ids = {n["class_type"]: k for k, n in prompt.items()}
    prompt[ids["InfinitySampler"]]["inputs"]["pruning"] = pruning
    tag = uuid.uuid4().hex[:8]
    for name, source in (("sampled", "InfinitySampler"), ("encoded", "InfinityEncode")):
        prompt[f"save_{name}"] = {"class_type": "SaveLatent",
                                  "inputs": {"samples": [ids[source], 0], "filename_prefix": f"latents/{name}_{tag}"}}
    entry = run_prompt(comfy, prompt)
    latents = {name: load_file(str(next((comfy.base / "output" / "latents").glob(f"{name}_{tag}_*.latent"))))
               ["latent_tensor"] for name in ("sampled", "encoded")}
    source = Image.open(comfy.base / "input" / "example_masked.png")
    w, h = source.size
    top, left, bottom, right = HOLE
    mask = torch.zeros(1, h, w)
    mask[:, top:bottom, left:right] = 1  # Load Image's MASK: 1 - alpha
    frame = schedule_for_size(w, h, "0.06M").image_hw
    painted = torch.nn.functional.max_pool2d((fit_mask(mask, frame) > 0).float()[None], 16)[0, 0] > 0
    sampled, encoded = latents["sampled"][0], latents["encoded"][0]
    assert sampled.shape == encoded.shape and painted.shape == sampled.shape[-2:]
    assert torch.equal(sampled[:, ~painted], encoded[:, ~painted])
    assert not torch.equal(sampled[:, painted], encoded[:, painted])
    files = saved_images(comfy, entry)
    assert len(files) == 1
    out = np.asarray(Image.open(files[0]).convert("RGB"))
    original = np.asarray(source.convert("RGB"))
    feather = prompt[ids["InfinityInpaintComposite"]]["inputs"]["feather"]
    far = np.ones((h, w), dtype=bool)
    far[max(0, top - feather):bottom + feather, max(0, left - feather):right + feather] = False
    assert out.shape == original.shape
    assert (out[far] == original[far]).all()
    assert (out[top:bottom, left:right] != original[top:bottom, left:right]).any()


def test_invalid_prompt_is_refused(comfy):
    workflow = json.loads((REPO / "workflows" / "infinity_2b_text_to_image.json").read_text())
    prompt = convert(workflow, comfy.object_info)
    sampler = next(k for k, n in prompt.items() if n["class_type"] == "InfinitySampler")
    prompt[sampler]["inputs"]["width"] = 5
    status, response = http(comfy.url + "/prompt", {"prompt": prompt, "client_id": "invalid-test"})
    assert status == 400, response
    assert sampler in response["node_errors"], response
    assert "width" in json.dumps(response["node_errors"][sampler]), response


# ---- the real frontend ---------------------------------------------------------------------------
def _browser_requirements() -> str | None:
    node = shutil.which("node")
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    core = os.environ.get("PLAYWRIGHT_CORE_DIR")
    if not node:
        return "node not found"
    if not (core and (Path(core) / "playwright-core").is_dir()):
        return "set PLAYWRIGHT_CORE_DIR to a node_modules folder with playwright-core"
    if not (Path(chromium).is_file() or shutil.which(chromium)):
        return f"chromium not found ({chromium})"
    return None


@pytest.mark.skipif(_browser_requirements() is not None, reason=str(_browser_requirements()))
@pytest.mark.parametrize("canvas", ["classic", "nodes2"])
def test_templates_in_the_real_frontend(comfy, tmp_path, canvas):
    """Load each template the way the template browser does, shrink it through the frontend's widgets,
    convert with app.graphToPrompt(), queue it through the frontend's API client, and wait for it. In the
    classic canvas and in Nodes 2.0 (where the frontend has it): the text lines show their current values."""
    from PIL import Image

    from test_workflows import preview_text

    from infinity_core.errors import ResolutionError
    from infinity_core.schedules import schedule_for_size
    report_path = tmp_path / "browser.json"
    shots = os.environ.get("INFINITY_E2E_SCREENSHOTS")  # keep screenshots here when set
    cmd = ["node", str(E2E / "browser_check.mjs"), "--url", comfy.url, "--module", PACK_DIR_NAME,
           "--out", str(report_path), "--fast", "--queue", "--probe", "--template-dialog"]
    cmd += ["--screenshots", str(Path(shots) / f"{comfy.frontend}_{canvas}")] if shots else []
    cmd += ["--vue-nodes"] if canvas == "nodes2" else []
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert report_path.is_file(), result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    if canvas == "nodes2" and "Nodes 2.0 could not be turned on" in str(report.get("error")):
        pytest.skip(f"frontend {report.get('frontend')} has no Nodes 2.0")
    print(f"frontend {report['frontend']}, canvas {report['canvas']}")  # noqa: T201
    assert result.returncode == 0 and report["ok"], json.dumps(
        {k: report.get(k) for k in ("error", "page_errors", "console_errors", "failed_requests")}, indent=1)
    assert not report["page_errors"] and not report["console_errors"], report
    assert report["extension_registrations"] == 1
    dialog = report["template_dialog"]  # a card of the template browser loads the workflow, thumbnails show
    assert dialog.get("unavailable") or (dialog["ok"] and dialog["thumbnails"] >= len(WORKFLOWS)), dialog
    assert sorted(report["templates"]) == sorted(p.stem for p in WORKFLOWS)

    for item in report["workflows"]:
        assert item["status"] == 200 and item["thumbnail"] == 200, item["name"]
        assert all(n["known"] and not n["has_errors"] for n in item["nodes"]), item["nodes"]
        assert not item["dialogs"], item["dialogs"]  # e.g. "Missing Models" although every file is there
        status = item["model_status"]
        assert status and all(m["text"].startswith("✓") and m["shown"] == m["text"] for m in status), status
        assert not item["toasts"], item["toasts"]  # e.g. "Invalid workflow against zod schema"
        boxes = [(g["pos"][0], g["pos"][1] - 30, g["pos"][0] + g["size"][0], g["pos"][1] + g["size"][1])
                 for g in item["geometry"]]  # as the frontend laid them out (nodes grow to fit their widgets)
        assert not [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:]
                    if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]], item["name"]
        workflow = json.loads((REPO / "workflows" / f"{item['name']}.json").read_text())
        # the frontend's conversion equals ours (after the same fast overrides)
        assert _same_prompt(item["api_prompt"], make_fast(convert(workflow, comfy.object_info))), item["name"]
        # the size preview shows on every Infinity sampler/encoder
        kinds = {n["type"] for n in workflow["nodes"]} & {"InfinitySampler", "InfinitySamplerAdvanced",
                                                          "InfinityEncode"}
        assert {p["type"] for p in item["previews"]} == kinds
        assert all(p["text"].startswith("→") and p["shown"] == p["text"] for p in item["previews"]), item["previews"]
        entry = wait_for(comfy, item["queue"]["prompt_id"])
        for f in check_outputs(comfy, item["api_prompt"], entry):
            with Image.open(f) as im:  # queued by the frontend: the UI workflow is embedded
                assert "workflow" in im.info and "prompt" in im.info

    # the preview follows widget edits and says what the core will do with those values
    assert len(report["probe"]) >= 5 and len({c["text"] for c in report["probe"]}) == len(report["probe"])
    for case in report["probe"]:
        assert case["shown"] == case["text"], case  # what the node shows is the current value, in either canvas
        try:
            s = schedule_for_size(case["width"], case["height"], case["budget"])
        except ResolutionError:
            assert case["text"].startswith("⚠"), case
            continue
        assert case["text"] == preview_text(s), case


# ---- the first run: no model files, the stand-in hub as the internet ---------------------------------------
def _browser(comfy, tmp_path, *flags) -> dict:
    report_path = tmp_path / "browser.json"
    cmd = ["node", str(E2E / "browser_check.mjs"), "--url", comfy.url, "--module", PACK_DIR_NAME, "--out",
           str(report_path), *flags]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert report_path.is_file(), result.stdout + result.stderr
    return json.loads(report_path.read_text())


def test_object_info_offers_the_official_files_before_they_exist(comfy_bare):
    info = comfy_bare.object_info
    assert "infinity_2b_reg.pth" in info["InfinityTransformerLoader"]["input"]["required"]["model_name"][1]["options"]
    assert "download_missing" in info["InfinityTransformerLoader"]["input"]["optional"]
    status, files = http(comfy_bare.url + "/infinity/model_files")
    assert status == 200 and files and not any(f["present"] for f in files)


@pytest.mark.skipif(_browser_requirements() is not None, reason=str(_browser_requirements()))
def test_templates_open_without_a_failing_dialog_when_no_model_is_there(comfy_bare, tmp_path):
    """Loading each template with no model files: no Missing Models entry whose button the frontend disables
    (the Infinity files are fetched by the loaders, whose status line says so with the size)."""
    report = _browser(comfy_bare, tmp_path, "--dialogs-allowed")
    assert report["ok"] and not report["page_errors"], json.dumps({k: report.get(k) for k in ("error", "page_errors")})
    assert sorted(w["name"] for w in report["workflows"]) == sorted(p.stem for p in WORKFLOWS)
    for item in report["workflows"]:
        assert not item["dialog_errors"], (item["name"], item["dialog_errors"])
        assert all("Infinity" not in d and ".pth" not in d for d in item["dialogs"]), item["dialogs"]
        assert all(m["shown"] == m["text"] for m in item["model_status"]), item["model_status"]
        status = {m["type"]: m["text"] for m in item["model_status"]}
        assert len(status) == 3 and all(t.startswith("⬇ downloads on run: about ") for t in status.values()), status
        assert not [n for n in item["nodes"] if n["type"].startswith("Infinity") and n["has_errors"]], item["nodes"]
    upscale = next(w for w in report["workflows"] if w["name"] == "infinity_batch_upscale")
    # not ours: 1.27 offers it in a Missing Models dialog, 1.5x marks the node whose file is missing
    assert any("RealESRGAN_x4plus.safetensors" in d for d in upscale["dialogs"]) or \
        any(n["type"] == "UpscaleModelLoader" and n["has_errors"] for n in upscale["nodes"]), upscale


def test_a_template_runs_from_no_model_files_to_a_picture(comfy_bare):
    """The 2B and 8B templates as shipped (budget shrunk): the loaders download from the stand-in hub."""
    hub = comfy_bare.hub
    for name in ("infinity_2b_text_to_image", "infinity_8b_text_to_image"):
        workflow = json.loads((REPO / "workflows" / f"{name}.json").read_text())
        prompt = make_fast(convert(workflow, comfy_bare.object_info))
        t0 = time.time()
        entry = run_prompt(comfy_bare, prompt, {"extra_pnginfo": {"workflow": workflow}})
        check_outputs(comfy_bare, prompt, entry)
        loaders = [k for k, n in prompt.items() if n["class_type"] in ("InfinityTransformerLoader",
                                                                      "InfinityBitwiseTokenizerLoader")]
        texts = [entry["outputs"][k]["text"][0] for k in loaders if k in entry.get("outputs", {})]
        assert len(texts) == 2 and all(t.startswith("downloaded ") for t in texts), texts
        print(f"{name}: from no files to a picture in {time.time() - t0:.1f} s; {'; '.join(texts)}")  # noqa: T201
    models = comfy_bare.base / "models"
    assert (models / "infinity" / "infinity_2b_reg.pth").is_file()
    assert (models / "infinity" / "infinity_8b_weights" / "model.safetensors.index.json").is_file()
    assert (models / "text_encoders" / "flan-t5-xl-encoder" / "flan_t5_xl_encoder_fp16.safetensors").is_file()
    assert not list(models.rglob("*.part"))
    assert not any(r.auth for r in hub.requests if r.server == "cdn")
    _, files = http(comfy_bare.url + "/infinity/model_files")
    assert {f["name"] for f in files if f["present"]} >= {"infinity_2b_reg.pth", "infinity_vae_d32reg.pth"}


def _same_prompt(a: dict, b: dict) -> bool:
    """Equal up to _meta titles and float/int spelling (the frontend sends 3 for 3.0)."""
    if a.keys() != b.keys():
        return False
    for key in a:
        if a[key]["class_type"] != b[key]["class_type"] or a[key]["inputs"].keys() != b[key]["inputs"].keys():
            return False
        for name, value in a[key]["inputs"].items():
            other = b[key]["inputs"][name]
            if value != other and not (isinstance(value, (int, float)) and isinstance(other, (int, float))
                                       and float(value) == float(other)):
                return False
    return True
