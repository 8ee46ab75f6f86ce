"""Loader nodes: Infinity transformer, bitwise tokenizer (VAE) and T5 text encoder.

Each list offers the files of its kind found in the model folders plus the official file names; an
official file that is not there yet is downloaded on run when `download_missing` is on (sizes and
the status show under the list, from the web extension).
"""
from __future__ import annotations

from .node_api import io, ui

from . import comfy_glue as glue
from .types import InfinityModel, InfinityTextEncoder, InfinityVAE
from .widgets import about

DOWNLOAD_TOOLTIP = ("When the selected file is an official Infinity file that is not in the models folder yet: "
                    "download it on run from huggingface.co (verified, resumable, Cancel stops it; the line under "
                    "the list shows its size). Off: stop with an error that names the file's URL and folder.")


def download_input() -> io.Boolean.Input:
    return io.Boolean.Input("download_missing", default=False, optional=True, label_on="download on run",
                            label_off="never download", tooltip=DOWNLOAD_TOOLTIP)


def _output(handle, message: str) -> io.NodeOutput:
    return io.NodeOutput(handle, ui=ui.PreviewText(message)) if message else io.NodeOutput(handle)


class InfinityTransformerLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InfinityTransformerLoader",
            display_name="Infinity Transformer Loader",
            category="Infinity/loaders",
            description="Loads an Infinity transformer (e.g. infinity_2b_reg.pth, or the index.json of the sharded "
                        "Infinity-8B folder) from models/infinity or models/diffusion_models. The size is read "
                        "from the file. Official files can be downloaded on first run.",
            inputs=[
                io.Combo.Input("model_name", options=glue.list_files(glue.TRANSFORMER_FOLDERS, "transformer",
                                                                     indexes=True),
                               tooltip="Transformer checkpoint (.pth / .safetensors, or *.index.json of a sharded "
                                       "model) in models/infinity or models/diffusion_models; only Infinity "
                                       "transformers are listed, plus the official files (downloadable)."),
                io.Combo.Input("weight_dtype", options=list(glue.WEIGHT_DTYPES), default="default",
                               tooltip="Storage dtype of the weights. default: what ComfyUI picks for the device "
                                       "(bf16 on Ampere and newer and on Macs, fp16 on older NVIDIA, fp32 on CPUs). "
                                       "fp8 stores the blocks' attention/FFN matrices in 8 bits (Macs cannot hold "
                                       "fp8: kept in bf16 there); computation runs in bf16/fp16/fp32."),
                io.Combo.Input("spatial_patchify", options=["auto", "on", "off"], default="auto", optional=True,
                               tooltip="Whether one token covers 2x2 latent cells (Infinity-8B). auto decides from "
                                       "the checkpoint's bits per token."),
                download_input(),
            ],
            outputs=[InfinityModel.Output(display_name="model", tooltip="The Infinity transformer.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model_name: str, weight_dtype: str = "default", spatial_patchify: str = "auto",
                download_missing: bool = False) -> io.NodeOutput:
        with about("model_name"):
            path, message = glue.resolve(glue.TRANSFORMER_FOLDERS, model_name, "transformer", download_missing,
                                         glue.hidden_input(cls, "unique_id"))
            return _output(glue.load_transformer(path, weight_dtype, spatial_patchify), message)


class InfinityTokenizerLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InfinityBitwiseTokenizerLoader",
            display_name="Infinity Bitwise Tokenizer Loader",
            category="Infinity/loaders",
            description="Loads Infinity's bitwise tokenizer (its VAE, e.g. infinity_vae_d32reg.pth for Infinity-2B) "
                        "from models/infinity or models/vae. It turns bits into images and images into bits.",
            inputs=[
                io.Combo.Input("vae_name", options=glue.list_files(glue.TOKENIZER_FOLDERS, "tokenizer"),
                               tooltip="Bitwise tokenizer checkpoint in models/infinity or models/vae; its bits per "
                                       "cell must match the transformer (d32 for 2B, d56 patchify for 8B). Other "
                                       "VAEs are not listed."),
                download_input(),
            ],
            outputs=[InfinityVAE.Output(display_name="vae", tooltip="The bitwise tokenizer (VAE).")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, vae_name: str, download_missing: bool = False) -> io.NodeOutput:
        with about("vae_name"):
            path, message = glue.resolve(glue.TOKENIZER_FOLDERS, vae_name, "tokenizer", download_missing,
                                         glue.hidden_input(cls, "unique_id"))
            return _output(glue.load_tokenizer(path), message)


class InfinityTextEncoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InfinityTextEncoderLoader",
            display_name="Infinity Text Encoder Loader",
            category="Infinity/loaders",
            description="Loads the flan-t5-xl text encoder from models/text_encoders: the encoder-only file the pack "
                        "downloads (flan-t5-xl-encoder/), any weight file of a Hugging Face folder (one with "
                        "config.json), or a single encoder-only .safetensors file.",
            inputs=[
                io.Combo.Input("text_encoder_name",
                               options=glue.list_files(glue.TEXT_ENCODER_FOLDERS, "text_encoder",
                                                       first_shard_only=True),
                               tooltip="flan-t5-xl weights in models/text_encoders (only T5 encoders are listed). A "
                                       "file inside a folder with config.json loads that whole folder; a lone file "
                                       "uses the tokenizer beside it or the T5 tokenizer that ships with ComfyUI."),
                io.Combo.Input("dtype", options=list(glue.TEXT_ENCODER_DTYPES), default="default",
                               tooltip="default: fp32 on the CPU, ComfyUI's text-encoder dtype (fp16) on a GPU. "
                                       "fp16 on the CPU (e.g. under --lowvram) loads as fp32: fp16 matmuls are "
                                       "several times slower on many CPUs."),
                download_input(),
            ],
            outputs=[InfinityTextEncoder.Output(display_name="text_encoder", tooltip="The T5 text encoder.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, text_encoder_name: str, dtype: str = "default", download_missing: bool = False) -> io.NodeOutput:
        with about("text_encoder_name"):
            path, message = glue.resolve(glue.TEXT_ENCODER_FOLDERS, text_encoder_name, "text_encoder",
                                         download_missing, glue.hidden_input(cls, "unique_id"))
            return _output(glue.load_text_encoder(path, dtype), message)
