"""flan-t5-xl as one encoder-only file, built from byte ranges of the released checkpoint.

A safetensors file starts with an 8-byte length and a JSON header giving every tensor's dtype, shape and
byte range, so the encoder's tensors can be fetched alone (about 4.9 GB of the 11.4 GB fp32 checkpoint;
the decoder and lm_head are never downloaded). They are written as fp16, except the feed-forward output
projections `wo`, which stay fp32: that is what `T5EncoderModel.from_pretrained(dtype=float16)` keeps
(`_keep_in_fp32_modules`), what the reference runs, and what `files.t5_file.load_single_file` keeps when
it loads this file in fp16. Names are Hugging Face's `shared.weight` + `encoder.*`.

Pure functions over headers and files; the network side (which bytes to fetch) is in downloads.py.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DownloadError
from ..files.checkpoints import safetensors_header_length

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
_NAMES = {v: k for k, v in _DTYPES.items()}
_KEEP_FP32 = ".wo.weight"


@dataclass(frozen=True)
class Tensor:
    """One tensor of a source shard: absolute byte range [start, end) in that file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class Run:
    """A contiguous byte range of one shard holding one or more wanted tensors."""

    shard: str
    start: int
    end: int
    tensors: tuple[Tensor, ...]

    @property
    def length(self) -> int:
        return self.end - self.start


def header_length(first8: bytes, source: str) -> int:
    if len(first8) != 8:
        raise DownloadError(f"{source}: not a safetensors file (shorter than 8 bytes)", hint="re-run the download")
    n = safetensors_header_length(first8)
    if n is None:
        raise DownloadError(f"{source}: implausible safetensors header length {int.from_bytes(first8, 'little')}",
                            hint="the hub served something else than a safetensors file; re-run the download")
    return n


def parse_header(raw: bytes, source: str, file_size: int | None = None) -> list[Tensor]:
    """Every tensor of a safetensors header, with absolute byte ranges, checked for consistency."""
    try:
        header = json.loads(raw)
    except ValueError as err:
        raise DownloadError(f"{source}: unreadable safetensors header ({err})", hint="re-run the download") from None
    base = 8 + len(raw)
    tensors = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            a, b = info["data_offsets"]
            shape, dtype = tuple(int(s) for s in info["shape"]), str(info["dtype"])
        except (KeyError, TypeError, ValueError):
            raise DownloadError(f"{source}: malformed entry for tensor {name!r}", hint="re-run the download") from None
        size = _DTYPES[dtype].itemsize if dtype in _DTYPES else None
        if size is None or not 0 <= a <= b or (b - a) != math.prod(shape) * size or \
                (file_size is not None and base + b > file_size):
            raise DownloadError(f"{source}: tensor {name!r} ({dtype} {list(shape)}) has an inconsistent byte range",
                                hint="the file on the hub is not the expected checkpoint")
        tensors.append(Tensor(name, dtype, shape, base + a, base + b))
    return tensors


def encoder_tensors(tensors: list[Tensor]) -> dict[str, Tensor]:
    """Output name -> source tensor: `encoder.*` and the shared embedding (under either of its tied names)."""
    out = {t.name: t for t in tensors if t.name.startswith("encoder.") and t.name != "encoder.embed_tokens.weight"}
    by_name = {t.name: t for t in tensors}
    shared = by_name.get("shared.weight") or by_name.get("encoder.embed_tokens.weight")
    if shared is not None:
        out["shared.weight"] = shared
    return out


def runs(shard: str, tensors: list[Tensor]) -> list[Run]:
    """Wanted tensors of one shard grouped into contiguous byte ranges (one request each)."""
    found: list[Run] = []
    for t in sorted(tensors, key=lambda t: t.start):
        if found and found[-1].end == t.start:
            last = found[-1]
            found[-1] = Run(shard, last.start, t.end, last.tensors + (t,))
        else:
            found.append(Run(shard, t.start, t.end, (t,)))
    return found


def out_nbytes(name: str, t: Tensor) -> int:
    """Bytes of a selected tensor in the written file (in its target dtype)."""
    return math.prod(t.shape) * target_dtype(name).itemsize


def target_dtype(name: str) -> torch.dtype:
    return torch.float32 if name.endswith(_KEEP_FP32) else torch.float16


def check_complete(selected: dict[str, Tensor], source: str) -> None:
    """The selection is a whole T5 encoder (the loader's own config inference must succeed on it)."""
    from ..files.t5_file import infer_t5_config
    meta = {name: torch.empty(t.shape, device="meta") for name, t in selected.items()}
    try:
        infer_t5_config(meta)
    except Exception as err:  # CheckpointError with the missing tensor
        raise DownloadError(f"{source}: the checkpoint does not hold a complete T5 encoder ({err})",
                            hint="the repository's files changed; report this, or download the full folder by hand")


def write_encoder_file(out_path: Path, selected: dict[str, Tensor], run_files: dict[Run, Path],
                       metadata: dict[str, str]) -> None:
    """Stream the selected tensors (converted) from the fetched run files into one safetensors file.
    One tensor is in memory at a time."""
    names = sorted(selected)
    layout, offset = {}, 0
    for name in names:
        t = selected[name]
        nbytes = out_nbytes(name, t)
        layout[name] = {"dtype": _NAMES[target_dtype(name)], "shape": list(t.shape), "data_offsets": [offset,
                                                                                                      offset + nbytes]}
        offset += nbytes
    header = json.dumps({"__metadata__": dict(metadata, format="pt"), **layout}, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    where = {t: run for run in run_files for t in run.tensors}
    with open(out_path, "wb") as out:
        out.write(struct.pack("<Q", len(header)))
        out.write(header)
        for name in names:
            t = selected[name]
            run = where[t]
            with open(run_files[run], "rb") as src:
                src.seek(t.start - run.start)
                raw = bytearray(src.read(t.end - t.start))
            if len(raw) != t.end - t.start:
                raise DownloadError(f"the fetched bytes of {run.shard} end early (tensor {name})",
                                    hint="re-run the download; the partial parts are fetched again")
            value = torch.frombuffer(raw, dtype=_DTYPES[t.dtype]).reshape(t.shape).to(target_dtype(name))
            out.write(value.contiguous().view(torch.uint8).numpy().tobytes())


def verify_encoder_file(path: Path, selected: dict[str, Tensor]) -> None:
    """Re-read the written file: every tensor present with its shape and planned dtype, all values finite."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            if keys != set(selected):
                missing, extra = sorted(set(selected) - keys)[:3], sorted(keys - set(selected))[:3]
                raise DownloadError(f"the written encoder file lacks {missing} / has extra {extra}",
                                    hint="re-run the download")
            for name in sorted(keys):
                value = f.get_tensor(name)
                if tuple(value.shape) != selected[name].shape or value.dtype != target_dtype(name):
                    raise DownloadError(f"tensor {name} was written as {value.dtype} {tuple(value.shape)}",
                                        hint="re-run the download")
                if not bool(torch.isfinite(value).all()):
                    raise DownloadError(f"tensor {name} holds NaN or infinite values: the fetched bytes are damaged",
                                        hint="re-run the download; the damaged parts were removed")
    except DownloadError:
        raise
    except Exception as err:  # safetensors' own errors for a truncated file
        raise DownloadError(f"the written encoder file is unreadable ({err})", hint="re-run the download") from None
