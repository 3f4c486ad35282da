"""`time_region`: warm-up discarded, one sample per repeat, conditions recorded."""

from __future__ import annotations

import time

import pytest
import torch

from free_bench.core.errors import FreeBenchError
from free_bench.engine.timing import Timing, time_region


def test_cpu_timing_counts_and_stats() -> None:
    calls = []
    timing = time_region(
        lambda: (calls.append(1), time.sleep(0.001)), warmup=2, repeats=5, device="cpu", dtype=torch.bfloat16
    )
    assert len(calls) == 7  # warm-up runs too, but is not sampled
    assert isinstance(timing, Timing) and timing.timer == "cpu_wall"
    assert len(timing.samples_ms) == 5 and min(timing.samples_ms) >= 1.0
    assert min(timing.samples_ms) <= timing.median_ms <= timing.p90_ms <= max(timing.samples_ms)
    assert timing.dtype == "bfloat16" and timing.torch_version == torch.__version__
    assert timing.device_name


def test_as_record_is_flat_and_json_friendly() -> None:
    record = time_region(lambda: None, warmup=0, repeats=3, device="cpu", batch_size=8).as_record()
    assert set(record) == {
        "median_ms",
        "p90_ms",
        "samples_ms",
        "timer",
        "device_name",
        "torch_version",
        "dtype",
        "batch_size",
    }
    assert isinstance(record["samples_ms"], list) and record["batch_size"] == 8


def test_timing_is_frozen() -> None:
    timing = time_region(lambda: None, warmup=0, repeats=1, device="cpu")
    with pytest.raises(AttributeError):
        timing.median_ms = 0.0  # type: ignore[misc]


def test_bad_arguments() -> None:
    with pytest.raises(FreeBenchError, match="repeats"):
        time_region(lambda: None, repeats=0, device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(FreeBenchError, match="CUDA is not available"):
            time_region(lambda: None, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_event_timer() -> None:
    x = torch.randn(256, 256, device="cuda")
    timing = time_region(lambda: x @ x, warmup=1, repeats=3, device="cuda")
    assert timing.timer == "cuda_event" and len(timing.samples_ms) == 3
    assert timing.device_name == torch.cuda.get_device_name()
