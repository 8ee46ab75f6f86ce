"""Build ready-to-run modules from checkpoint files (config inferred, keys remapped, strict load)."""
from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..model import ops as default_ops
from .checkpoints import (cast_floats, check_finite, check_keys, read_file, remap_transformer_keys, remap_vae_keys,
                          require_kind, unwrap_state_dict)
from ..model.config import (InfinityConfig, VAEConfig, infinity_config_from_state_dict, preset_name,
                            vae_config_from_state_dict)
from ..devices import is_fp8
from ..errors import CheckpointError, IncompatibleModelsError
from ..model.transformer import InfinityTransformer
from ..model.vae import BitwiseTokenizer

log = logging.getLogger(__name__)


def _state_dict(path, kind: str) -> dict[str, torch.Tensor]:
    sd = unwrap_state_dict(read_file(path), str(path))
    require_kind(sd, kind, str(path))
    return sd


@contextmanager
def _file_problem(path, what: str):
    """Whatever goes wrong while turning a file's tensors into a config and a module is the file's doing
    (a hostile or damaged file can hold any shapes): a CheckpointError naming the file, not a traceback."""
    try:
        yield
    except CheckpointError as err:
        raise CheckpointError(err.message, path=err.path or str(path), hint=err.hint) from None
    except KeyError as err:
        raise CheckpointError(f"{what} is missing tensor {str(err)[:200]}", path=str(path),
                              hint="the file is incomplete; download it again") from None
    except torch.cuda.OutOfMemoryError:  # (torch.OutOfMemoryError since torch 2.5) not the file's fault
        raise
    except (IndexError, ValueError, TypeError, RuntimeError, ZeroDivisionError) as err:
        detail = (str(err).splitlines() or [""])[0][:200]
        raise CheckpointError(f"{what}: the file's tensors do not form a valid model ({type(err).__name__}: "
                              f"{detail})", path=str(path),
                              hint="the file is damaged or not a released Infinity checkpoint; download it "
                                   "again") from None


def transformer_config(sd: dict[str, torch.Tensor], path) -> tuple[InfinityConfig, dict[str, torch.Tensor]]:
    """A file's transformer state dict remapped to our names, and the config read off it."""
    with _file_problem(path, "Infinity transformer"):
        sd = remap_transformer_keys(sd)
        return infinity_config_from_state_dict(sd), sd


def tokenizer_config(sd: dict[str, torch.Tensor], path) -> tuple[VAEConfig, dict[str, torch.Tensor]]:
    with _file_problem(path, "bitwise tokenizer"):
        sd = remap_vae_keys(sd)
        return vae_config_from_state_dict(sd), sd


def transformer_state_dict(path) -> tuple[InfinityConfig, dict[str, torch.Tensor]]:
    """The remapped state dict of a transformer file and the config read off it."""
    return transformer_config(_state_dict(path, "infinity_transformer"), path)


def tokenizer_state_dict(path) -> tuple[VAEConfig, dict[str, torch.Tensor]]:
    return tokenizer_config(_state_dict(path, "bitwise_tokenizer"), path)


def _adopt(make_model, sd, path: str, what: str, dtype, device, verify_finite: bool, ops):
    """Strict load into a meta-device model: adopt the file's tensors (no copy, no random init).

    Keys and shapes are checked against the architecture built from plain layers, never against the model
    being loaded: a ComfyUI op under dynamic VRAM holds no weight until its state dict is loaded through it.
    The load goes through the ops' own `_load_from_state_dict`, so their machinery sees every weight."""
    with _file_problem(path, what):
        plain = make_model(default_ops)
        check_keys(plain, sd, path, what)
        sd = cast_floats(sd, dtype)
        if verify_finite:
            check_finite(sd, path)
        model = plain if ops is default_ops else make_model(ops)  # built once when there are no other ops
        model.load_state_dict(sd, strict=True, assign=True)
    _check_loaded(model, sd, path, what)
    return model.to(device).eval().requires_grad_(False)


