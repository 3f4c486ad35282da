"""Wall-clock timing of a region, with the conditions that make numbers comparable recorded alongside.

CUDA work is asynchronous, so GPU regions are timed with CUDA events after a synchronize; CPU
regions with `time.perf_counter`. Warm-up repeats (allocator, kernel autotuning, lazy init) are
run and discarded before the timed ones.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from free_bench.core.errors import FreeBenchError


@dataclass(frozen=True)
class Timing:
    """Repeated timings of one region (milliseconds) and the conditions they were taken under."""

    median_ms: float
    p90_ms: float
    samples_ms: tuple[float, ...]
    timer: str  # "cuda_event" | "cpu_wall"
    device_name: str
    torch_version: str
    dtype: str
    batch_size: int | None

    def as_record(self) -> dict[str, Any]:
        """Flat dict for result tables / pytest-benchmark `extra_info`."""
        record = asdict(self)
        record["samples_ms"] = list(self.samples_ms)
        return record


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values (q in [0, 1])."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    k = (len(sorted_values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def device_name(device: torch.device) -> str:
    """GPU model name, or the CPU's platform string."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def time_region(
    fn: Callable[[], Any],
    *,
    warmup: int = 3,
    repeats: int = 10,
    device: str | torch.device,
    dtype: str | torch.dtype | None = None,
    batch_size: int | None = None,
) -> Timing:
    """Call `fn()` `warmup` times untimed, then `repeats` times timed; returns per-call milliseconds."""
    if warmup < 0 or repeats < 1:
        raise FreeBenchError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FreeBenchError(f"timing on {str(device)!r} requested but CUDA is not available")
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(dev)
            samples.append(start.elapsed_time(end))
        timer = "cuda_event"
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
        timer = "cpu_wall"
    ordered = sorted(samples)
    return Timing(
        median_ms=statistics.median(ordered),
        p90_ms=_percentile(ordered, 0.9),
        samples_ms=tuple(samples),
        timer=timer,
        device_name=device_name(dev),
        torch_version=torch.__version__,
        dtype=str(dtype).removeprefix("torch.") if dtype is not None else "unknown",
        batch_size=batch_size,
    )
