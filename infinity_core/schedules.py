"""Scale schedules: the aspect-ratio templates and pixel budgets Infinity was trained on.

Source: FoundationVision/Infinity `infinity/utils/dynamic_resolution.py` (tables re-typed as data).
A schedule is the list of token grids (h, w) the sampler walks through, coarse to fine; the image is
16·h_last × 16·w_last pixels. Only these grids work: the RoPE positions and the model's training
depend on them.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from itertools import accumulate

from .errors import ResolutionError

VAE_STRIDE = 16  # pixels per transformer token side (the patchify VAE has stride 8 but 2x2 cells per token)

# h/w ratio -> the 13 grids (h, w) of the '1M' schedule; every smaller budget is a prefix.
_RATIO_TO_GRIDS: dict[float, tuple[tuple[int, int], ...]] = {
    1.000: ((1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16), (20, 20), (24, 24), (32, 32), (40, 40), (48, 48), (64, 64)),
    1.250: ((1, 1), (2, 2), (3, 3), (5, 4), (10, 8), (15, 12), (20, 16), (25, 20), (30, 24), (35, 28), (45, 36), (55, 44), (70, 56)),
    1.333: ((1, 1), (2, 2), (4, 3), (8, 6), (12, 9), (16, 12), (20, 15), (24, 18), (28, 21), (36, 27), (48, 36), (60, 45), (72, 54)),
    1.500: ((1, 1), (2, 2), (3, 2), (6, 4), (9, 6), (15, 10), (21, 14), (27, 18), (33, 22), (39, 26), (48, 32), (63, 42), (78, 52)),
    1.750: ((1, 1), (2, 2), (3, 3), (7, 4), (11, 6), (14, 8), (21, 12), (28, 16), (35, 20), (42, 24), (56, 32), (70, 40), (84, 48)),
    2.000: ((1, 1), (2, 2), (4, 2), (6, 3), (10, 5), (16, 8), (22, 11), (30, 15), (38, 19), (46, 23), (60, 30), (74, 37), (90, 45)),
    2.500: ((1, 1), (2, 2), (5, 2), (10, 4), (15, 6), (20, 8), (25, 10), (30, 12), (40, 16), (50, 20), (65, 26), (80, 32), (100, 40)),
    3.000: ((1, 1), (2, 2), (6, 2), (9, 3), (15, 5), (21, 7), (27, 9), (36, 12), (45, 15), (54, 18), (72, 24), (90, 30), (111, 37)),
}

# pixel budget name -> number of scales (the reference's keys; '0.60M' is not '0.5M')
PIXEL_BUDGETS: dict[str, int] = {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}
AUTO_BUDGET = "auto"  # the budget whose image is nearest in pixel count to the requested width x height


def _build_templates() -> dict[float, tuple[tuple[int, int], ...]]:
    # The reference adds each ratio's transpose under int(1000/ratio)/1000, in this interleaved order.
    table: dict[float, tuple[tuple[int, int], ...]] = {}
    for ratio, grids in _RATIO_TO_GRIDS.items():
        table[ratio] = grids
        if ratio != 1.0:
            table[int(1 / ratio * 1000) / 1000] = tuple((w, h) for h, w in grids)
    return table


TEMPLATES: dict[float, tuple[tuple[int, int], ...]] = _build_templates()
TEMPLATE_RATIOS: tuple[float, ...] = tuple(TEMPLATES)  # [1.0, 1.25, 0.8, 1.333, 0.75, ...]


@dataclass(frozen=True)
class ScaleSchedule:
    """The token grids of one generation: `template` (h/w key) and `budget` pick a prefix of the 1M list."""

    template: float
    budget: str

    def __post_init__(self):
        if self.template not in TEMPLATES:
            raise ResolutionError(f"unknown aspect-ratio template {self.template!r}",
                                  hint=f"use one of {list(TEMPLATE_RATIOS)}")
        if self.budget not in PIXEL_BUDGETS:
            raise ResolutionError(f"unknown pixel budget {self.budget!r}", hint=f"use one of {list(PIXEL_BUDGETS)}")

    @cached_property
    def grids(self) -> tuple[tuple[int, int], ...]:
        return TEMPLATES[self.template][: PIXEL_BUDGETS[self.budget]]

    @property
    def num_scales(self) -> int:
        return len(self.grids)

    @property
    def final_grid(self) -> tuple[int, int]:
        return self.grids[-1]

    @property
    def image_hw(self) -> tuple[int, int]:
        h, w = self.final_grid
        return h * VAE_STRIDE, w * VAE_STRIDE

    @cached_property
    def tokens_per_scale(self) -> tuple[int, ...]:
        return tuple(h * w for h, w in self.grids)

    @property
    def num_tokens(self) -> int:
        return sum(self.tokens_per_scale)

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        """Start of each scale in the concatenated token sequence."""
        return tuple(accumulate(self.tokens_per_scale, initial=0))[:-1]

    def vae_grids(self, patchify: bool) -> tuple[tuple[int, int], ...]:
        """Grids of the VAE latent: twice the token grid when 2x2 latent cells form one token."""
        return tuple((2 * h, 2 * w) for h, w in self.grids) if patchify else self.grids


def nearest_template(h_div_w: float) -> float:
    """The template closest to h/w; the first one wins a tie, as in the reference's argmin."""
    return min(TEMPLATE_RATIOS, key=lambda t: abs(t - h_div_w))


