"""Memory readings of the benchmarks: RSS (current, peak since a reset), live tensor bytes, the exact-run bound."""
from __future__ import annotations

import resource
import sys

from common import REPO_ROOT, torch
from infinity_core.model.config import InfinityConfig
from infinity_core.sampling.memory import kv_cache_bytes
from infinity_core.schedules import ScaleSchedule


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def current_rss() -> int:
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else 0


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark (VmHWM) to the current RSS; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_since_reset() -> int | None:
    kib = _status_kib("VmHWM")
    return kib * 1024 if kib is not None else None


def process_peak_rss() -> int:
    """Peak RSS of the whole process lifetime (ru_maxrss, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_bound(config: InfinityConfig, schedule: ScaleSchedule, weights_bytes: int, dtype: torch.dtype,
                 batch: int = 1, guided: bool = True) -> dict:
    """The issue's target: weights + theoretical KV cache (2 CFG halves x layers x tokens x width x 2 (K and V)
    in the compute dtype), plus 10%."""
    kv = kv_cache_bytes(config, schedule, batch * (2 if guided else 1), dtype)
    return dict(weights=weights_bytes, kv_cache=kv, bound=int(1.1 * (weights_bytes + kv)))


def tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.device.type)
        if key in seen or t.device.type == "meta":
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    return total


def live_tensor_peak(run) -> int:
    """Peak bytes of the tensors `run` creates and holds at once (one extra, untimed run; CPU)."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from live_bytes import LiveBytes  # the tracker the memory-estimate tests use
    meter = LiveBytes()
    with meter, torch.no_grad():
        run()
    return meter.peak
