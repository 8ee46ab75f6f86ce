"""Text conditioning: a prompt through T5 into the packed features the transformer reads."""
from __future__ import annotations

from .node_api import io, ui

from ..infinity_core.model.conditioning import MAX_LENGTH
from . import comfy_glue as glue
from .types import Conditioning, InfinityConditioning, InfinityTextEncoder, TextEncoderHandle

# a T5 pass over the padded prompt keeps about 16 fp32 maps of [tokens, d_model] alive (attention + FFN)
T5_LIVE_MAPS = 16


def encode_prompt(text_encoder: TextEncoderHandle, text: str) -> Conditioning:
    """Blank text gives an empty conditioning: fine as a negative (the learned null text), refused as positive."""
    if not text.strip():
        return Conditioning(None, text)
    d_model = text_encoder.encoder.hidden_size
    glue.load_models([text_encoder.patcher], MAX_LENGTH * d_model * 4 * T5_LIVE_MAPS, "encoding the prompt",
                     hint="free memory by closing other programs", force_full_load=True)
    return Conditioning(text_encoder.encoder.encode([text], output_device="cpu"), text)


class InfinityTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InfinityTextEncode",
            display_name="Infinity Text Encode",
            category="Infinity/conditioning",
            description="Encodes a prompt with flan-t5-xl for the Infinity sampler. Use a second one for the "
                        "negative prompt; left empty, the negative is the model's learned null text.",
            inputs=[
                InfinityTextEncoder.Input("text_encoder", tooltip="The T5 text encoder from Infinity Text Encoder "
                                                                  "Loader."),
                io.String.Input("text", multiline=True, default="",
                                tooltip="The prompt (up to 512 T5 tokens; longer text is cut). As a negative "
                                        "prompt, empty means 'use the learned null text'."),
            ],
            outputs=[InfinityConditioning.Output(
                display_name="conditioning", tooltip="The encoded prompt, for the sampler's positive or negative.")],
        )

    @classmethod
    def execute(cls, text_encoder: TextEncoderHandle, text: str) -> io.NodeOutput:
        cond = encode_prompt(text_encoder, text)
        return io.NodeOutput(cond, ui=ui.PreviewText(token_note(text_encoder, text)))


def token_note(text_encoder: TextEncoderHandle, text: str) -> str:
    """What the node shows: the prompt's T5 token count, and what was cut beyond MAX_LENGTH."""
    if not text.strip():
        return "empty: as a negative prompt this is the model's learned null text"
    n = text_encoder.encoder.token_count(text)
    if n <= MAX_LENGTH:
        return f"{n} of {MAX_LENGTH} T5 tokens"
    kept = text_encoder.encoder.tokenizer.decode(text_encoder.encoder.tokenize([text])[0][0], skip_special_tokens=True)
    return (f"⚠ {n} T5 tokens: only the first {MAX_LENGTH} are used; the text after "
            f"\"...{kept[-40:]}\" is ignored")
