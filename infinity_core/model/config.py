"""Architecture configs, inferred from checkpoints, and the named presets of the reference model zoo.

Source: FoundationVision/Infinity `infinity/models/infinity.py` (timm constructors, L770-794),
`tools/run_infinity.py` (inference kwargs) and `infinity/models/bsq_vae/vae.py` (VAE arguments).
Only what changes the network is kept; training knobs (drop-path, block chunks, checkpointing,
fused-kernel flags) are not part of the config.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import CheckpointError

# Bit widths of the released bitwise tokenizers (load_visual_tokenizer accepts these vae_types).
KNOWN_VAE_BITS = (14, 16, 18, 20, 24, 32, 64)


def mlp_hidden_width(embed_dim: int, mlp_ratio: float = 4.0) -> int:
    # Python's round() is banker's rounding: C=2080 gives 8192 and C=3360 gives 13312, as in the reference.
    return round(embed_dim * mlp_ratio / 256) * 256


@dataclass(frozen=True)
class InfinityConfig:
    depth: int
    embed_dim: int
    num_heads: int
    bits_per_token: int          # d_t: word_embed in-features; 2*d_t logits per token
    text_channels: int = 2048    # Ct5 (flan-t5-xl width)
    mlp_hidden: int = 0          # 0 -> derived from embed_dim with the reference's rounding
    text_maxlen: int = 512       # rows of the learned null text (cfg_uncond)
    num_levels: int = 15         # rows of lvl_embed: at most 15 scales
    norm_eps: float = 1e-6

    def __post_init__(self):
        sizes = dict(depth=self.depth, embed_dim=self.embed_dim, num_heads=self.num_heads,
                     bits_per_token=self.bits_per_token, text_channels=self.text_channels,
                     text_maxlen=self.text_maxlen, num_levels=self.num_levels)
        if min(sizes.values()) < 1 or self.mlp_hidden < 0:
            raise CheckpointError(f"not a valid Infinity shape: {sizes}", hint="every size must be at least 1")
        if self.mlp_hidden == 0:
            object.__setattr__(self, "mlp_hidden", mlp_hidden_width(self.embed_dim))
        if self.embed_dim % self.num_heads or self.head_dim % 4:
            raise CheckpointError(f"width {self.embed_dim} with {self.num_heads} heads is not a valid Infinity shape",
                                  hint="head_dim must be an integer divisible by 4 (2D RoPE)")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def text_pool_head_dim(self) -> int:
        return 64 if self.embed_dim > 4096 else 128

    @property
    def text_pool_heads(self) -> int:
        return max(1, self.text_channels // self.text_pool_head_dim)

    @property
    def patchify_guess(self) -> bool:
        """Whether 2x2 latent cells form one token, when no tokenizer is at hand to tell.

        56 bits (Infinity-8B with the d14 tokenizer) is only reachable with patchify; widths that a
        released tokenizer has on its own are taken as plain.
        """
        d = self.bits_per_token
        return d not in KNOWN_VAE_BITS and d % 4 == 0 and d // 4 in KNOWN_VAE_BITS

    def num_params(self) -> int:
        """Parameter count of the reference module (2B: 2,204,564,032), for memory estimates."""
        C, T, M, V = self.embed_dim, self.text_channels, self.mlp_hidden, 2 * self.bits_per_token
        self_attn = 4 * C * C + 3 * C + self.num_heads + 6 * C     # qkv, proj, q/v bias, scale, ada_gss
        cross_attn = 4 * C * C + 5 * C                             # q, kv, proj, v bias, ca_norm
        ffn = 2 * C * M + M + C
        text = self.text_maxlen * T + T + (C + C + 2 * C * T + C * C + C) + (T * C + C + C * C + C)
        embeds = C + self.num_levels * C + self.bits_per_token * C + C
        heads = 6 * C * C + 6 * C + 2 * C * C + 2 * C + V * C + V  # shared_ada_lin, head_nm, head
        return self.depth * (self_attn + cross_attn + ffn) + text + embeds + heads


@dataclass(frozen=True)
class VAEConfig:
    codebook_dim: int                   # d: bits per latent cell
    base_ch: int = 128
    encoder_ch_mult: tuple[int, ...] = (1, 2, 4, 4, 4)
    decoder_ch_mult: tuple[int, ...] = (1, 2, 4, 4, 4)
    num_res_blocks: int = 2             # encoder blocks per level; the decoder has one more
    patch_size: int = 16                # spatial stride; 8 for the patchify tokenizer of Infinity-8B
    has_encoder: bool = True

    @property
    def num_down(self) -> int:
        return self.patch_size.bit_length() - 1

    @property
    def patchify(self) -> bool:
        """Stride-8 tokenizers (Infinity-8B's) put 2x2 latent cells into one transformer token, so images
        stay 16 px per token either way."""
        return self.patch_size == 8


# Named presets: the reference's registered sizes (only 2B and 8B have released weights).
INFINITY_PRESETS: dict[str, InfinityConfig] = {
    "infinity_2b": InfinityConfig(depth=32, embed_dim=2048, num_heads=16, bits_per_token=32),
    "infinity_8b": InfinityConfig(depth=40, embed_dim=3584, num_heads=28, bits_per_token=56),
    "infinity_20b": InfinityConfig(depth=58, embed_dim=4608, num_heads=36, bits_per_token=32),
    "infinity_layer12": InfinityConfig(depth=12, embed_dim=768, num_heads=8, bits_per_token=32),
    "infinity_layer16": InfinityConfig(depth=16, embed_dim=1152, num_heads=12, bits_per_token=32),
    "infinity_layer24": InfinityConfig(depth=24, embed_dim=1536, num_heads=16, bits_per_token=32),
    "infinity_layer32": InfinityConfig(depth=32, embed_dim=2080, num_heads=20, bits_per_token=32),
    "infinity_layer40": InfinityConfig(depth=40, embed_dim=2688, num_heads=24, bits_per_token=32),
    "infinity_layer48": InfinityConfig(depth=48, embed_dim=3360, num_heads=28, bits_per_token=32),
}

VAE_PRESETS: dict[str, VAEConfig] = {
    "infinity_vae_d16": VAEConfig(codebook_dim=16),
    "infinity_vae_d24": VAEConfig(codebook_dim=24),
    "infinity_vae_d32": VAEConfig(codebook_dim=32),
    "infinity_vae_d64": VAEConfig(codebook_dim=64),
    "infinity_vae_d56_f8_14_patchify": VAEConfig(codebook_dim=14, encoder_ch_mult=(1, 2, 4, 4),
                                                 decoder_ch_mult=(1, 2, 4, 4), patch_size=8),
}


def preset_name(config) -> str | None:
    table = INFINITY_PRESETS if isinstance(config, InfinityConfig) else VAE_PRESETS
    for name, preset in table.items():
        if preset == config:
            return name
    return None


def _count(keys, pattern: str) -> int:
    """How many numbered modules (blocks, levels) the keys hold; the numbers must run 0, 1, ... without
    a gap, so a count never exceeds the number of keys (a stray `blocks.99999.` cannot build 10^5 blocks)."""
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in keys if (m := rx.match(k))}
    if found and len(found) != max(found) + 1:
        gaps = [i for i in range(len(found) + 5) if i not in found]  # the first gaps, without range(max)
        named = pattern.replace(r"\.", ".").replace(r"(\d+)", "N")
        raise CheckpointError(f"the tensors named like '{named}' skip number(s) {gaps[:5]} (found {len(found)}, "
                              f"highest {max(found)})", hint="the file is incomplete or damaged; download it again")
    return len(found)


def infinity_config_from_state_dict(sd) -> InfinityConfig:
    """Read the architecture off a (remapped, `blocks.{n}.` keyed) transformer state dict."""
    C, d_t = sd["word_embed.weight"].shape
    return InfinityConfig(
        depth=_count(sd, r"blocks\.(\d+)\."),
        embed_dim=C,
        num_heads=sd["blocks.0.sa.scale_mul_1H11"].numel(),
        bits_per_token=d_t,
        text_channels=sd["text_norm.weight"].shape[0],
        mlp_hidden=sd["blocks.0.ffn.fc1.weight"].shape[0],
        text_maxlen=sd["cfg_uncond"].shape[0],
        num_levels=sd["lvl_embed.weight"].shape[0],
    )


def vae_config_from_state_dict(sd) -> VAEConfig:
    """Read the architecture off a (wrapper-named, `encoder.` / `decoder.`) tokenizer state dict."""
    base = sd["decoder.conv_out.conv.weight"].shape[1]
    dec_levels = _count(sd, r"decoder\.up\.(\d+)\.")
    dec_mult = tuple(sd[f"decoder.up.{i}.block.0.conv2.conv.weight"].shape[0] // base for i in range(dec_levels))
    has_encoder = "encoder.conv_in.conv.weight" in sd
    if has_encoder:
        enc_levels = _count(sd, r"encoder\.down\.(\d+)\.")
        enc_mult = tuple(sd[f"encoder.down.{i}.block.0.conv2.conv.weight"].shape[0] // base for i in range(enc_levels))
        res_blocks = _count(sd, r"encoder\.down\.0\.block\.(\d+)\.")
    else:
        enc_mult, res_blocks = dec_mult, _count(sd, r"decoder\.up\.0\.block\.(\d+)\.") - 1
    num_up = sum(1 for i in range(dec_levels) if f"decoder.up.{i}.upsample.conv.conv.weight" in sd)
    return VAEConfig(
        codebook_dim=sd["decoder.conv_in.conv.weight"].shape[1],
        base_ch=base,
        encoder_ch_mult=enc_mult,
        decoder_ch_mult=dec_mult,
        num_res_blocks=res_blocks,
        patch_size=2 ** num_up,
        has_encoder=has_encoder,
    )
