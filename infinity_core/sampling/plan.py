"""The plan of a run, computed once from its inputs: which scales run the network, which yield bits, where
guidance stops and the unconditional rows are dropped, and each scale's cfg and tau.

The sampler walks it; the memory estimate, the speed settings, the nodes' texts and progress bars and the
benchmarks read their numbers from it, so no two places can disagree on what a run does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..model.pruning import PruningPolicy
from ..schedules import ScaleSchedule

if TYPE_CHECKING:  # the settings type lives with the sampler, which imports this module
    from .masks import TeacherForcing
    from .sampler import SamplerSettings


def net_scales(pruning: PruningPolicy | None, scales: int) -> int:
    """How many of the first `scales` scales run the network (pruning may skip the last ones)."""
    return pruning.scales_run(scales) if pruning is not None else scales


@dataclass(frozen=True)
class RunPlan:
    schedule: ScaleSchedule
    scales: int                   # the first `scales` scales of the schedule are this run's (stop_after)
    net_scales: int               # of those, the leading ones that run the network; the rest are skipped
    output_scales: int            # scales that yield bits: the network's, and skipped ones a teacher forces whole
    guided_scales: int            # the unconditional rows exist for scales < this (0: no guidance at all)
    cfg: tuple[float, ...]        # per scale of the schedule
    tau: tuple[float, ...]
    pruning: PruningPolicy | None = None

    @property
    def truncates(self) -> bool:
        """Guidance stops before the network does: the unconditional rows are dropped after the last guided scale."""
        return 0 < self.guided_scales < self.net_scales

    @property
    def kv_tokens(self) -> int:
        """Tokens the KV cache holds: every scale that runs but the last, which nothing attends to later."""
        return sum(self.schedule.tokens_per_scale[:self.net_scales - 1])

    @property
    def skipped_scales(self) -> range:
        return range(self.net_scales, self.scales)


def plan_run(schedule: ScaleSchedule, settings: SamplerSettings, *, pruning: PruningPolicy | None = None,
             teacher: TeacherForcing | None = None, stop_after: int | None = None) -> RunPlan:
    scales = schedule.num_scales if stop_after is None else max(1, min(stop_after, schedule.num_scales))
    run = net_scales(pruning, scales)
    forced_whole = min(scales, teacher.whole_scales) if teacher is not None else 0
    cfg, tau = settings.per_scale(schedule.num_scales)
    return RunPlan(schedule, scales, run, max(run, forced_whole), settings.guided_scales(run), tuple(cfg),
                   tuple(tau), pruning)
