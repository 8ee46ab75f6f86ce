"""The small rules of masks.py that a sampling test does not pin: resampling of masks and pictures,
the composite's geometry and blend, and TeacherForcing's contracts (dtypes, devices, shapes)."""
import pytest
import torch
import torch.nn.functional as F

from infinity_core.errors import SamplingError
from infinity_core.sampling.masks import TeacherForcing, fit_mask, paste_back, regenerate_masks
from infinity_core.schedules import ScaleSchedule

SQUARE = ScaleSchedule(1.0, "0.06M")


def test_a_thin_stroke_on_a_large_mask_survives_fitting():
    """A 1 px brush stroke on a mask 4x the latent's frame still paints its token (area-weighted downscale)."""
    mask = torch.zeros(1, 1024, 1024)
    mask[:, 500, 300:700] = 1
    fitted = fit_mask(mask, (256, 256))
    assert fitted.max() > 0.1  # a plain bilinear downscale samples between the rows and loses it (0)
    assert regenerate_masks(mask, SQUARE)[-1].any()


def test_composite_maps_back_a_horizontal_crop():
    """A wide original: Encode scaled it to the template's height and cut its sides; the composite puts the
    generated frame back in the middle, where it came from."""
    original = torch.zeros(1, 100, 200, 3)
    generated = torch.ones(1, 256, 256, 3)
    image, w = paste_back(original, generated, torch.ones(1, 100, 200), radius=0)
    assert torch.equal(w[0, :, 50:150], torch.ones(100, 100)) and not w[0, :, :50].any() and not w[0, :, 150:].any()
    assert torch.allclose(image[0, :, 50:150], torch.ones(100, 100, 3)) and not image[0, :, :50].any()


def test_composite_downscales_without_aliasing():
    """A generated picture larger than the original is averaged down, not point-sampled: a 1 px checkerboard
    becomes its mean grey, not a moire."""
    y, x = torch.meshgrid(torch.arange(256), torch.arange(256), indexing="ij")
    board = ((x + y) % 2).float()[None, ..., None].expand(1, 256, 256, 3)
    image, _ = paste_back(torch.zeros(1, 100, 100, 3), board, torch.ones(1, 100, 100), radius=0)
    assert (image - 0.5).abs().max() < 0.1


def test_composite_resizes_the_mask_as_comfyui_does():
    """A mask of another size is stretched onto the original as core ImageCompositeMasked stretches it
    (bilinear, align_corners False)."""
    mask = torch.zeros(1, 4, 4)
    mask[:, :, :2] = 1
    _, w = paste_back(torch.zeros(1, 16, 16, 3), torch.ones(1, 16, 16, 3), mask, radius=0)
    comfy = F.interpolate(mask.reshape(-1, 1, 4, 4), size=(16, 16), mode="bilinear")[:, 0]
    assert torch.equal(w, comfy)


def test_the_feather_blends_between_the_original_and_the_generated_picture():
    original, generated = torch.zeros(1, 64, 64, 3), torch.ones(1, 64, 64, 3)
    mask = torch.zeros(1, 64, 64)
    mask[:, 24:40, 24:40] = 1
    image, w = paste_back(original, generated, mask, radius=8)
    band = (w > 0) & (w < 1)
    assert band.any()
    assert torch.allclose(image[0][band[0]], w[0][band[0]][:, None].expand(-1, 3))  # 0 * (1 - w) + 1 * w


def test_keep_mask_is_bool_also_for_whole_scales(tiny_tokenizer):
    teacher = TeacherForcing.first_scales([torch.zeros(1, 1, 16, dtype=torch.uint8)])
    assert teacher.keep_mask(0, 2, 1).dtype == torch.bool and teacher.keep_mask(0, 2, 1).all()


def test_forced_only_builds_on_the_run_device():
    bits = torch.ones(1, 4, 16, dtype=torch.uint8)
    teacher = TeacherForcing((bits,), (torch.tensor([[True, False, True, False]]),))
    forced, keep = teacher.forced_only(0, 2, 4, 16, "meta")
    assert forced.device.type == "meta" and keep.device.type == "meta" and keep.shape == (2, 4)
    forced, keep = teacher.forced_only(0, 2, 4, 16, "cpu")
    assert forced[:, 0].all() and not forced[:, 1].any() and keep[:, 2].all()
    assert teacher.forced_only(1, 2, 4, 16, "cpu") is None


def test_a_token_mask_of_another_batch_is_refused():
    bits = torch.zeros(1, 4, 16, dtype=torch.uint8)
    wrong = TeacherForcing((bits,), (torch.ones(3, 4, dtype=torch.bool),))
    with pytest.raises(SamplingError, match="token mask of scale 0"):
        wrong.check((4,), batch=2, bits_per_token=16)
    TeacherForcing((bits,), (torch.ones(2, 4, dtype=torch.bool),)).check((4,), batch=2, bits_per_token=16)
