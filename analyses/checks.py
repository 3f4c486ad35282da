"""Input checks shared by the analyses: a malformed table is refused with a message naming what is wrong."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd


def require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """Raise a ValueError naming `what` when it lacks any of `columns` or is empty."""
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"{what} is not a data frame")
    if len(df.columns) == 0:
        raise ValueError(f"{what} is empty (no columns)")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} is missing column(s) {missing}; it has {list(df.columns)}")
    if df.empty:
        raise ValueError(f"{what} is empty")
