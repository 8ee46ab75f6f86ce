"""Reader for the reference fixtures (golden outputs of FoundationVision/Infinity), used by
test_reference_parity.py. Format: shared/fixtures/infinity_ref/README.md.

A case is `<stem>.json` (settings, model files, `kind`) plus `<stem>.safetensors` (tensors). Paths in
the JSON are `<public>/...` (the public fixture folder) or `<name>/...` (the folder holding the case).
Everything here is defensive about names the public set does not show (B > 1 text layouts, negative
prompts, patchify models); unknown tensors are left alone.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import torch
from safetensors.torch import load_file

from infinity_core.model.conditioning import TextEmbedding
from infinity_core.files.loading import load_tokenizer, load_transformer, tokenizer_state_dict, transformer_state_dict
from infinity_core.model.quantizer import (bits_to_codes, next_scale_input, quantize_multiscale, upsample_codes,
                                     vae_bits_to_tokens)
from infinity_core.sampling.sampler import SamplerSettings
from infinity_core.schedules import ScaleSchedule, schedule_from_grids

from shared_paths import PUBLIC_FIXTURES as PUBLIC
FORMATS = ("pth", "safetensors")   # the first one present runs the full case, the other the cheap checks
FP32 = "fp32_cross_attn"           # name part of the all-float32 reference variant
KIND_ALIASES = {"vae": "vae", "transformer_teacher_forcing": "teacher_forcing", "generation": "generation"}
SCALE_KEY = re.compile(r"^(?:(?P<variant>.+)\.)?scale(?P<si>\d+)\.(?P<what>[A-Za-z0-9_]+)$")


def fixtures_dir() -> Path:
    return Path(os.environ.get("INFINITY_REF_FIXTURES") or PUBLIC).resolve()


def case_paths(folder: Path) -> list[Path]:
    """Every JSON with a "kind" key (cases); manifests and model configs have none."""
    found = []
    for path in sorted(folder.rglob("*.json")):
        try:
            meta = json.loads(path.read_text())
        except (ValueError, OSError):
            continue
        if isinstance(meta, dict) and "kind" in meta:
            found.append(path)
    return found


def case_kind(kind: str) -> str | None:
    k = str(kind).lower()
    if k in KIND_ALIASES:
        return KIND_ALIASES[k]
    if "teacher" in k or k.startswith("tf"):
        return "teacher_forcing"
    if "gen" in k or "sampl" in k:
        return "generation"
    return "vae" if "vae" in k or "tokenizer" in k else None


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@lru_cache(maxsize=8)
def transformer(path: str):
    return load_transformer(path)


@lru_cache(maxsize=8)
def tokenizer(path: str):
    return load_tokenizer(path)


@lru_cache(maxsize=16)
def raw_state_dict(path: str, what: str):
    """(config, remapped state dict) of a model file, as infinity_core reads it."""
    return (transformer_state_dict if what == "model" else tokenizer_state_dict)(path)


@dataclass
class ModelFiles:
    files: dict[str, Path]                 # format -> path
    sha: dict[str, str | None]
    config: dict = field(default_factory=dict)


@dataclass
class Case:
    path: Path
    meta: dict

    @cached_property
    def tensors(self) -> dict[str, torch.Tensor]:
        file = self.path.with_suffix(".safetensors")
        return load_file(str(file)) if file.is_file() else {}

    # ---- files -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def kind(self) -> str | None:
        return case_kind(self.meta["kind"])

    def resolve(self, ref: str) -> Path:
        """`<public>/x` -> public folder; `<other>/x` -> this case's folder (or the fixture root)."""
        m = re.match(r"^<([^>]+)>[/\\](.*)$", str(ref))
        if not m:
            p = Path(ref)
            return p if p.is_absolute() else self.path.parent / p
        bases = [PUBLIC, self.path.parent, fixtures_dir()] if m.group(1) == "public" else \
                [self.path.parent, fixtures_dir(), self.path.parent.parent / m.group(1), PUBLIC]
        candidates = [b / m.group(2) for b in bases]
        return next((c for c in candidates if c.exists()), candidates[0])

    def _model(self, key: str, config_key: str) -> ModelFiles | None:
        entry = self.meta.get(key)
        if not isinstance(entry, dict):
            return None
        files, sha = {}, {}
        for fmt in FORMATS:
            item = entry.get(fmt)
            ref = item.get("path") if isinstance(item, dict) else item
            if ref:
                files[fmt] = self.resolve(ref)
                sha[fmt] = item.get("sha256") if isinstance(item, dict) else None
        cfg_ref = self.meta.get(config_key) or entry.get("config")
        cfg_path = self.resolve(cfg_ref) if cfg_ref else None
        config = json.loads(cfg_path.read_text()) if cfg_path and cfg_path.is_file() else {}
        return ModelFiles(files, sha, config)

    @cached_property
    def model(self) -> ModelFiles | None:
        return self._model("model", "infinity_config") if self.kind != "vae" else None

    @cached_property
    def vae(self) -> ModelFiles | None:
        return self._model("vae", "vae_config")

    def needed(self) -> list[tuple[str, ModelFiles]]:
        """Model files whose network the case exercises (teacher forcing needs no VAE network)."""
        out = [("model", self.model)] if self.kind in ("teacher_forcing", "generation") else []
        if self.kind in ("vae", "generation"):
            out.append(("vae", self.vae))
        return out

    def formats(self) -> list[str]:
        """Formats in which every needed model file exists."""
        needed = self.needed()
        if any(files is None for _, files in needed):
            return []
        return [fmt for fmt in FORMATS if all(fmt in m.files and m.files[fmt].is_file() for _, m in needed)]

    # ---- models and layout ---------------------------------------------------------------------
    def load(self, what: str, fmt: str):
        files = self.model if what == "model" else self.vae
        return (transformer if what == "model" else tokenizer)(str(files.files[fmt]))

    @cached_property
    def patchify(self) -> bool:
        """From the model JSON (`apply_spatial_patchify`), else the VAE JSON, else the files' shapes."""
        for files, key in ((self.model, "load_infinity_arguments"), (self.vae, "load_visual_tokenizer_arguments")):
            args = (files.config.get(key) if files else None) or {}
            if "apply_spatial_patchify" in args:
                return bool(int(args["apply_spatial_patchify"]))
        patch = (self.vae.config.get("args") or {}).get("patch_size") if self.vae else None
        if patch:
            return int(patch) == 8
        existing = [p for p in (self.model.files.values() if self.model else ()) if p.is_file()]
        raw = self.tensors.get("vae_raw_features")
        if existing and raw is not None:  # d_in = 4 d with patchify
            return raw_state_dict(str(existing[0]), "model")[0].bits_per_token == 4 * raw.shape[1]
        return False

    @cached_property
    def schedule(self) -> ScaleSchedule:
        return schedule_from_grids(self.meta["scale_schedule"])

    @property
    def vae_grids(self) -> list[tuple[int, int]]:
        return list(self.schedule.vae_grids(self.patchify))

    def vae_only_grids(self) -> list[tuple[int, int]]:
        """VAE-case grids from the JSON: `vae_scale_schedule`, else `scale_schedule` (doubled when it is
        the transformer schedule of a stride-8 VAE, judged by the picture size)."""
        listed = self.meta.get("vae_scale_schedule") or self.meta["scale_schedule"]
        grids = [(int(g[-2]), int(g[-1])) for g in listed]
        patch = (self.vae.config.get("args") or {}).get("patch_size", 16) if self.vae else 16
        hw = self.meta.get("image_hw")
        if hw and (grids[-1][0] * patch, grids[-1][1] * patch) != tuple(hw) and grids[-1][0] * 2 * patch == hw[0]:
            grids = [(2 * h, 2 * w) for h, w in grids]
        return grids

    def tensor(self, name: str) -> torch.Tensor | None:
        return self.tensors.get(name)

    def scale_tensors(self, prefix: str) -> dict[int, torch.Tensor]:
        """`{prefix}.scaleNN` tensors by scale index."""
        pattern = re.compile(re.escape(prefix) + r"\.scale(\d+)$")
        return {int(m.group(1)): t for name, t in self.tensors.items() if (m := pattern.match(name))}

    @property
    def batch(self) -> int:
        s = self.meta.get("sampling") or {}
        for v in (s.get("B"), self.meta.get("B")):
            if v:
                return int(v)
        for name, t in self.tensors.items():
            if SCALE_KEY.match(name) or name in ("gt_bits", "x_BLC_wo_prefix", "vae_raw_features"):
                return t.shape[0]
        return 1

    # ---- text --------------------------------------------------------------------------------
    def text(self, negative: bool = False) -> TextEmbedding | None:
        if negative:
            prefixes, spec = ("text.negative", "text.negative_prompt", "text.negatives"), \
                (self.meta.get("sampling") or {}).get("negative_prompt")
        else:
            prefixes, spec = ("text.prompt", "text.prompts", "text"), \
                (self.meta.get("sampling") or {}).get("prompt") or self.meta.get("text")
        for prefix in prefixes:
            emb = text_from_tensors(self.tensors, prefix)
            if emb is not None:
                return emb
        return text_from_seeds(spec, self.text_channels) if spec else None

    @property
    def text_channels(self) -> int:
        args = (self.model.config.get("load_infinity_arguments") or {}) if self.model else {}
        return int(args.get("text_channels") or (self.meta.get("text") or {}).get("Ct5") or 2048)

    # ---- sampling ----------------------------------------------------------------------------
    @property
    def sampling(self) -> dict:
        return self.meta.get("sampling") or {}

    def settings(self) -> SamplerSettings:
        s, n = self.sampling, self.schedule.num_scales
        cfg = s.get("cfg_list", s.get("cfg", 1.0))
        tau = s.get("tau_list", s.get("tau", 1.0))
        layers = s.get("cfg_insertion_layer", [0])
        layers = [int(layers)] if isinstance(layers, (int, float)) else [int(x) for x in layers]
        cfg = [float(cfg)] * n if isinstance(cfg, (int, float)) else [float(c) for c in cfg]
        tau = [float(tau)] * n if isinstance(tau, (int, float)) else [float(t) for t in tau]
        return SamplerSettings(cfg=cfg, tau=tau, top_k=int(s.get("top_k") or 0), top_p=float(s.get("top_p") or 0.0),
                               cfg_insertion_layer=tuple(layers))

    @staticmethod
    def settings_unguided() -> SamplerSettings:
        return SamplerSettings(cfg=1.0, tau=1.0, top_k=0, top_p=0.0)

    @property
    def g_seed(self) -> int | None:
        seed = self.sampling.get("g_seed", self.meta.get("g_seed"))
        return None if seed is None else int(seed)

    def variants(self) -> dict[str, dict[str, dict[int, torch.Tensor]]]:
        """Generation outputs per reference variant: {'': plain, 'fp32_cross_attn': ...} -> what -> scale."""
        out: dict[str, dict[str, dict[int, torch.Tensor]]] = {}
        for name, t in self.tensors.items():
            m = SCALE_KEY.match(name)
            if m and not name.startswith("text"):
                out.setdefault(m.group("variant") or "", {}).setdefault(m.group("what"), {})[int(m.group("si"))] = t
        return out

    def variant_tensor(self, variant: str, name: str) -> torch.Tensor | None:
        return self.tensors.get(f"{variant}.{name}" if variant else name)


