"""Markdown pieces shared by REPORT.md's sections: tables (NaN written "n/a", never 0), a value with its
CI, figures, links to the wide tables in tables/, and a part's "missing" line."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analyses.built import Built
from analyses.fmt import ci as _ci


def fmt(v: object) -> str:
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if isinstance(v, float | np.floating):
        return "n/a" if not np.isfinite(v) else f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return "n/a" if v is None or v is pd.NA else str(v)


def md_table(df: pd.DataFrame) -> str:
    """A GitHub markdown table; NaN is written "n/a", never 0."""
    rows = ["| " + " | ".join(fmt(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * df.shape[1], *rows])


def with_ci(df: pd.DataFrame, cols: dict[str, tuple[str, str]]) -> pd.DataFrame:
    """Add a "value [lo, hi]" string column per {col: (name, unit)} (units as in `analyses.fmt.ci`); a
    missing value is "n/a"."""
    out = df.copy()
    for col, (name, unit) in cols.items():
        out[name] = [_ci(r, col, unit) if _known(r[col]) else "n/a" for _, r in df.iterrows()]
    return out


def _known(v: object) -> bool:
    try:
        return bool(np.isfinite(float(v)))
    except (TypeError, ValueError):
        return False


def who(df: pd.DataFrame) -> pd.Series:
    """ "free-semi" per row; "static" and the full model keep their name alone (regime none)."""
    regime = df["regime"].astype(str) if "regime" in df.columns else pd.Series("none", index=df.index)
    return df["method"].astype(str).where(regime == "none", df["method"].astype(str) + "-" + regime)


def missing(b: Built, part: str) -> list[str]:
    return [f"**missing**: {b.missing[part]}", ""] if part in b.missing else []


def figure(b: Built, name: str, caption: str) -> list[str]:
    return [f"![{caption}](figures/{name}.png) ([pdf](figures/{name}.pdf))", ""] if name in b.figures else []


def links(b: Built, names: dict[str, str]) -> list[str]:
    """One line linking each written table {name: what it holds} (tables this report did not make are left
    out)."""
    shown = [f"[{n}.csv](tables/{n}.csv) ({what})" for n, what in names.items() if n in b.tables]
    return ["Tables: " + "; ".join(shown) + ".", ""] if shown else []
