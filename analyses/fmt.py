"""Number formatting shared by the claim verdicts and REPORT.md: a point with its CI, or the point alone,
never an invented bound."""

from __future__ import annotations

import numpy as np
import pandas as pd


def finite(v: object) -> bool:
    return v is not None and isinstance(v, int | float | np.number) and bool(np.isfinite(v))


UNITS = {"x": (1.0, 2, "x"), "%": (100.0, 1, "%"), "pts": (100.0, 1, " pts"), "": (1.0, 3, "")}


def ci(row: pd.Series, col: str, unit: str = "") -> str:
    """ "1.23x [1.10, 1.35]" (unit "x"), "21.1% [17.7, 24.6]" ("%"), "1.6 pts [0.0, 5.1]" ("pts"), or the
    point alone when the row has no CI."""
    k, digits, suffix = UNITS[unit]
    lo, hi = row.get(f"{col}_lo"), row.get(f"{col}_hi")
    text = f"{k * row[col]:.{digits}f}{suffix}"
    return text + (f" [{k * lo:.{digits}f}, {k * hi:.{digits}f}]" if finite(lo) and finite(hi) else "")
