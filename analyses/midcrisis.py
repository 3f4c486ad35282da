"""Mid-layer crisis: exit accuracy is not monotone in depth; it dips in the middle layers, then recovers.

FREE claims its exits remove the dip that DeeBERT-style heads show. To check, we draw per-layer exit
accuracy (teacher-forced, no skipping) per method beside the backbone's raw logit-lens curve (final norm +
LM head on every layer's hidden state), and summarise each curve by one number, the dip: the largest drop,
among middle layers, below the best shallower layer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from analyses.bootstrap import sample_counts
from analyses.checks import require
from analyses.overthinking import GROUP, series_label, wide_accuracy

LENS_METHOD, LENS_REGIME = "logit_lens", "none"


def compute_layer_curves(
    per_exit: pd.DataFrame, lens: pd.DataFrame | None = None, n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Tidy per-layer exit accuracy: method, regime, layer, accuracy, accuracy_lo, accuracy_hi.

    Only exit_kind == "exit" rows count (the backbone's own final row is not an exit). accuracy is the
    mean VQA soft accuracy; the CI is a percentile bootstrap 95% interval over questions (the same
    resamples for every layer of a group, `default_rng(seed)` per group). `lens` (columns layer, accuracy,
    e.g. quality.json's "logit_lens") is appended as method "logit_lens", regime "none", with NaN CIs."""
    require(per_exit, ["exit_kind"], "per_exit")
    rows = []
    for key, wide in wide_accuracy(per_exit, kinds=("exit",)):
        acc = wide.to_numpy(dtype=np.float64)
        boot = sample_counts(len(acc), n_boot, np.random.default_rng(seed)) @ acc / len(acc)
        lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
        for j, layer in enumerate(wide.columns):
            rows.append(
                dict(zip(GROUP, key, strict=True))
                | {
                    "layer": int(layer),
                    "accuracy": acc[:, j].mean(),
                    "accuracy_lo": lo[j],
                    "accuracy_hi": hi[j],
                }
            )
    if not rows:
        raise ValueError("per_exit has no exit_kind == 'exit' rows")
    curves = pd.DataFrame(rows)
    if lens is not None:
        require(lens, ["layer", "accuracy"], "lens")
        lens_rows = lens[["layer", "accuracy"]].astype({"layer": int, "accuracy": float})
        curves = pd.concat(
            [
                curves,
                lens_rows.assign(
                    method=LENS_METHOD, regime=LENS_REGIME, accuracy_lo=np.nan, accuracy_hi=np.nan
                ),
            ]
        )
    cols = [*GROUP, "layer", "accuracy", "accuracy_lo", "accuracy_hi"]
    return curves[cols].sort_values([*GROUP, "layer"]).reset_index(drop=True)


def _middle_mask(layers: np.ndarray, middle: tuple[float, float]) -> np.ndarray:
    """Middle layers: middle[0] * L < layer <= middle[1] * L, L = deepest layer, and a shallower layer exists."""
    lo, hi = middle
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"middle must satisfy 0 <= middle[0] < middle[1] <= 1, got {middle}")
    depth = layers.max()
    mask = (layers > lo * depth) & (layers <= hi * depth)
    mask[0] = False  # the shallowest layer has nothing shallower to drop below
    return mask


