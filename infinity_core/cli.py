"""Command line: `python -m infinity_core {download,generate,convert,info,selfcheck} ...`."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import torch

from . import devices
from .errors import InfinityError
from .images import save_png
from .downloads.official import BUNDLES
from .model.pruning import DEFAULT_RATIO, PRESETS
from .schedules import AUTO_BUDGET, PIXEL_BUDGETS

MODEL_BUNDLES = [name for name in BUNDLES if name not in ("t5", "all")]  # the bundles of one model: 2b, 8b, ...

log = logging.getLogger("infinity_core")

DEFAULT_MODELS_DIR = "models"  # or $INFINITY_MODELS_DIR; ComfyUI's models/ folder works as is
MODEL_FILES = """\
Infinity needs three model files. Fetch them (verified, resumable) into a models folder with
  python -m infinity_core download 2b --models-dir models        (or 8b, 8b-512, t5, all)
then `generate` finds them there (--models-dir, default ./models or $INFINITY_MODELS_DIR):
  transformer        models/infinity/infinity_2b_reg.pth  (Infinity-8B: infinity_8b_weights/)
  bitwise tokenizer  models/infinity/infinity_vae_d32reg.pth  (Infinity-8B: infinity_vae_d56_f8_14_patchify.pth)
  text encoder       models/text_encoders/flan-t5-xl-encoder/  (or a google/flan-t5-xl folder in
                     models/text_encoders/flan-t5-xl/)
Any of them can also be given as a path: --transformer, --vae, --text-encoder."""


def _float_list(text: str):
    values = [float(v) for v in text.split(",") if v.strip()]
    return values[0] if len(values) == 1 else values


def _device(name: str) -> torch.device:
    if name == "auto":
        mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    return torch.device(name)


def _dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: the device policy (bf16 on Ampere+/ROCm/Apple, fp16 on Volta/Turing, fp32 on CPUs)."""
    if name == "auto":
        return devices.compute_dtype(devices.describe(device))
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def _models_dir(args) -> Path:
    return Path(args.models_dir or os.environ.get("INFINITY_MODELS_DIR") or DEFAULT_MODELS_DIR)


def _official_paths(args) -> dict[str, Path]:
    """Where the chosen model's official files are (or will be) in the models folder."""
    from .downloads.official import bundle
    root = _models_dir(args)
    paths = {spec.kind: root / spec.folder / spec.name for spec in bundle(args.model)}
    hf_folder = root / "text_encoders" / "flan-t5-xl"
    if not paths["text_encoder"].exists() and (hf_folder / "config.json").is_file():
        paths["text_encoder"] = hf_folder  # a google/flan-t5-xl folder downloaded by hand works too
    return paths


def _resolve_files(args) -> None:
    """--transformer/--vae/--text-encoder default to the official files of --model in --models-dir."""
    paths = _official_paths(args)
    args.transformer = args.transformer or str(paths["transformer"])
    args.vae = args.vae or str(paths["tokenizer"])
    args.text_encoder = args.text_encoder or str(paths["text_encoder"])


def _missing_files(args) -> list[str]:
    given = {"--transformer": args.transformer, "--vae": args.vae, "--text-encoder": args.text_encoder}
    return [f"{flag} {value} (not found)" for flag, value in given.items() if not Path(value).exists()]


def _download(targets: list[str], models_dir: Path, dry_run: bool = False) -> int:
    from .downloads.fetch import describe, plan, run
    from .downloads.official import bundle, gb
    specs = list({spec.key: spec for t in targets for spec in bundle(t)}.values())
    steps = plan(specs, lambda folder: models_dir / folder)
    print(f"models folder: {models_dir.resolve()}\n" + describe(steps))
    if dry_run or all(s.present for s in steps):
        return 0
    from tqdm.auto import tqdm
    with tqdm(total=1, unit="B", unit_scale=True, unit_divisor=1000, dynamic_ncols=True) as bar:
        def progress(p):
            bar.total = max(p.total, p.done)
            bar.set_description(f"{p.phase} {p.what[-40:]}", refresh=False)
            bar.update(p.done - bar.n)
        report = run(steps, progress)
    for path in report.paths:
        print(f"ready: {path}")
    print(f"fetched {gb(report.fetched)} in {report.seconds:.1f} s ({report.mb_per_s:.1f} MB/s)")
    return 0


def cmd_download(args) -> int:
    return _download(args.targets, _models_dir(args), args.dry_run)


