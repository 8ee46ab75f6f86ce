"""Loader nodes: Infinity transformer, bitwise tokenizer (VAE) and T5 text encoder."""
from __future__ import annotations

from comfy_api.latest import io

from . import comfy_glue as glue
from .types import InfinityModel, InfinityTextEncoder, InfinityVAE, about


class InfinityTransformerLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InfinityTransformerLoader",
            display_name="Infinity Transformer Loader",
            category="Infinity/loaders",
            description="Loads an Infinity transformer (e.g. infinity_2b_reg.pth, or the index.json of the sharded "
                        "Infinity-8B folder) from models/infinity or models/diffusion_models. The size is read "
                        "from the file.",
            inputs=[
                io.Combo.Input("model_name", options=glue.list_files(glue.TRANSFORMER_FOLDERS, indexes=True),
                               tooltip="Transformer checkpoint (.pth / .safetensors, or *.index.json of a sharded "
                                       "model) in models/infinity or models/diffusion_models."),
                io.Combo.Input("weight_dtype", options=list(glue.WEIGHT_DTYPES), default="default",
                               tooltip="Storage dtype of the weights. default: what ComfyUI picks for the device "
                                       "(bf16 on Ampere and newer and on Macs, fp16 on older NVIDIA, fp32 on CPUs). "
                                       "fp8 stores the blocks' attention/FFN matrices in 8 bits (Macs cannot hold "
                                       "fp8: kept in bf16 there); computation runs in bf16/fp16/fp32."),
                io.Combo.Input("spatial_patchify", options=["auto", "on", "off"], default="auto", optional=True,
                               tooltip="Whether one token covers 2x2 latent cells (Infinity-8B). auto decides from "
                                       "the checkpoint's bits per token."),
            ],
            outputs=[InfinityModel.Output(display_name="model", tooltip="The Infinity transformer.")],
        )

    @classmethod
    def execute(cls, model_name: str, weight_dtype: str = "default", spatial_patchify: str = "auto") -> io.NodeOutput:
        with about("model_name"):
            path = glue.resolve(glue.TRANSFORMER_FOLDERS, model_name)
            return io.NodeOutput(glue.load_transformer(path, weight_dtype, spatial_patchify))


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
                io.Combo.Input("vae_name", options=glue.list_files(glue.TOKENIZER_FOLDERS),
                               tooltip="Bitwise tokenizer checkpoint in models/infinity or models/vae; its bits per "
                                       "cell must match the transformer (d32 for 2B, d56 patchify for 8B)."),
            ],
            outputs=[InfinityVAE.Output(display_name="vae", tooltip="The bitwise tokenizer (VAE).")],
        )

    @classmethod
    def execute(cls, vae_name: str) -> io.NodeOutput:
        with about("vae_name"):
            path = glue.resolve(glue.TOKENIZER_FOLDERS, vae_name)
            return io.NodeOutput(glue.load_tokenizer(path))


class InfinityTextEncoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InfinityTextEncoderLoader",
            display_name="Infinity Text Encoder Loader",
            category="Infinity/loaders",
            description="Loads the flan-t5-xl text encoder from models/text_encoders: pick any weight file of a "
                        "Hugging Face folder (one with config.json), or a single encoder-only .safetensors file.",
            inputs=[
                io.Combo.Input("text_encoder_name",
                               options=glue.list_files(glue.TEXT_ENCODER_FOLDERS, first_shard_only=True),
                               tooltip="flan-t5-xl weights in models/text_encoders. A file inside a folder with "
                                       "config.json loads that whole folder; a lone file uses the tokenizer beside "
                                       "it or the T5 tokenizer that ships with ComfyUI."),
                io.Combo.Input("dtype", options=list(glue.TEXT_ENCODER_DTYPES), default="default",
                               tooltip="default: fp32 on the CPU, ComfyUI's text-encoder dtype (fp16) on a GPU. "
                                       "fp16 on the CPU (e.g. under --lowvram) loads as fp32: fp16 is up to 5x "
                                       "slower there."),
            ],
            outputs=[InfinityTextEncoder.Output(display_name="text_encoder", tooltip="The T5 text encoder.")],
        )

    @classmethod
    def execute(cls, text_encoder_name: str, dtype: str = "default") -> io.NodeOutput:
        with about("text_encoder_name"):
            path = glue.resolve(glue.TEXT_ENCODER_FOLDERS, text_encoder_name)
            return io.NodeOutput(glue.load_text_encoder(path, dtype))
