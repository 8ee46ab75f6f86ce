"""Bits <-> codes <-> latents, held to the reference's float32 operations and to hand-made layouts."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from infinity_core.model.quantizer import (bits_to_codes, next_scale_input, quantize_multiscale, summed_codes,
                                     token_bits_to_vae)
from shared_paths import PUBLIC_FIXTURES


@pytest.mark.parametrize("d", [14, 16, 24, 32, 56])
def test_codes_are_the_reference_float32_operations(d):
    """multiscale_bsq.py: codebook_scale = 1/np.sqrt(d) (L227), bits * scale * 2 - scale (L530), l2norm (L561);
    for d = 14 (Infinity-8B's cells), 24 and 56 a constant +-1/sqrt(d) would differ in the last bit."""
    bits = torch.randint(0, 2, (2, 1, 3, 5, d), generator=torch.Generator().manual_seed(d))
    scale = 1 / np.sqrt(d)
    expected = F.normalize(bits * scale * 2 - scale, dim=-1).permute(0, 4, 1, 2, 3)
    assert torch.equal(bits_to_codes(bits), expected)


@pytest.mark.skipif(not (PUBLIC_FIXTURES / "vae_a_square.safetensors").is_file(), reason="shared fixtures missing")
def test_summed_codes_and_quantisation_equal_the_reference_exactly():
    from safetensors.torch import load_file
    t = load_file(str(PUBLIC_FIXTURES / "vae_a_square.safetensors"))
    bits = [t[k] for k in sorted(k for k in t if k.startswith("bits.scale"))]
    grids = [tuple(b.shape[2:4]) for b in bits]
    assert torch.equal(summed_codes(bits, grids[-1]), t["summed_codes"])
    z, mine = quantize_multiscale(t["raw_features"], grids)
    assert z.shape == t["raw_features"].shape and torch.equal(z, t["z_quantized"])
    assert all(torch.equal(a, b) for a, b in zip(mine, bits))


def test_a_zero_feature_quantises_to_bit_zero():
    """sign(0) = -1: a cell component that is exactly 0 gives bit 0, as the reference's `z > 0`."""
    z = torch.tensor([0.0, 1.0, -1.0, 0.0]).view(1, 4, 1, 1)
    q, bits = quantize_multiscale(z, [(1, 1)])
    assert bits[0].flatten().tolist() == [0, 1, 0, 0] and q.shape == (1, 4, 1, 1)
    assert torch.allclose(q.flatten(), torch.tensor([-0.5, 0.5, -0.5, -0.5]))


def test_next_scale_input_with_patchify_puts_2x2_cells_into_one_token():
    summed = torch.randn(1, 3, 1, 8, 12, generator=torch.Generator().manual_seed(0))
    x = next_scale_input(summed, (4, 6), patchify=True)  # a 4x6 VAE grid -> 2x3 tokens of 4 x 3 bits
    cells = F.interpolate(summed, size=(1, 4, 6), mode="trilinear")[:, :, 0]
    assert x.shape == (1, 6, 12)
    for i, j, c, dy, dx in [(0, 0, 0, 0, 0), (1, 2, 2, 1, 0), (0, 1, 1, 1, 1), (1, 0, 0, 0, 1)]:
        assert x[0, i * 3 + j, c * 4 + 2 * dy + dx] == cells[0, c, 2 * i + dy, 2 * j + dx]
    plain = next_scale_input(summed, (4, 6), patchify=False)
    assert plain.shape == (1, 24, 3) and torch.equal(plain[0, 1 * 6 + 5], cells[0, :, 1, 5])


def test_token_bits_with_patchify_round_trip_through_the_vae_layout():
    tokens = torch.randint(0, 2, (2, 6, 12), dtype=torch.uint8)
    vae = token_bits_to_vae(tokens, (2, 3), patchify=True)
    assert vae.shape == (2, 1, 4, 6, 3) and vae[1, 0, 3, 4, 2] == tokens[1, 1 * 3 + 2, 2 * 4 + 2 * 1 + 0]