def _lens(tensors, prefix: str, fallback_prefixes=()) -> list[int] | None:
    for p in (prefix, *fallback_prefixes):
        if f"{p}.lens" in tensors:
            return [int(n) for n in tensors[f"{p}.lens"].flatten()]
        if f"{p}.mask" in tensors:
            return [int(n) for n in tensors[f"{p}.mask"].bool().sum(-1).flatten()]
        if f"{p}.cu_seqlens_k" in tensors:
            return [int(n) for n in tensors[f"{p}.cu_seqlens_k"].long().diff()]
    return None


def _unpadded_lens(padded_BLC: torch.Tensor) -> list[int]:
    """Lengths of right-zero-padded rows (stand-in embeddings are randn: no real row is all zeros)."""
    nonzero = padded_BLC.abs().sum(-1) != 0
    return [int(row.nonzero().max()) + 1 if row.any() else padded_BLC.shape[1] for row in nonzero]


def text_from_tensors(tensors: dict[str, torch.Tensor], prefix: str) -> TextEmbedding | None:
    """A packed / padded / single / per-image text layout stored under `prefix`."""
    fallback = ("text",) if prefix.startswith("text.prompt") else ()
    t = tensors.get(prefix)
    if t is not None and t.is_floating_point():
        if t.ndim == 2:
            return TextEmbedding.from_single(t.float())
        if t.ndim == 3:
            return TextEmbedding.from_padded(t.float(), _lens(tensors, prefix, fallback) or _unpadded_lens(t))
    for packed in ("kv_compact", "packed"):
        if f"{prefix}.{packed}" in tensors:
            feats = tensors[f"{prefix}.{packed}"].float()
            return TextEmbedding(feats, tuple(_lens(tensors, prefix) or [feats.shape[0]]))
    if f"{prefix}.padded" in tensors:
        t = tensors[f"{prefix}.padded"].float()
        return TextEmbedding.from_padded(t, _lens(tensors, prefix) or _unpadded_lens(t))
    per_image = sorted((int(m.group(1)), v) for k, v in tensors.items()
                       if (m := re.match(re.escape(prefix) + r"[._]?(?:b|image)?(\d+)$", k)) and v.ndim == 2)
    if per_image:
        return TextEmbedding.cat([TextEmbedding.from_single(v.float()) for _, v in per_image])
    return None


