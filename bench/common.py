"""Shared pieces of the sampler benchmarks: model shapes and inputs, the run modes, machine facts, workers.

FLOP counts and the matmul peak are in `flops.py`, memory readings in `memory.py`, timing in `timing.py`.
Used by `bench_sampler.py` (our sampler), `reference_timing.py` (the reference's loop on the same
weights) and `profile_sampler.py`. Nothing here is imported by `infinity_core`.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from infinity_core.model.config import INFINITY_PRESETS, InfinityConfig  # noqa: E402
from infinity_core.model.conditioning import TextEmbedding  # noqa: E402
from infinity_core.schedules import ScaleSchedule  # noqa: E402

TINY_FIXTURE = Path(__file__).resolve().parents[2] / "shared/fixtures/infinity_ref/model_a/infinity_tiny_a.safetensors"
# the public fixture's model A (infinity_tiny_a.json), used when the fixture file is absent
TINY_CONFIG = InfinityConfig(depth=4, embed_dim=64, num_heads=2, bits_per_token=16, text_channels=128)
SIZES = {"tiny": None, "layer12": "infinity_layer12", "2b": "infinity_2b"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SEED = 0            # weights
TEXT_SEED = 21      # text features
TEXT_TOKENS = 32    # ~ a short T5 prompt
SAMPLER = dict(cfg=3.0, tau=0.5, top_k=0, top_p=0.97)   # the released scripts' settings (B = 1)
TEMPLATE = 1.0      # square images
# what our sampler runs (infinity_core.sampling.speed.SpeedSettings fields); the reference gets the same cfg list
MODES = {
    "exact": dict(pruning="off", unguided_last_scales=0),
    "truncated": dict(pruning="off", unguided_last_scales=2),   # cfg 1 on the last two scales
    "fastvar": dict(pruning="fastvar", unguided_last_scales=0),  # FastVAR's setting: prune 2 scales, skip 2
    "prune": dict(pruning="prune", unguided_last_scales=0),      # prune the last 4 scales, skip none
}


# ---- models and inputs ---------------------------------------------------------------------------
def tiny_fixture_path(explicit: str | None = None) -> Path | None:
    path = Path(explicit or os.environ.get("INFINITY_TINY_FIXTURE", TINY_FIXTURE))
    return path if path.exists() else None


def size_config(size: str) -> InfinityConfig:
    if size == "tiny":
        path = tiny_fixture_path()
        if path is not None:
            from infinity_core.files.loading import transformer_state_dict
            return transformer_state_dict(path)[0]
        return TINY_CONFIG
    return INFINITY_PRESETS[SIZES[size]]


def build_ours(size: str, dtype: torch.dtype, device: str):
    """Our transformer with the benchmark's weights: the tiny fixture file, or seeded random weights."""
    from infinity_core.files.random_models import random_transformer
    if size == "tiny" and tiny_fixture_path() is not None:
        from infinity_core.files.loading import load_transformer
        return load_transformer(tiny_fixture_path(), dtype=dtype, device=device), f"fixture {tiny_fixture_path().name}"
    return random_transformer(size_config(size), seed=SEED, dtype=dtype, device=device), f"random weights (seed {SEED})"


def text_features(config: InfinityConfig, tokens: int = TEXT_TOKENS) -> torch.Tensor:
    return torch.randn(tokens, config.text_channels, generator=torch.Generator().manual_seed(TEXT_SEED))


def text_embedding(config: InfinityConfig, tokens: int = TEXT_TOKENS) -> TextEmbedding:
    return TextEmbedding.from_single(text_features(config, tokens))


def schedule_for(budget: str) -> ScaleSchedule:
    return ScaleSchedule(TEMPLATE, budget)


def mode_setup(mode: str, config: InfinityConfig, schedule: ScaleSchedule):
    """(our SamplerSettings, our pruning policy, the reference's cfg list) of a benchmark mode."""
    from infinity_core.sampling.sampler import SamplerSettings
    from infinity_core.sampling.speed import SpeedSettings
    settings, policy = SpeedSettings(**MODES[mode]).apply(SamplerSettings(**SAMPLER), schedule, config.depth)
    return settings, policy, settings.per_scale(schedule.num_scales)[0]


# ---- devices and misc ------------------------------------------------------------------------------
def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def machine_info(device: str) -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    info = dict(cpu=cpu, cores=os.cpu_count(), torch=torch.__version__, threads=torch.get_num_threads(),
                python=platform.python_version())
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "infinity_core"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


RESULT_PREFIX = "BENCH_RESULT "


def emit_result(result: dict) -> None:
    """Workers print their result as one tagged JSON line on stdout."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_worker(argv: list[str], timeout: float | None = None, env: dict | None = None) -> dict:
    """Run a worker in a fresh interpreter (so peak RSS is per case); its stderr passes through."""
    proc = subprocess.run([sys.executable, *argv], stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=str(REPO_ROOT))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stdout.splitlines()[-15:])
        return dict(error=f"worker exited with {proc.returncode}", output_tail=tail)
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def gib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**30:.3f}" if n < 2**30 else f"{n / 2**30:.2f}"
