"""Command line: `python -m infinity_core {generate,convert,info,selfcheck} ...`."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from .errors import InfinityError
from .images import save_png

log = logging.getLogger("infinity_core")

MODEL_FILES = """\
Infinity needs three model files (download them yourself; nothing is fetched automatically):
  transformer         infinity_2b_reg.pth (Infinity-2B, 2.2B params)
                      https://huggingface.co/FoundationVision/Infinity  ->  ComfyUI/models/infinity/
  bitwise tokenizer   infinity_vae_d32reg.pth (the tokenizer Infinity-2B was trained with)
                      https://huggingface.co/FoundationVision/Infinity  ->  ComfyUI/models/infinity/
  text encoder        google/flan-t5-xl (folder with config.json, weights and tokenizer files)
                      https://huggingface.co/google/flan-t5-xl  ->  ComfyUI/models/text_encoders/flan-t5-xl/
  Infinity-8B instead: the folder infinity_8b_weights/ and infinity_vae_d56_f8_14_patchify.pth
                      (same Hugging Face repository).
Then: python -m infinity_core generate --transformer T --vae V --text-encoder DIR --prompt "..." --out out.png"""


def _float_list(text: str):
    values = [float(v) for v in text.split(",") if v.strip()]
    return values[0] if len(values) == 1 else values


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def _missing_files(args) -> list[str]:
    given = {"--transformer": args.transformer, "--vae": args.vae, "--text-encoder": args.text_encoder}
    return [f"{flag} {'(not given)' if not value else value + ' (not found)'}"
            for flag, value in given.items() if not value or not Path(value).exists()]


def cmd_generate(args) -> int:
    missing = _missing_files(args)
    if missing:
        sys.stderr.write("Missing model files:\n  " + "\n  ".join(missing) + "\n\n" + MODEL_FILES + "\n")
        return 2
    from .loading import load_tokenizer, load_transformer
    from .pipeline import GenerationRequest, generate
    from .sampler import SamplerSettings
    from .speed import SpeedSettings
    from transformers.utils import logging as hf_logging

    from .text_encoder import T5TextEncoder
    hf_logging.disable_progress_bar()  # our own log lines say what is loading
    device = _device(args.device)
    dtype = _dtype(args.dtype, device)
    t0 = time.perf_counter()
    transformer = load_transformer(args.transformer, dtype=dtype, device=device)
    tokenizer = load_tokenizer(args.vae, device=device)
    te_path = Path(args.text_encoder)
    te_dtype = torch.float16 if device.type == "cuda" else torch.float32
    encoder = (T5TextEncoder.from_folder(te_path, dtype=te_dtype, device=device, tokenizer_dir=args.tokenizer)
               if te_path.is_dir() else
               T5TextEncoder.from_single_file(te_path, tokenizer_dir=args.tokenizer or te_path.parent,
                                              dtype=te_dtype, device=device))
    log.info("models loaded in %.1f s", time.perf_counter() - t0)
    settings = SamplerSettings(cfg=args.cfg, tau=args.tau, top_k=args.top_k, top_p=args.top_p,
                               cfg_insertion_layer=(args.cfg_insertion_layer,))
    speed = SpeedSettings(args.pruning, args.prune_ratio, args.unguided_last_scales)
    request = GenerationRequest(args.prompt, args.negative_prompt, args.width, args.height, args.budget,
                                args.seed, args.batch, settings, speed)
    t0 = time.perf_counter()

    def callback(progress):
        log.info("scale %d/%d", progress.index + 1, progress.total)

    images, result = generate(transformer, tokenizer, encoder, request, device=device, compute_dtype=dtype,
                              callback=callback, tile=args.tile or None)
    for path in save_png(images, Path(args.out)):
        print(f"wrote {path} ({images.shape[2]}x{images.shape[1]}, {time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_convert(args) -> int:
    from .convert import convert
    out = convert(args.src, args.dst)
    print(f"wrote {out}")
    return 0


def cmd_info(args) -> int:
    from .convert import describe
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
    g.add_argument("--transformer", help="infinity_2b_reg.pth / .safetensors / Infinity-8B weights folder")
    g.add_argument("--vae", help="bitwise tokenizer, e.g. infinity_vae_d32reg.pth")
    g.add_argument("--text-encoder", help="flan-t5-xl folder, or an encoder-only .safetensors")
    g.add_argument("--tokenizer", help="T5 tokenizer folder (default: beside the text encoder)")
    g.add_argument("--width", type=int, default=1024)
    g.add_argument("--height", type=int, default=1024)
    g.add_argument("--budget", default="1M", choices=["0.06M", "0.25M", "0.60M", "1M"])
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
    g.add_argument("--pruning", default="off", choices=["off", "prune", "fastvar"],
                   help="FastVAR token pruning: 'fastvar' = its setting (prune 2 late scales, skip the last 2), "
                        "'prune' = prune the last 4 scales, skip none; off = exact (default)")
    g.add_argument("--prune-ratio", type=float, default=0.5, help="fraction of tokens the pruned scales drop "
                   "(FastVAR: 0.5; the first pruned scale drops 0.8 x this)")
    g.add_argument("--tile", type=int, default=0, help="tiled decode, tile size in latent cells (0 = off)")
    g.add_argument("--device", default="auto")
    g.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    g.add_argument("--out", default="infinity.png")
    g.set_defaults(func=cmd_generate)
    c = sub.add_parser("convert", help="write a .safetensors copy of a .pth checkpoint (same keys)", parents=[common])
    c.add_argument("src")
    c.add_argument("dst", nargs="?")
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
    try:
        return args.func(args)
    except InfinityError as err:
        sys.stderr.write(f"error: {err}\n")
        return 1
