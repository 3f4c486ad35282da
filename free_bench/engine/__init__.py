"""Decoding engines on top of the layer runner, and the timing they are measured with."""

from free_bench.engine.generate import KV_POLICIES, GenerateResult, generate
from free_bench.engine.timing import Timing, time_region

__all__ = ["KV_POLICIES", "GenerateResult", "Timing", "generate", "time_region"]
