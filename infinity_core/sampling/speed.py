"""The opt-in speed-ups as the command line and the nodes offer them: guidance truncation and pruning.

One place turns the user's three choices into what the sampler takes (settings with cfg 1 on the last
scales, a pruning policy) and into the memory the run needs, so the CLI, the pipeline and both sampler
nodes cannot disagree. Exact mode (the defaults) changes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..model.config import InfinityConfig
from ..devices import AttentionPlan
from ..errors import SamplingError
from .memory import plan_bytes
from .plan import net_scales, plan_run
from ..model.pruning import DEFAULT_RATIO, PruningPolicy, build_policy
from .sampler import SamplerSettings
from ..schedules import ScaleSchedule


@dataclass(frozen=True)
class SpeedSettings:
    """pruning: "off", "prune" or "fastvar" (pruning.build_policy); prune_ratio: the fraction of tokens the
    pruned scales drop (FastVAR: 0.5); unguided_last_scales: the last N scales that run do without
    guidance, and without the unconditional half of the batch (0 = guidance everywhere)."""

    pruning: str = "off"
    prune_ratio: float = DEFAULT_RATIO
    unguided_last_scales: int = 0

    def policy(self, schedule: ScaleSchedule, depth: int) -> PruningPolicy | None:
        return build_policy(self.pruning, schedule, depth, self.prune_ratio)

    def apply(self, settings: SamplerSettings, schedule: ScaleSchedule, depth: int,
              num_scales: int | None = None) -> tuple[SamplerSettings, PruningPolicy | None]:
        """(sampler settings, pruning policy) for a run of the first `num_scales` scales (all by default)."""
        policy = self.policy(schedule, depth)
        return self.guidance(settings, schedule, policy, num_scales), policy

    def guidance(self, settings: SamplerSettings, schedule: ScaleSchedule, policy: PruningPolicy | None,
                 num_scales: int | None = None) -> SamplerSettings:
        """`settings` with `unguided_last_scales` applied to the scales that run under `policy`."""
        n = schedule.num_scales if not num_scales else min(num_scales, schedule.num_scales)
        return unguided_last(settings, self.unguided_last_scales, schedule.num_scales, net_scales(policy, n))


def unguided_last(settings: SamplerSettings, scales: int, num_scales: int, last: int) -> SamplerSettings:
    """`settings` with cfg 1 on the last `scales` of the first `last` scales (the ones that run)."""
    if scales <= 0:
        return settings
    if scales > last:
        raise SamplingError(f"unguided_last_scales: {scales}, but only {last} scales run",
                            hint=f"use 0..{last} (0 = guidance on every scale)")
    cfg, _ = settings.per_scale(num_scales)
    return replace(settings, cfg=tuple(cfg[:last - scales]) + (1.0,) * scales + tuple(cfg[last:]))


def run_memory(config: InfinityConfig, schedule: ScaleSchedule, batch: int, settings: SamplerSettings,
               dtype: torch.dtype, pruning: PruningPolicy | None = None, num_scales: int | None = None,
               text_tokens: int = 512, attention: AttentionPlan | None = None) -> int:
    """Peak working memory of `sample()` with these settings (memory.plan_bytes of the run's plan)."""
    plan = plan_run(schedule, settings, pruning=pruning, stop_after=num_scales or None)
    return plan_bytes(config, plan, batch, dtype, text_tokens, attention)
