"""Widget values to core objects: errors re-raised with the widget's name, the size widgets to a schedule, and
the size line the nodes show."""
from __future__ import annotations

from contextlib import contextmanager

from ..infinity_core.errors import InfinityError
from ..infinity_core.schedules import (AUTO_BUDGET, PIXEL_BUDGETS, ScaleSchedule, resolve_budget,
                                       template_for_size)

BUDGETS = [AUTO_BUDGET, *PIXEL_BUDGETS]


@contextmanager
def about(widget: str):
    """Re-raise core errors with the widget (or socket) they came from at the front of the message."""
    try:
        yield
    except InfinityError as err:
        raise type(err)(f"{widget}: {err.message}", hint=err.hint, path=err.path) from err


def schedule_for_widgets(width: int, height: int, budget: str, size_widget: str = "width/height") -> ScaleSchedule:
    """width/height snapped to a template (errors name `size_widget`) at the pixel budget (errors name `budget`);
    budget "auto" is the one whose pixel count is nearest to width x height."""
    with about(size_widget):
        template = template_for_size(width, height)
    with about("budget"):
        return ScaleSchedule(template, resolve_budget(budget, template, width, height))


def describe_schedule(budget: str, schedule: ScaleSchedule, scales: int | None = None) -> str:
    """The node text's size line: "W x H px (h/w template t, budget [auto → ]b, n scales)"."""
    h, w = schedule.image_hw
    shown = f"budget auto → {schedule.budget}" if budget == AUTO_BUDGET else f"budget {schedule.budget}"
    n = schedule.num_scales if scales is None else scales
    return f"{w}x{h} px (h/w template {schedule.template}, {shown}, {n} scales)"
