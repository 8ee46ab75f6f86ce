"""The T5 text encoder Infinity conditions on: prompts in, packed `TextEmbedding` out.

Mirrors the reference's `run_infinity.py: load_tokenizer` / `encode_prompt` (spec §6.1): flan-t5-xl
tokenizer, 512 tokens padded to max_length with truncation (EOS kept), Hugging Face
`T5EncoderModel` on the whole padded batch with the attention mask, `last_hidden_state` cast to
fp32, each prompt's first `mask.sum()` rows packed. Loads an HF folder; a single file is read by
`files.t5_file`, which infers its config from tensor shapes. Pure PyTorch + transformers; never touches the
network.
"""
from __future__ import annotations

import json
import logging
import re
from contextlib import contextmanager
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer, PreTrainedTokenizerFast, T5EncoderModel

from .conditioning import MAX_LENGTH, TextEmbedding
from ..errors import CheckpointError, PromptError

logger = logging.getLogger(__name__)

# transformers renamed from_pretrained's torch_dtype to dtype in 4.56; ComfyUI installs may be older
_VERSION = tuple(int(p) for p in re.findall(r"\d+", transformers.__version__)[:2])
_DTYPE_KW = "dtype" if _VERSION >= (4, 56) else "torch_dtype"
_CORRUPT_HINT = "the file is incomplete or corrupt; re-download it"


@contextmanager
def _quiet(logger_name: str):
    """Silence one library logger's warnings for a call whose warning does not apply."""
    target = logging.getLogger(logger_name)
    level = target.level
    target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        target.setLevel(level)


def load_t5_tokenizer(tokenizer_dir: str | Path):
    """The T5 tokenizer of a folder, reproducing the reference's `T5TokenizerFast`.

    transformers 4.x loaded `tokenizer.json` verbatim; 5.x's `AutoTokenizer` rebuilds the T5
    pipeline from the vocabulary (ignoring the file's normalizer/pre-tokenizer and `legacy`), which
    tokenizes text glued to special-token strings differently ("<pad>dog"). So a `tokenizer.json`
    is loaded as is; a folder with only `spiece.model` goes through `AutoTokenizer(legacy=True)`.
    """
    folder = Path(tokenizer_dir)
    if (folder / "tokenizer.json").is_file():
        with _quiet("transformers.tokenization_utils_base"):  # "tokenizer class ... is 'T5Tokenizer'": on purpose
            tok = PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    elif (folder / "spiece.model").is_file():
        tok = AutoTokenizer.from_pretrained(str(folder), legacy=True, local_files_only=True)
    else:
        raise CheckpointError("no T5 tokenizer files (tokenizer.json or spiece.model) found", path=str(folder),
                              hint="put the flan-t5 tokenizer files (tokenizer.json, tokenizer_config.json, "
                                   "special_tokens_map.json) beside the encoder, or name their folder "
                                   "(command line: --tokenizer)")
    if tok.pad_token_id is None or tok.eos_token_id is None:
        raise CheckpointError("the tokenizer defines no <pad> or </s> token", path=str(folder),
                              hint="use the flan-t5 tokenizer files")
    return tok


class T5TextEncoder:
    """A T5 encoder (`.model`, an HF `T5EncoderModel` in eval mode) and its tokenizer."""

    def __init__(self, model: T5EncoderModel, tokenizer, max_length: int = MAX_LENGTH):
        self.model, self.tokenizer, self.max_length = model.eval(), tokenizer, max_length

    @classmethod
    def from_folder(cls, path: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                    tokenizer_dir: str | Path | None = None) -> "T5TextEncoder":
        """An HF folder (config.json + model.safetensors, shards, or pytorch_model.bin read weights-only)."""
        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise CheckpointError("not a Hugging Face model folder (no config.json)", path=str(folder),
                                  hint="point to the folder holding config.json, or load a single file")
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
        if model_type != "t5":
            raise CheckpointError(f"config.json describes a '{model_type}' model, not T5", path=str(folder),
                                  hint="use the flan-t5-xl folder")
        tokenizer = load_t5_tokenizer(tokenizer_dir or folder)
        from safetensors import SafetensorError
        try:  # HF keeps the FF output projections `wo` in fp32 when dtype is fp16 (_keep_in_fp32_modules)
            model, info = T5EncoderModel.from_pretrained(str(folder), **{_DTYPE_KW: dtype}, local_files_only=True,
                                                         weights_only=True, output_loading_info=True)
        except SafetensorError as err:
            raise CheckpointError(f"cannot read the T5 weights: {err}", path=str(folder), hint=_CORRUPT_HINT) from err
        except (OSError, ValueError) as err:
            raise CheckpointError(f"cannot load the T5 encoder: {err}", path=str(folder),
                                  hint="the folder needs model.safetensors (or shards + index, or "
                                       "pytorch_model.bin)") from err
        missing = sorted(set(info["missing_keys"]) - {"encoder.embed_tokens.weight"})
        if missing or info["mismatched_keys"]:
            raise CheckpointError(f"T5 weights do not fit config.json: missing {missing[:5]}, "
                                  f"mismatched {sorted(info['mismatched_keys'])[:5]}", path=str(folder),
                                  hint="config.json and the weights come from different models; re-download")
        logger.info("loaded T5 encoder %s (%d layers, d_model %d) as %s", folder, model.config.num_layers,
                    model.config.d_model, dtype)
        return cls(model.to(device), tokenizer)

    @property
    def hidden_size(self) -> int:
        return self.model.config.d_model

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.shared.weight.dtype

    def to(self, device: str | torch.device) -> "T5TextEncoder":
        """Moves the weights (device only: dtypes, including the fp32 `wo`, are kept)."""
        self.model.to(device)
        return self

    def token_count(self, prompt: str) -> int:
        """T5 tokens of a prompt before truncation (EOS included)."""
        return len(self.tokenizer(prompt, verbose=False).input_ids)

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """`input_ids` and `attention_mask`, both int64 `[B, 512]`; longer prompts are truncated (EOS kept)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise PromptError("no prompt to encode", hint="give at least one prompt (it may be empty)")
        enc = self.tokenizer(list(prompts), max_length=self.max_length, padding="max_length", truncation=True,
                             return_tensors="pt")
        for b in (enc.attention_mask.sum(1) == self.max_length).nonzero().flatten().tolist():
            full = self.token_count(prompts[b])
            if full > self.max_length:
                logger.warning("prompt %d has %d tokens; truncated to %d (%d tokens dropped): %.60r...",
                               b, full, self.max_length, full - self.max_length, prompts[b])
        return enc.input_ids, enc.attention_mask

    @torch.no_grad()
    def encode(self, prompts: list[str], output_device: str | torch.device | None = "cpu") -> TextEmbedding:
        """Packed fp32 features of each prompt's real tokens (EOS included); `output_device=None` keeps them
        on the model's device."""
        ids_BL, mask_BL = self.tokenize(prompts)
        out = self.model(input_ids=ids_BL.to(self.device), attention_mask=mask_BL.to(self.device))
        hidden_BLC = out.last_hidden_state
        features = TextEmbedding.from_padded(hidden_BLC.float(), mask_BL.sum(1).tolist())
        return features if output_device is None else features.to(output_device)
