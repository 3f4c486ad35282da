"""Overthinking: samples some earlier exit gets right while the backbone's final layer gets them wrong.

FREE motivates early exit partly by this effect: if shallow exits are right where the full model is wrong,
exiting early can gain accuracy as well as time. Everything here is measured from the per-layer correctness
matrix of a teacher-forced, no-skipping per-exit evaluation (`per_exit_<split>.parquet`; several
(method, regime) tables may be concatenated). A sample is *correct* at a layer when its VQA soft accuracy
is >= `correct_at`. "Final" always means the `exit_kind == "final"` row (backbone final layer + LM head, at
layer L = the LM depth), never the trained exit that may also sit at layer L.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from analyses.bootstrap import sample_counts
from analyses.checks import require

GROUP = ["method", "regime"]
PER_EXIT_COLUMNS = ["question_id", "layer", "exit_kind", "accuracy", *GROUP]
FINAL = "final"
_EPS = 1e-9  # soft accuracies such as min(1, n/3) are floats; do not let rounding flip "correct"


def wide_accuracy(
    per_exit: pd.DataFrame, by: str | None = None, kinds: tuple[str, ...] = ("exit", FINAL)
) -> Iterator[tuple[tuple, pd.DataFrame]]:
    """Yield ((method, regime[, by]), question x column soft-accuracy frame) per group.

    Columns are the exit layers (int, ascending) followed by "final" when it is in `kinds`. Each group is
    checked on its own: every question must have exactly one row per exit layer of that group (and one
    final row), else ValueError, since silently averaging over different question sets would bias rates."""
    keys = GROUP + ([by] if by else [])
    require(per_exit, PER_EXIT_COLUMNS + ([by] if by else []), "per_exit")
    bad_kinds = sorted(set(per_exit["exit_kind"]) - {"exit", FINAL})
    if bad_kinds:
        raise ValueError(f"per_exit has unknown exit_kind value(s) {bad_kinds}; expected 'exit' or 'final'")
    df = per_exit[per_exit["exit_kind"].isin(kinds)]
    col = df["layer"].astype(object).where(df["exit_kind"] == "exit", FINAL)
    df = df.assign(_col=col)
    dup = df.duplicated([*GROUP, "question_id", "_col"])
    if dup.any():
        row = df.loc[dup, [*GROUP, "question_id", "_col"]].iloc[0].tolist()
        raise ValueError(f"per_exit has duplicate rows for (method, regime, question_id, layer/final) {row}")
    for key, sub in df.groupby(keys, sort=True):
        wide = sub.pivot(index="question_id", columns="_col", values="accuracy")
        exits = sorted(c for c in wide.columns if c != FINAL)
        if FINAL in kinds and FINAL not in wide.columns:
            raise ValueError(f"per_exit group {key} has no exit_kind == 'final' rows")
        wide = wide[exits + ([FINAL] if FINAL in kinds else [])]
        holes = wide.columns[wide.isna().any()].tolist()
        if holes:
            raise ValueError(f"per_exit group {key}: some questions lack rows at layer(s)/final {holes}")
        if FINAL in kinds:
            depth = sub.loc[sub["exit_kind"] == FINAL, "layer"].unique()
            if len(depth) != 1:
                raise ValueError(f"per_exit group {key}: final rows sit at several layers {sorted(depth)}")
            if exits and max(exits) > depth[0]:
                raise ValueError(
                    f"per_exit group {key}: exit layer {max(exits)} is deeper than final {depth[0]}"
                )
            wide.attrs["depth"] = int(depth[0])
        yield (key, wide)


def _correct(wide: pd.DataFrame, correct_at: float) -> pd.DataFrame:
    if not 0.0 < correct_at <= 1.0:
        raise ValueError(f"correct_at must be in (0, 1], got {correct_at}")
    return wide >= correct_at - _EPS


def correctness_matrix(
    per_exit: pd.DataFrame, correct_at: float = 1.0, by: str | None = None
) -> pd.DataFrame:
    """Boolean matrix indexed by (method, regime[, by], question_id): exit layers (int columns) then "final".

    A layer some group has no exit at is <NA> for that group (nullable "boolean" dtype), not False."""
    keys = GROUP + ([by] if by else [])
    parts = []
    for key, wide in wide_accuracy(per_exit, by):
        part = _correct(wide, correct_at)
        part.index = pd.MultiIndex.from_tuples([(*key, q) for q in part.index], names=[*keys, "question_id"])
        parts.append(part)
    matrix = pd.concat(parts).astype("boolean")
    matrix.columns.name = "layer"
    exits = sorted(c for c in matrix.columns if c != FINAL)
    return matrix[exits + [FINAL]]


def compute_overthinking(
    per_exit: pd.DataFrame,
    correct_at: float = 1.0,
    by: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (method, regime[, by]): how often an earlier exit was right where the final was wrong.

    Columns: n, depth (L), final_accuracy (mean soft accuracy of the final row), final_correct (fraction
    correct at the final), overthinking_rate (some exit at layer < L correct and the final wrong) with its
    percentile bootstrap 95% CI over questions (overthinking_rate_lo/_hi; each group resampled with its own
    `default_rng(seed)`), any_exit_correct (some exit, any layer, correct), oracle_accuracy (correct at
    some exit or at the final), oracle_mean_exit_layer (mean of the earliest correct exit layer, L when no
    exit is correct) and oracle_expected_speedup = L / oracle_mean_exit_layer. The speedup is a layer count
    for an oracle that knows where to stop: it ignores the cost of evaluating exits and the vision encoder.
    """
    rows = []
    for key, wide in wide_accuracy(per_exit, by):
        depth = wide.attrs["depth"]
        ok = _correct(wide, correct_at)
        exits = [c for c in ok.columns if c != FINAL]
        exit_ok = ok[exits].to_numpy(dtype=bool)
        final_ok = ok[FINAL].to_numpy(dtype=bool)
        before = exit_ok[:, np.asarray(exits) < depth] if exits else exit_ok
        over = before.any(axis=1) & ~final_ok
        any_exit = exit_ok.any(axis=1)
        first = np.full(len(over), depth)
        if exits:  # earliest correct exit; the full depth when no exit is correct
            first = np.where(any_exit, np.asarray(exits)[exit_ok.argmax(axis=1)], depth)
        oracle_layer = float(first.mean())
        boot = sample_counts(len(over), n_boot, np.random.default_rng(seed)) @ over / len(over)
        rows.append(
            dict(zip(GROUP + ([by] if by else []), key, strict=True))
            | {
                "n": len(over),
                "depth": depth,
                "final_accuracy": float(wide[FINAL].mean()),
                "final_correct": float(final_ok.mean()),
                "overthinking_rate": float(over.mean()),
                "overthinking_rate_lo": float(np.percentile(boot, 2.5)),
                "overthinking_rate_hi": float(np.percentile(boot, 97.5)),
                "any_exit_correct": float(any_exit.mean()),
                "oracle_accuracy": float((any_exit | final_ok).mean()),
                "oracle_mean_exit_layer": oracle_layer,
                "oracle_expected_speedup": depth / oracle_layer,
            }
        )
    return pd.DataFrame(rows)


