"""What every reproduce stage gets: the profile, the seed, where results and work folders go."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Context:
    profile: str
    seed: int
    results: Path  # results/<profile>/
    cache: Path  # <cache>/reproduce/<profile>/
