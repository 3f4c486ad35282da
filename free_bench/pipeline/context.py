"""What every reproduce stage gets: the settings, the backbone and data, where results and work go."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from free_bench.config import Profile


@dataclass(frozen=True)
class Context:
    profile: str  # the run's name: a profile's, or a config file's `name`
    seed: int
    results: Path  # results/<name>/
    cache: Path  # <cache>/reproduce/<name>/
    settings: Profile  # the profile, with a config file's changes
    backbone: str  # embedded:<profile> (pretrained by the backbone stage), an HF id or a BLIP-2 folder
    data: str | None = None  # a `free-bench data` folder; None: the profile's scenes

    @property
    def scenes(self) -> str:
        """The profile whose scenes (and embedded backbone) the run uses: the one its settings start from."""
        return self.settings.extras.get("base", self.settings.name)

    @property
    def embedded(self) -> bool:
        return self.backbone.startswith("embedded:")
