"""The official model files: where each comes from on the Hugging Face Hub and where it goes.

One table for the command line (`python -m infinity_core download ...`, `generate`'s defaults) and the
ComfyUI loaders. `folder` is the ComfyUI model folder (`models/<folder>/`), `name` the path inside it,
which is also what a loader lists.

What is known and what is not (this table was written without access to huggingface.co):
- `revision`: google/flan-t5-xl is pinned to commit 7d6315df2c2fb742f0f5b556879d730926ca9001 (the
  snapshot Infinity's own scripts and many setups cache). FoundationVision/Infinity is "main": no commit
  hash of it that holds every file listed here could be confirmed.
- `size` / `sha256`: None = not known here. A download is then verified against what the hub reports
  for the file (its LFS sha256 in X-Linked-Etag and size in X-Linked-Size, or the git blob id of small
  files) and the commit it came from is logged. A value filled in here is also required of the hub.
- `approx_bytes`: the size on disk estimated from the architecture (parameter count x the bytes per
  parameter in `approx_dtype`), for showing before anything is fetched. It is an estimate; the exact
  size is read from the hub before a download starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

INFINITY_REPO = "FoundationVision/Infinity"
INFINITY_REVISION = "main"
T5_REPO = "google/flan-t5-xl"
T5_REVISION = "7d6315df2c2fb742f0f5b556879d730926ca9001"
T5_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
T5_ENCODER_DIR = "flan-t5-xl-encoder"
T5_ENCODER_NAME = f"{T5_ENCODER_DIR}/flan_t5_xl_encoder_fp16.safetensors"

# google/flan-t5-xl config.json: the encoder's shapes, for the size of the encoder-only file
FLAN_T5_XL = dict(vocab=32128, d_model=2048, d_ff=5120, inner=32 * 64, layers=24, heads=32, buckets=32)


@dataclass(frozen=True)
class ModelFile:
    """One model a loader selects. `recipe`: "file" (one hub file), "sharded" (`path` is the index; the
    shards it names are fetched beside it) or "t5_encoder" (the encoder tensors of the sharded flan-t5-xl
    checkpoint at `path`, written as one file, plus its tokenizer files)."""

    key: str
    name: str
    folder: str
    kind: str            # "transformer" | "tokenizer" | "text_encoder"
    title: str
    repo: str
    revision: str
    path: str
    recipe: str = "file"
    size: int | None = None
    sha256: str | None = None
    approx_dtype: str = "bf16"
    extra_files: tuple[str, ...] = ()
    pairs_with: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def url(self) -> str:
        """The file's page-independent download address on huggingface.co (what an error names)."""
        return f"https://huggingface.co/{self.repo}/resolve/{self.revision}/{self.path}"

    @property
    def approx_bytes(self) -> int:
        return _approx_bytes(self.key)


def _spec(key, name, folder, kind, title, path, **kw) -> ModelFile:
    return ModelFile(key, name, folder, kind, title, INFINITY_REPO, INFINITY_REVISION, path, **kw)


OFFICIAL: dict[str, ModelFile] = {m.key: m for m in (
    _spec("2b", "infinity_2b_reg.pth", "infinity", "transformer", "Infinity-2B transformer", "infinity_2b_reg.pth",
          pairs_with={"tokenizer": "infinity_vae_d32reg.pth"}),
    _spec("vae_d32", "infinity_vae_d32reg.pth", "infinity", "tokenizer", "bitwise tokenizer for Infinity-2B (d32)",
          "infinity_vae_d32reg.pth", approx_dtype="fp32", pairs_with={"preset": "infinity_vae_d32"}),
    _spec("8b", "infinity_8b_weights/model.safetensors.index.json", "infinity", "transformer",
          "Infinity-8B transformer (1024x1024), 4 shards", "infinity_8b_weights/model.safetensors.index.json",
          recipe="sharded", pairs_with={"tokenizer": "infinity_vae_d56_f8_14_patchify.pth"}),
    _spec("8b-512", "infinity_8b_512x512_weights/model.safetensors.index.json", "infinity", "transformer",
          "Infinity-8B transformer (512x512 stage)", "infinity_8b_512x512_weights/model.safetensors.index.json",
          recipe="sharded", pairs_with={"tokenizer": "infinity_vae_d56_f8_14_patchify.pth"}),
    _spec("vae_d56", "infinity_vae_d56_f8_14_patchify.pth", "infinity", "tokenizer",
          "bitwise tokenizer for Infinity-8B (d56, patchify)", "infinity_vae_d56_f8_14_patchify.pth",
          approx_dtype="fp32", pairs_with={"preset": "infinity_vae_d56_f8_14_patchify"}),
    ModelFile("t5", T5_ENCODER_NAME, "text_encoders", "text_encoder",
              "flan-t5-xl text encoder (encoder only, fp16; wo in fp32)", T5_REPO, T5_REVISION,
              "model.safetensors.index.json", recipe="t5_encoder", approx_dtype="fp16", extra_files=T5_TOKENIZER_FILES),
)}

# what `download <target>` fetches: everything a model needs to make a picture
BUNDLES: dict[str, tuple[str, ...]] = {
    "2b": ("2b", "vae_d32", "t5"),
    "8b": ("8b", "vae_d56", "t5"),
    "8b-512": ("8b-512", "vae_d56", "t5"),
    "t5": ("t5",),
    "all": ("2b", "vae_d32", "8b", "8b-512", "vae_d56", "t5"),
}


def bundle(target: str) -> list[ModelFile]:
    return [OFFICIAL[k] for k in BUNDLES[target]]


def by_name(folder: str, name: str) -> ModelFile | None:
    """The official file a loader widget names, if it is one."""
    return next((m for m in OFFICIAL.values() if m.folder == folder and m.name == name), None)


def of_kind(kind: str) -> list[ModelFile]:
    return [m for m in OFFICIAL.values() if m.kind == kind]


# ---- size estimates ------------------------------------------------------------------------------------
_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


def t5_encoder_params(dims: dict = FLAN_T5_XL) -> tuple[int, int]:
    """(parameters kept in 16 bits, parameters of the `wo` layers kept in fp32) of a T5 v1.1 encoder."""
    d, ff, inner = dims["d_model"], dims["d_ff"], dims["inner"]
    per_block = 4 * d * inner + 2 * d + 2 * d * ff  # attention q/k/v/o, two layer norms, gated wi_0/wi_1
    half = dims["vocab"] * d + dims["layers"] * per_block + dims["buckets"] * dims["heads"] + d
    return half, dims["layers"] * ff * d


@lru_cache(maxsize=None)
def _approx_bytes(key: str) -> int:
    from ..model.config import INFINITY_PRESETS, VAE_PRESETS
    spec = OFFICIAL[key]
    if spec.recipe == "t5_encoder":
        half, wo = t5_encoder_params()
        return half * 2 + wo * 4
    if spec.kind == "tokenizer":
        from ..model.vae import BitwiseTokenizer
        preset = VAE_PRESETS[spec.pairs_with["preset"]]
        params = sum(p.numel() for p in BitwiseTokenizer(preset, device="meta").parameters())
    else:
        params = INFINITY_PRESETS["infinity_2b" if key == "2b" else "infinity_8b"].num_params()
    return params * _BYTES[spec.approx_dtype]


def t5_download_bytes(dims: dict = FLAN_T5_XL) -> int:
    """Bytes fetched for the encoder-only file: its fp32 tensors in the released checkpoint."""
    half, wo = t5_encoder_params(dims)
    return (half + wo) * 4


def gb(n: int) -> str:
    """How sizes are shown: GB = 10^9 bytes."""
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"