def text_from_seeds(spec, channels: int) -> TextEmbedding | None:
    """The README's stand-in embeddings: randn(len, Ct5) from manual_seed(seed), for each prompt."""
    items = spec if isinstance(spec, list) else [spec]
    parts = []
    for item in items:
        if not isinstance(item, dict):
            return None
        seeds = item.get("seeds", [item.get("seed")])
        lens = item.get("lens", item.get("lengths", [item.get("length")]))
        for seed, n in zip(seeds, lens):
            if seed is None or n is None:
                return None
            parts.append(torch.randn(int(n), channels, generator=torch.Generator().manual_seed(int(seed))))
    return TextEmbedding.cat([TextEmbedding.from_single(p) for p in parts]) if parts else None


@lru_cache(maxsize=None)
def load_case(path: Path) -> Case:
    return Case(path, json.loads(path.read_text()))


def teacher_inputs(raw_BdHW: torch.Tensor, vae_grids, patchify: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_BLC_wo_prefix, gt_bits) from encoder features, as the reference's flip_requant builds them:
    the running sum of upsampled codes, resampled (trilinear) to each next grid, pixel_unshuffled
    with patchify; bits in transformer layout, all scales concatenated."""
    _, bits = quantize_multiscale(raw_BdHW, list(vae_grids))
    final, cum, xs = tuple(vae_grids[-1]), 0, []
    for si, b in enumerate(bits):
        cum = cum + upsample_codes(bits_to_codes(b), final)
        if si + 1 < len(bits):
            xs.append(next_scale_input(cum, tuple(vae_grids[si + 1]), patchify))
    return torch.cat(xs, 1), torch.cat([vae_bits_to_tokens(b, patchify) for b in bits], 1)


class Checker:
    """Collects comparisons; `finish()` fails with every mismatch (case, tensor, scale, size)."""

    def __init__(self, label: str):
        self.label, self.failures, self.count, self.stats = label, [], 0, {}

    def fail(self, msg: str):
        self.failures.append(msg)

    def _shape(self, what, got, ref) -> torch.Tensor | None:
        if got.shape != ref.shape:
            if got.numel() != ref.numel():
                self.fail(f"{what}: shape {tuple(got.shape)} != reference {tuple(ref.shape)}")
                return None
            got = got.reshape(ref.shape)
        return got

    def close(self, what: str, got, ref, *, atol: float | None = None, rel: float | None = None):
        self.count += 1
        ref = ref.float()
        got = self._shape(what, got.detach().float().cpu(), ref)
        if got is None:
            return
        diff = (got - ref).abs()
        worst, scale = diff.max().item() if diff.numel() else 0.0, ref.abs().max().item() if ref.numel() else 0.0
        tol = atol if atol is not None else rel * max(scale, 1e-12)
        self.stats[what] = worst if atol is not None else worst / max(scale, 1e-12)
        if not worst <= tol:  # also catches NaN
            at = tuple(int(i) for i in torch.unravel_index(diff.nan_to_num(float("inf")).argmax(), diff.shape))
            self.fail(f"{what}: max|diff| {worst:.3g} > tol {tol:.3g} (max|ref| {scale:.3g}, worst at {at})")

    def true(self, ok: bool, msg: str):
        """A fact about the files or the JSON (not a tensor comparison: not counted)."""
        if not ok:
            self.fail(msg)

    def equal(self, what: str, got, ref):
        """Exact equality (as int64); returns the mask of differing entries (None on a shape mismatch)."""
        self.count += 1
        ref = ref.to(torch.int64)
        got = self._shape(what, got.detach().cpu().to(torch.int64), ref)
        if got is None:
            return None
        wrong = (got != ref)
        self.stats[what] = int(wrong.sum())
        if wrong.any():
            first = tuple(int(i) for i in wrong.nonzero()[0])
            self.fail(f"{what}: {int(wrong.sum())} of {ref.numel()} values differ (first at {first})")
        return wrong

    def finish(self):
        assert self.count > 0, f"{self.label}: the case yields no tensor this test can compare"
        assert not self.failures, f"{self.label}: {len(self.failures)} mismatch(es)\n  " + "\n  ".join(self.failures)