def _check_loaded(model: torch.nn.Module, sd: dict[str, torch.Tensor], path: str, what: str) -> None:
    """Every tensor of the file is in the loaded model and none is left unmaterialised: an op that kept a
    weight to itself would otherwise fail later, in the middle of a generation."""
    held = model.state_dict()
    lost = sorted(set(sd) - set(held)) + sorted(k for k, t in held.items() if t is None or t.is_meta)
    if lost:
        raise IncompatibleModelsError(f"{what}: the layers did not take {len(lost)} of the file's tensors (e.g. "
                                      f"{lost[:3]})", path=path,
                                      hint="this ComfyUI builds layers in a way this version of the pack does not "
                                           "know; update ComfyUI-Infinity, or start ComfyUI with "
                                           "--disable-dynamic-vram")


def build_transformer(config: InfinityConfig, sd, *, path: str = "<state dict>", dtype=None, device="cpu",
                      ops=default_ops, verify_finite: bool = True) -> InfinityTransformer:
    return _adopt(lambda o: InfinityTransformer(config, ops=o, device="meta"), sd, path, "transformer", dtype,
                  device, verify_finite, ops)


def build_tokenizer(config: VAEConfig, sd, *, path: str = "<state dict>", dtype=None, device="cpu",
                    ops=default_ops, verify_finite: bool = True) -> BitwiseTokenizer:
    return _adopt(lambda o: BitwiseTokenizer(config, ops=o, device="meta"), sd, path, "bitwise tokenizer", dtype,
                  device, verify_finite, ops)


# the blocks' attention and FFN matrices: 97% of Infinity-2B's parameters
_FP8_MATRIX = re.compile(r"blocks\.\d+\.(sa|ca|ffn)\.[a-z_0-9]+\.weight")


def storage_cast(sd: dict[str, torch.Tensor], storage: torch.dtype, compute: torch.dtype) -> dict[str, torch.Tensor]:
    """Float tensors in the storage dtype. 8-bit storage (every fp8 flavour) is for the blocks' attention
    and FFN matrices only: the AdaLN modulation (shared_ada_lin, ada_gss, head_nm), the head, the
    embeddings, text projections, norms and biases keep the compute dtype; they are small, and every
    token passes through them (quantising them is a quality risk for 3% of the memory)."""
    if not is_fp8(storage):
        return cast_floats(sd, storage)
    return {k: v.to(storage if _FP8_MATRIX.fullmatch(k) else compute) if v.is_floating_point() else v
            for k, v in sd.items()}


def load_transformer(path, *, dtype=None, device="cpu", ops=default_ops) -> InfinityTransformer:
    config, sd = transformer_state_dict(path)
    log.info("Infinity transformer %s: %s (%s)", path, preset_name(config) or "custom size", config)
    return build_transformer(config, sd, path=str(path), dtype=dtype, device=device, ops=ops)


def load_tokenizer(path, *, dtype=None, device="cpu", ops=default_ops) -> BitwiseTokenizer:
    config, sd = tokenizer_state_dict(path)
    log.info("bitwise tokenizer %s: %s (%s)", path, preset_name(config) or "custom size", config)
    return build_tokenizer(config, sd, path=str(path), dtype=dtype, device=device, ops=ops)


@dataclass(frozen=True)
class Pairing:
    """How a transformer's tokens map onto a tokenizer's latent cells."""

    patchify: bool
    codebook_dim: int


def pair(transformer: InfinityConfig, tokenizer: VAEConfig, *, transformer_name: str = "the transformer",
         tokenizer_name: str = "the bitwise tokenizer") -> Pairing:
    """Check that the tokenizer's bit width matches the transformer's; return the token layout."""
    d_t, d, stride = transformer.bits_per_token, tokenizer.codebook_dim, tokenizer.patch_size
    if stride in (8, 16) and d * (4 if tokenizer.patchify else 1) == d_t:
        return Pairing(tokenizer.patchify, d)
    raise IncompatibleModelsError(
        f"{tokenizer_name} has {d} bits per latent cell (stride {stride}) but {transformer_name} predicts "
        f"{d_t} bits per token",
        hint="Infinity-2B needs infinity_vae_d32reg.pth; Infinity-8B needs infinity_vae_d56_f8_14_patchify.pth")