def _load_picture(args) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """--image as `[1, H, W, 3]` in 0..1 and its mask `[1, h, w]` (1 = regenerate): --mask (white = regenerate),
    else the image's transparency (1 - alpha, as ComfyUI's Load Image), else none."""
    if not args.image:
        if args.mask:
            raise InfinityError("--mask needs --image: the picture whose unmasked part is kept",
                                hint="add --image PICTURE.png")
        return None, None
    import numpy as np
    from PIL import Image

    def read(path, mode):
        try:
            with Image.open(path) as im:
                return torch.from_numpy(np.asarray(im.convert(mode), dtype=np.float32) / 255.0)
        except (OSError, ValueError) as err:
            raise InfinityError(f"cannot read the picture {path}: {err}", hint="give a PNG or JPEG file",
                                path=path) from None
    rgba = read(args.image, "RGBA")
    mask = read(args.mask, "L")[None] if args.mask else None
    if mask is None and (rgba[..., 3] < 1).any():
        mask = 1 - rgba[..., 3][None]
    return rgba[None, ..., :3].contiguous(), mask


def cmd_generate(args) -> int:
    _resolve_files(args)
    missing = _missing_files(args)
    if missing and args.download:
        _download([args.model], _models_dir(args))
        missing = _missing_files(args)
    if missing:
        from .downloads.fetch import manual_instructions
        from .downloads.official import bundle
        root = _models_dir(args)
        sys.stderr.write("Missing model files:\n  " + "\n  ".join(missing) + "\n\n" + MODEL_FILES + "\n\n"
                         "Or add --download to fetch them now, or get them by hand:\n"
                         + manual_instructions(bundle(args.model), lambda folder: root / folder) + "\n")
        return 2
    image, mask = _load_picture(args)  # before loading any model
    from .files.loading import load_tokenizer, load_transformer
    from .pipeline import GenerationRequest, generate
    from .sampling.sampler import SamplerSettings
    from .sampling.speed import SpeedSettings
    from transformers.utils import logging as hf_logging

    from .files.t5_file import load_t5
    hf_logging.disable_progress_bar()  # our own log lines say what is loading
    device = _device(args.device)
    dtype = _dtype(args.dtype, device)
    t0 = time.perf_counter()
    transformer = load_transformer(args.transformer, dtype=dtype, device=device)
    tokenizer = load_tokenizer(args.vae, device=device)
    te_path = Path(args.text_encoder)
    te_dtype = devices.text_encoder_dtype(None, devices.describe(device))
    encoder = load_t5(te_path, tokenizer_dir=args.tokenizer, dtype=te_dtype, device=device)
    log.info("models loaded in %.1f s", time.perf_counter() - t0)
    settings = SamplerSettings(cfg=args.cfg, tau=args.tau, top_k=args.top_k, top_p=args.top_p,
                               cfg_insertion_layer=(args.cfg_insertion_layer,))
    speed = SpeedSettings(args.pruning, args.prune_ratio, args.unguided_last_scales)
    request = GenerationRequest(args.prompt, args.negative_prompt, args.width, args.height, args.budget,
                                args.seed, args.batch, settings, image=image, mask=mask,
                                keep_scales=args.keep_scales, feather=args.feather, speed=speed)
    t0 = time.perf_counter()

    def callback(progress):
        log.info("scale %d/%d", progress.index + 1, progress.total)

    images, result = generate(transformer, tokenizer, encoder, request, device=device, compute_dtype=dtype,
                              callback=callback, tile=args.tile or None)
    for path in save_png(images, Path(args.out)):
        print(f"wrote {path} ({images.shape[2]}x{images.shape[1]}, {time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_convert(args) -> int:
    from .files.convert import convert
    out = convert(args.src, args.dst, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def cmd_info(args) -> int:
    from .files.convert import describe
    print(describe(args.file))
    return 0


def cmd_selfcheck(args) -> int:
    from .selfcheck import run_selfcheck
    return run_selfcheck(Path(args.out), device=_device(args.device))


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="log progress")
    p = argparse.ArgumentParser(prog="python -m infinity_core", description="Infinity text-to-image, pure PyTorch",
                                parents=[common])
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="text to image with your model files", epilog=MODEL_FILES,
                       formatter_class=argparse.RawDescriptionHelpFormatter, parents=[common])
    g.add_argument("--prompt", required=True)
    g.add_argument("--negative-prompt", default="")
    g.add_argument("--model", default="2b", choices=MODEL_BUNDLES,
                   help="which official files to use from --models-dir (default 2b)")
    g.add_argument("--models-dir", help=f"models folder (default ${{INFINITY_MODELS_DIR}} or ./{DEFAULT_MODELS_DIR})")
    g.add_argument("--download", action="store_true", help="fetch the model's missing official files first")
    g.add_argument("--transformer", help="instead of the official file: infinity_2b_reg.pth / .safetensors / "
                                        "the Infinity-8B index.json or folder")
    g.add_argument("--vae", help="instead of the official file: a bitwise tokenizer, e.g. infinity_vae_d32reg.pth")
    g.add_argument("--text-encoder", help="instead of the official file: a flan-t5-xl folder, or an encoder-only "
                                          ".safetensors")
    g.add_argument("--tokenizer", help="T5 tokenizer folder (default: beside the text encoder)")
    g.add_argument("--width", type=int, default=1024)
    g.add_argument("--height", type=int, default=1024)
    g.add_argument("--budget", default=AUTO_BUDGET, choices=[AUTO_BUDGET, *PIXEL_BUDGETS],
                   help="pixel budget; auto (default): the one whose size is nearest to width x height")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch", type=int, default=1)
    g.add_argument("--cfg", type=_float_list, default=3.0, help="number, or one value per scale: 1,2,3,...")
    g.add_argument("--tau", type=_float_list, default=0.5, help="number, or one value per scale")
    g.add_argument("--top-k", type=int, default=900, help="per bit: 1 = greedy, others keep both (reference: 900)")
    g.add_argument("--top-p", type=float, default=0.97)
    g.add_argument("--cfg-insertion-layer", type=int, default=0)
    g.add_argument("--unguided-last-scales", type=int, default=0,
                   help="the last N scales run without guidance and without its unconditional half (faster; "
                        "0 = off). Same as a --cfg list ending in N ones")
    g.add_argument("--pruning", default="off", choices=list(PRESETS),
                   help="FastVAR token pruning: 'fastvar' = its setting (prune 2 late scales, skip the last 2), "
                        "'prune' = prune the last 4 scales, skip none; off = exact (default)")
    g.add_argument("--prune-ratio", type=float, default=DEFAULT_RATIO, help="fraction of tokens the pruned scales drop "
                   "(FastVAR: 0.5; the first pruned scale drops 0.8 x this)")
    g.add_argument("--tile", type=int, default=0, help="tiled decode, tile size in latent cells (0 = off)")
    g.add_argument("--image", help="edit this picture (its aspect sets the size; --width/--height are ignored)")
    g.add_argument("--mask", help="with --image: what to regenerate (white = regenerate); default: the picture's "
                                  "transparent part, if any")
    g.add_argument("--keep-scales", type=int, default=0,
                   help="with --image: scales kept whole from it (image-to-image), the mask applies after them")
    g.add_argument("--feather", type=int, default=16, help="with a mask: px of blending into the original")
    g.add_argument("--device", default="auto", help="auto = cuda, else mps, else cpu; or e.g. cuda:1")
    g.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="compute dtype; auto: bf16 on Ampere+ / ROCm / Apple (macOS 14+), fp16 on Volta/Turing, "
                        "fp32 on CPUs (README: GPUs and Macs)")
    g.add_argument("--out", default="infinity.png")
    g.set_defaults(func=cmd_generate)
    d = sub.add_parser("download", help="fetch the official model files into a models folder (verified, resumable)",
                       parents=[common])
    d.add_argument("targets", nargs="+", choices=list(BUNDLES),
                   help="2b / 8b / 8b-512: transformer + tokenizer + text encoder; t5: the text encoder only")
    d.add_argument("--models-dir", help=f"models folder (default ${{INFINITY_MODELS_DIR}} or ./{DEFAULT_MODELS_DIR}); "
                                        "files go to its infinity/ and text_encoders/ subfolders, as in ComfyUI")
    d.add_argument("--dry-run", action="store_true", help="only say what is present and what would be fetched")
    d.set_defaults(func=cmd_download)
    c = sub.add_parser("convert", help="write a .safetensors copy of a .pth checkpoint (same keys)", parents=[common])
    c.add_argument("src")
    c.add_argument("dst", nargs="?", help="output file (default: SRC with .safetensors); never replaced unless "
                                         "--overwrite")
    c.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    c.set_defaults(func=cmd_convert)
    i = sub.add_parser("info", help="print what a checkpoint file is and its inferred architecture", parents=[common])
    i.add_argument("file")
    i.set_defaults(func=cmd_info)
    s = sub.add_parser("selfcheck", help="run the whole pipeline on tiny random weights (no downloads)",
                       parents=[common])
    s.add_argument("--out", default="infinity_selfcheck.png")
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=cmd_selfcheck)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose or args.command == "selfcheck" else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for name in ("httpx", "httpx2", "urllib3"):  # one line per HTTP request otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except InfinityError as err:
        sys.stderr.write(f"error: {err}\n")
        return 1