def _dips(layers: np.ndarray, acc: np.ndarray, middle: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Dip of each row of acc (rows = curves over ascending `layers`) and the column index where it is largest.

    Column index is -1 where the dip is 0 or there are no middle layers (then the dip is NaN)."""
    mask = _middle_mask(layers, middle)
    if not mask.any():
        return np.full(len(acc), np.nan), np.full(len(acc), -1)
    best_before = np.concatenate(
        [np.full((len(acc), 1), -np.inf), np.maximum.accumulate(acc, axis=1)[:, :-1]], 1
    )
    drop = np.where(mask, best_before - acc, -np.inf)
    where = drop.argmax(axis=1)
    dip = drop[np.arange(len(acc)), where]
    dip = np.where(dip > 1e-12, dip, 0.0)  # rounding noise on a flat stretch is not a dip
    return dip, np.where(dip > 0, where, -1)


def _curve_arrays(curves: pd.DataFrame) -> list[tuple[tuple, np.ndarray, np.ndarray]]:
    require(curves, [*GROUP, "layer", "accuracy"], "curves")
    out = []
    for key, sub in curves.groupby(GROUP, sort=True):
        if sub["layer"].duplicated().any():
            raise ValueError(f"curves group {key} has several rows for one layer")
        sub = sub.sort_values("layer")
        out.append((key, sub["layer"].to_numpy(dtype=np.int64), sub["accuracy"].to_numpy(dtype=np.float64)))
    return out


def compute_dip(curves: pd.DataFrame, middle: tuple[float, float] = (0.25, 0.75)) -> pd.DataFrame:
    """One row per (method, regime) of a layer curve (e.g. `compute_layer_curves`, logit lens included).

    dip = max over middle layers l of (max accuracy over the curve's layers shallower than l) - accuracy(l),
    clipped at 0, so a monotone curve has dip 0. Middle layers are those with middle[0] * L < l <= middle[1]
    * L, L the deepest layer of that curve, excluding the curve's shallowest layer; shallower layers outside
    the middle still count as the reference. Columns: depth (L), middle_first / middle_last (the middle
    layers used; NaN and dip NaN when there are none), dip, dip_layer (where the drop is largest, shallowest
    on ties; NaN when dip is 0), peak_layer (the best shallower layer it drops from; NaN when dip is 0)."""
    rows = []
    for key, layers, acc in _curve_arrays(curves):
        mask = _middle_mask(layers, middle)
        dip, where = _dips(layers, acc[None, :], middle)
        j = int(where[0])
        rows.append(
            dict(zip(GROUP, key, strict=True))
            | {
                "depth": int(layers.max()),
                "middle_first": float(layers[mask].min()) if mask.any() else np.nan,
                "middle_last": float(layers[mask].max()) if mask.any() else np.nan,
                "dip": float(dip[0]),
                "dip_layer": float(layers[j]) if j >= 0 else np.nan,
                "peak_layer": float(layers[int(acc[:j].argmax())]) if j >= 0 else np.nan,
            }
        )
    return pd.DataFrame(rows)


def compute_dip_ci(
    per_exit: pd.DataFrame, middle: tuple[float, float] = (0.25, 0.75), n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Bootstrap the dip over questions: one row per (method, regime) with dip, dip_lo, dip_hi.

    Each resample of questions gives a whole exit-accuracy curve and its dip (percentile 95% CI,
    `default_rng(seed)` per group). The dip is a max of noisy drops, so it is biased upward on curves that
    are nearly flat; read dip_lo > 0 as "there is a dip", not the point estimate alone."""
    rows = []
    for key, wide in wide_accuracy(per_exit, kinds=("exit",)):
        layers = np.asarray(wide.columns, dtype=np.int64)
        acc = wide.to_numpy(dtype=np.float64)
        point, _ = _dips(layers, acc.mean(axis=0)[None, :], middle)
        boot, _ = _dips(
            layers, sample_counts(len(acc), n_boot, np.random.default_rng(seed)) @ acc / len(acc), middle
        )
        lo, hi = (np.nan, np.nan) if np.isnan(point[0]) else np.percentile(boot, [2.5, 97.5])
        rows.append(
            dict(zip(GROUP, key, strict=True))
            | {"dip": float(point[0]), "dip_lo": float(lo), "dip_hi": float(hi)}
        )
    if not rows:
        raise ValueError("per_exit has no exit_kind == 'exit' rows")
    return pd.DataFrame(rows)


def plot_midcrisis(curves: pd.DataFrame, ax: Axes) -> Axes:
    """Accuracy vs layer, one line per method-regime; the logit lens dashed; bootstrap CIs as bands."""
    require(curves, [*GROUP, "layer", "accuracy"], "curves")
    for key, sub in curves.sort_values("layer").groupby(GROUP, sort=True):
        is_lens = key[0] == LENS_METHOD
        label = LENS_METHOD if is_lens else series_label(dict(zip(GROUP, key, strict=True)), GROUP)
        (line,) = ax.plot(
            sub["layer"],
            sub["accuracy"],
            linestyle="--" if is_lens else "-",
            marker="" if is_lens else "o",
            label=label,
        )
        if {"accuracy_lo", "accuracy_hi"} <= set(sub.columns) and sub["accuracy_lo"].notna().any():
            ax.fill_between(
                sub["layer"], sub["accuracy_lo"], sub["accuracy_hi"], color=line.get_color(), alpha=0.2
            )
    ax.set_xlabel("layer")
    ax.set_ylabel("VQA accuracy")
    ax.set_title("Per-layer exit accuracy (mid-layer crisis)")
    ax.legend(fontsize="small")
    return ax