def compute_overthinking_by_layer(
    per_exit: pd.DataFrame, correct_at: float = 1.0, by: str | None = None
) -> pd.DataFrame:
    """One row per (method, regime[, by], exit layer): where in depth the overthinking samples are.

    Columns: n, accuracy (mean soft accuracy of the exit there), correct_rate, right_here_wrong_at_end
    (correct at this exit, wrong at the final) and wrong_here_right_at_end (the reverse). The exit at
    layer L, if any, is included: it measures the exit head against the backbone's own head."""
    rows = []
    for key, wide in wide_accuracy(per_exit, by):
        ok = _correct(wide, correct_at)
        final_ok = ok[FINAL]
        for layer in (c for c in ok.columns if c != FINAL):
            rows.append(
                dict(zip(GROUP + ([by] if by else []), key, strict=True))
                | {
                    "layer": int(layer),
                    "n": len(ok),
                    "accuracy": float(wide[layer].mean()),
                    "correct_rate": float(ok[layer].mean()),
                    "right_here_wrong_at_end": float((ok[layer] & ~final_ok).mean()),
                    "wrong_here_right_at_end": float((~ok[layer] & final_ok).mean()),
                }
            )
    return pd.DataFrame(rows)


def series_label(row: pd.Series | dict, keys: list[str]) -> str:
    """Legend label "method-regime[-extra]" for a group of a tidy frame."""
    return "-".join(str(row[k]) for k in keys)


def plot_overthinking(by_layer: pd.DataFrame, ax: Axes, metric: str = "right_here_wrong_at_end") -> Axes:
    """Per-layer `metric` (default: right here, wrong at the end), one line per method-regime[-by group].

    Takes `compute_overthinking_by_layer` output; any extra grouping column (e.g. question_type) splits lines."""
    require(by_layer, [*GROUP, "layer", metric], "by_layer")
    known = {
        *GROUP,
        "layer",
        "n",
        "accuracy",
        "correct_rate",
        "right_here_wrong_at_end",
        "wrong_here_right_at_end",
    }
    keys = GROUP + [c for c in by_layer.columns if c not in known]
    for key, sub in by_layer.sort_values("layer").groupby(keys, sort=True):
        ax.plot(
            sub["layer"], sub[metric], marker="o", label=series_label(dict(zip(keys, key, strict=True)), keys)
        )
    ax.set_xlabel("exit layer")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title("Overthinking by layer")
    ax.legend(fontsize="small")
    return ax
