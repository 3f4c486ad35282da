"""The `Built` container that build_report fills and render_report reads, with the two definitions both
sides use (`MAX_DROP`, `clean_test`); it sits apart so report.py and render.py need not import each other.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from analyses.load import Results

MAX_DROP = 0.01  # "comparable quality": at most 1 point of VQA accuracy (or 0.01 CIDEr) below the full model


class Built:
    """What build_report made: tables and figures by name, and why each missing part is missing."""

    def __init__(self, res: Results, n_boot: int, seed: int) -> None:
        self.res, self.n_boot, self.seed = res, n_boot, seed
        self.tables: dict[str, pd.DataFrame] = {}
        self.figures: dict[str, Path] = {}
        self.missing: dict[str, str] = {}
        self.claims: list[tuple[str, str, str]] = []  # (claim, verdict, evidence)
        self.targets: list[tuple[str, str, str]] = []  # (target, verdict, evidence): the project's own

    def attempt(self, part: str, fn: Callable[..., None], *args: object) -> None:
        """Run one part; a ValueError from the analyses marks the part missing with its message."""
        try:
            fn(self, *args)
        except ValueError as err:
            self.missing.setdefault(part, f"not computed: {err}")


def clean_test(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df["split"] == "test") & (df["perturbation"] == "none")]