# Requests are snapped to the nearest template; ones far outside every template (sides 144..1776 px,
# ratios 1:3..3:1) are refused. Bounds are multiples of 16 so they also serve as widget limits.
MIN_SIDE, MAX_SIDE, MAX_ASPECT = 64, 3584, 4.0


def nearest_budget(template: float, width: int, height: int) -> str:
    """The budget whose image (at this template) has the pixel count nearest to width x height; the smaller
    one on a tie."""
    def pixels(budget: str) -> int:
        h, w = ScaleSchedule(template, budget).image_hw
        return h * w
    return min(PIXEL_BUDGETS, key=lambda b: abs(pixels(b) - width * height))


def schedule_for_size(width: int, height: int, budget: str = AUTO_BUDGET) -> ScaleSchedule:
    """Snap a requested width/height to the nearest aspect template at the given pixel budget ("auto": the
    budget nearest in pixel count to width x height)."""
    template = template_for_size(width, height)
    return ScaleSchedule(template, resolve_budget(budget, template, width, height))


def resolve_budget(budget: str, template: float, width: int, height: int) -> str:
    """`budget` itself, or for "auto" the budget nearest in pixel count to width x height at this template."""
    return nearest_budget(template, width, height) if budget == AUTO_BUDGET else budget


def template_for_size(width: int, height: int) -> float:
    """The aspect template nearest to a requested width/height (sizes Infinity cannot snap are refused)."""
    if min(width, height) < MIN_SIDE or max(width, height) > MAX_SIDE:
        raise ResolutionError(f"{width}x{height} is too far outside the sizes Infinity generates "
                              f"(its templates span 144..1776 px per side; requests are snapped to them)",
                              hint=f"use a width and height between {MIN_SIDE} and {MAX_SIDE} px, e.g. 1024x1024; "
                                   "the pixel budget sets the output size, upscale afterwards for more")
    if max(width / height, height / width) > MAX_ASPECT:
        raise ResolutionError(f"aspect ratio {width}x{height} is beyond 4:1; Infinity's templates go from 1:3 to 3:1",
                              hint="pick a width/height ratio between 1:3 and 3:1 (up to 4:1 is snapped to 3:1)")
    return nearest_template(height / width)


def schedule_from_grids(grids) -> ScaleSchedule:
    """Find the (template, budget) whose grids are exactly `grids` (a list of (h, w) or (1, h, w))."""
    hw = tuple((int(g[-2]), int(g[-1])) for g in grids)
    for template, full in TEMPLATES.items():
        for budget, n in PIXEL_BUDGETS.items():
            if full[:n] == hw:
                return ScaleSchedule(template, budget)
    raise ResolutionError(f"{list(hw)} is not one of the reference's scale schedules",
                          hint="Infinity only runs on its predefined aspect-ratio templates and budgets")


def schedule_for_final_grid(final_hw: tuple[int, int], patchify: bool) -> ScaleSchedule | None:
    """The schedule whose final latent grid is `final_hw` (what a LATENT's shape tells), or None."""
    for template in TEMPLATES:
        for budget in PIXEL_BUDGETS:
            schedule = ScaleSchedule(template, budget)
            if schedule.vae_grids(patchify)[-1] == tuple(final_hw):
                return schedule
    return None
