"""Scale schedules and RoPE positions against the reference tables (docs: infinity-reference.md §2.6, §5)."""
import pytest
import torch

from infinity_core.errors import ResolutionError
from infinity_core.model.rope import _positions, apply_rope_, rope_table
from infinity_core.schedules import (TEMPLATE_RATIOS, ScaleSchedule, nearest_template, schedule_for_size,
                                     schedule_from_grids)

# template -> (image H x W, token count L) per budget, copied from the reference's measured table (§5.1)
REFERENCE_SIZES = {
    1.0: [((256, 256), 521), ((512, 512), 2521), ((768, 768), 6425), ((1024, 1024), 10521)],
    1.25: [((320, 256), 614), ((560, 448), 2814), ((880, 704), 6854), ((1120, 896), 10774)],
    0.8: [((256, 320), 614), ((448, 560), 2814), ((704, 880), 6854), ((896, 1120), 10774)],
    1.333: [((320, 240), 665), ((576, 432), 2657), ((960, 720), 7085), ((1152, 864), 10973)],
    0.75: [((240, 320), 665), ((432, 576), 2657), ((720, 960), 7085), ((864, 1152), 10973)],
    1.5: [((336, 224), 533), ((624, 416), 2759), ((1008, 672), 6941), ((1248, 832), 10997)],
    0.666: [((224, 336), 533), ((416, 624), 2759), ((672, 1008), 6941), ((832, 1248), 10997)],
    1.75: [((336, 192), 472), ((672, 384), 2628), ((1120, 640), 7220), ((1344, 768), 11252)],
    0.571: [((192, 336), 472), ((384, 672), 2628), ((640, 1120), 7220), ((768, 1344), 11252)],
    2.0: [((352, 176), 451), ((736, 368), 2681), ((1184, 592), 7219), ((1440, 720), 11269)],
    0.5: [((176, 352), 451), ((368, 736), 2681), ((592, 1184), 7219), ((720, 1440), 11269)],
    2.5: [((400, 160), 555), ((800, 320), 2555), ((1280, 512), 6805), ((1600, 640), 10805)],
    0.4: [((160, 400), 555), ((320, 800), 2555), ((512, 1280), 6805), ((640, 1600), 10805)],
    3.0: [((432, 144), 509), ((864, 288), 2588), ((1440, 480), 7016), ((1776, 592), 11123)],
    0.333: [((144, 432), 509), ((288, 864), 2588), ((480, 1440), 7016), ((592, 1776), 11123)],
}
BUDGETS = ["0.06M", "0.25M", "0.60M", "1M"]


def test_template_order_is_the_reference_argmin_order():
    assert TEMPLATE_RATIOS == (1.0, 1.25, 0.8, 1.333, 0.75, 1.5, 0.666, 1.75, 0.571, 2.0, 0.5, 2.5, 0.4, 3.0, 0.333)


@pytest.mark.parametrize("template", list(REFERENCE_SIZES))
@pytest.mark.parametrize("b", range(4))
def test_image_size_and_token_count(template, b):
    s = ScaleSchedule(template, BUDGETS[b])
    assert (s.image_hw, s.num_tokens) == REFERENCE_SIZES[template][b]
    assert s.num_scales == (7, 10, 12, 13)[b]


def test_square_1m_offsets_and_vae_grids():
    s = ScaleSchedule(1.0, "1M")
    assert s.tokens_per_scale == (1, 4, 16, 36, 64, 144, 256, 400, 576, 1024, 1600, 2304, 4096)
    assert s.offsets == (0, 1, 5, 21, 57, 121, 265, 521, 921, 1497, 2521, 4121, 6425)
    assert s.vae_grids(True)[-1] == (128, 128) and s.vae_grids(False)[-1] == (64, 64)


def test_nearest_template_and_first_minimum_on_ties():
    assert nearest_template(1.0) == 1.0
    assert nearest_template(720 / 1280) == 0.571
    assert nearest_template(1.125) == 1.0  # equally far from 1.0 and 1.25: the first in the list wins
    assert schedule_for_size(1920, 1080, "1M").image_hw == (768, 1344)


@pytest.mark.parametrize("w,h", [(100, 1024), (1024, 100), (4096, 4096), (1024, 5000), (0, 512)])
def test_sizes_outside_the_templates_are_refused_with_a_hint(w, h):
    with pytest.raises(ResolutionError, match="HINT"):
        schedule_for_size(w, h, "1M")


def test_schedule_from_grids_finds_the_template_and_budget():
    grids = [[1, 1, 1], [1, 2, 2], [1, 4, 3], [1, 8, 6], [1, 12, 9], [1, 16, 12], [1, 20, 15]]
    assert schedule_from_grids(grids) == ScaleSchedule(1.333, "0.06M")
    with pytest.raises(ResolutionError):
        schedule_from_grids([(1, 1), (3, 3)])


# ---- RoPE ------------------------------------------------------------------------------------
def test_star_positions_match_the_reference_lists():
    assert _positions(6, 64).tolist() == [0, 11, 21, 32, 43, 53]
    assert _positions(12, 64).tolist() == [0, 5, 11, 16, 21, 27, 32, 37, 43, 48, 53, 59]
    assert _positions(20, 64).tolist() == [0, 3, 6, 10, 13, 16, 19, 22, 26, 29, 32, 35, 38, 42, 45, 48, 51, 54, 58, 61]
    assert _positions(40, 64).tolist()[:12] == [0, 2, 3, 5, 6, 8, 10, 11, 13, 14, 16, 18]
    assert _positions(48, 64).tolist() == [0, 1, 3, 4, 5, 7, 8, 9, 11, 12, 13, 15, 16, 17, 19, 20, 21, 23, 24, 25,
                                           27, 28, 29, 31, 32, 33, 35, 36, 37, 39, 40, 41, 43, 44, 45, 47, 48, 49,
                                           51, 52, 53, 55, 56, 57, 59, 60, 61, 63]
    # float32 product + half-to-even: 27 * (111/54) is exactly 55.5 in float32 -> 56 (float64 would give 55)
    assert _positions(54, 111)[27].item() == 56
    # ties on the 1.25 template (20 x 16 at 1M: 70/20 = 3.5): half-to-even rounding
    assert _positions(20, 70)[:4].tolist() == [0, 4, 7, 10]


def test_rope_table_rows_and_interleaved_rotation():
    table = rope_table(32, 1.0)
    assert table.shape == (10521, 16) and table.dtype == torch.complex64
    x, rot = torch.randn(1, 1, 5, 32), table[1:6]
    cos, sin, x0, x1 = rot.real, rot.imag, x[..., 0::2], x[..., 1::2]
    expected = torch.stack([cos * x0 - sin * x1, sin * x0 + cos * x1], dim=-1).flatten(-2)
    assert torch.allclose(apply_rope_(x.clone(), rot), expected, atol=1e-6)
    # second token of scale 1 (2x2 grid at 1:1) sits at row 0, column 32: the row half of its angles is 0
    assert torch.allclose(table[2, :8].real, torch.ones(8)) and not torch.allclose(table[2, 8:].real, torch.ones(8))
