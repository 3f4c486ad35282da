"""The report's figures: one Axes each, drawn by the analysis modules' `plot_*` functions, saved as PNG and
PDF. Measured speedups from different timers (cuda_event vs cpu_wall) or decode engines (eager vs graphs)
are never drawn in one figure: a GPU and a CPU wall clock are different experiments, and each engine's
speedup is against the full model timed through that engine, so one curve joining them would mean nothing.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from functools import partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless; set before anything below imports pyplot

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analyses.load import atomic_write  # noqa: E402
from analyses.midcrisis import plot_midcrisis  # noqa: E402
from analyses.overthinking import plot_overthinking  # noqa: E402
from analyses.robustness import plot_robustness_heatmap  # noqa: E402
from analyses.speedup import plot_speedup  # noqa: E402

TASK_METRIC = {"vqa": "vqa_accuracy", "caption": "CIDEr"}


def save_figure(
    folder: Path, stem: str, draw: Callable[[Axes], object], size: tuple[float, float] = (6.4, 4.4)
) -> list[Path]:
    """Draw on a fresh single-Axes figure and write `<stem>.png` and `<stem>.pdf` atomically."""
    fig = Figure(figsize=size, layout="constrained")
    draw(fig.add_subplot())
    out = []
    # no creation date or software version in the files: a rebuilt report changes a figure only where
    # its picture does
    stamp = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None, "Creator": None}}
    for ext in ("png", "pdf"):
        write = lambda tmp, ext=ext: fig.savefig(tmp, format=ext, dpi=150, metadata=stamp[ext])  # noqa: E731
        out.append(atomic_write(folder / f"{stem}.{ext}", write))
    return out


def task_metric(curves: pd.DataFrame, task: str) -> str:
    """The metric a task's figure shows: VQA accuracy or CIDEr when present, else its first metric."""
    metrics = sorted(curves.loc[curves["task"] == task, "metric"].unique())
    preferred = TASK_METRIC.get(task)
    return preferred if preferred in metrics else metrics[0]


def _smallest_batch(d: pd.DataFrame) -> pd.DataFrame:
    return d[d["batch_size"] == d["batch_size"].min()] if len(d) else d


def _timed_groups(timed: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(timer, engine, stem suffix) per measured figure: the suffix names the timer where a task has
    several, and the engine where it has several, so one timer and one engine keep the plain name."""
    pairs = sorted(set(zip(timed["timer"], timed["engine"], strict=True)))
    several_timers, several_engines = len({t for t, _ in pairs}) > 1, len({e for _, e in pairs}) > 1
    return [
        (t, e, (f"_{t}" if several_timers else "") + (f"_{e}" if several_engines else "")) for t, e in pairs
    ]


def speedup_figures(
    curves: pd.DataFrame, folder: Path, profile: str, devices: dict[str, str] | None = None
) -> dict[str, Path]:
    """`speedup_measured_<task>[_<timer>][_<engine>]` per task, timer and decode engine with timed points,
    and `speedup_expected_<task>` (simulated sweeps where there are any, else the timed ones), on clean
    test at the smallest batch size each kind of sweep has. `devices` names the device per timer."""
    devices = devices or {}
    out: dict[str, Path] = {}
    if "engine" not in curves.columns:  # tables from before engines were recorded: live points are eager
        curves = curves.assign(engine=np.where(curves["timer"] == "none", "none", "eager"))
    clean = curves[(curves["split"] == "test") & (curves["perturbation"] == "none")]
    for task in sorted(clean["task"].unique()):
        d = clean[clean["task"] == task]
        metric = task_metric(d, task)
        timed = d[(d["timer"] != "none") & np.isfinite(d["measured_speedup"].astype(float))]
        timers = sorted(timed["timer"].unique())
        oracle = d[d["method"] == "oracle"]  # a ceiling in every figure of the task (no measured speedup)
        for timer, engine, suffix in _timed_groups(timed):
            mine = timed[(timed["timer"] == timer) & (timed["engine"] == engine)]
            t = pd.concat([_smallest_batch(mine), oracle], ignore_index=True)
            stem = f"speedup_measured_{task}{suffix}"
            device = devices.get(timer, "unknown device")
            where = f"{timer}, {device}, {engine} engine, batch {t['batch_size'].iloc[0]}"
            title = f"{profile}: {task} test, measured speedup ({where})"
            draw = partial(_speedup, curves=t, x="measured_speedup", metric=metric, title=title)
            out[stem] = save_figure(folder, stem, draw)[0]
        simulated = d[d["timer"] == "none"]
        e = _smallest_batch(simulated if len(simulated) else d[d["timer"] != "none"])
        if e.empty:
            continue
        which = "simulated (untimed)" if len(simulated) else f"timed sweeps ({', '.join(timers)})"
        title = f"{profile}: {task} test, expected speedup, {which}, batch {e['batch_size'].iloc[0]}"
        stem = f"speedup_expected_{task}"
        draw = partial(_speedup, curves=e, x="expected_speedup", metric=metric, title=title)
        out[stem] = save_figure(folder, stem, draw)[0]
    return out


def _speedup(ax: Axes, curves: pd.DataFrame, x: str, metric: str, title: str) -> None:
    plot_speedup(curves, ax, x=x, metric=metric)
    ax.set_title(textwrap.fill(title, 72), fontsize="medium")  # long device names: wrap, never clip


def overthinking_figure(by_layer: pd.DataFrame, folder: Path, profile: str) -> Path:
    def draw(ax: Axes) -> None:
        plot_overthinking(by_layer, ax)
        ax.set_title(f"{profile}: test, right at this exit but wrong at the final layer", fontsize="medium")

    return save_figure(folder, "overthinking_by_layer", draw)[0]


def midcrisis_figure(curves: pd.DataFrame, folder: Path, profile: str) -> Path:
    def draw(ax: Axes) -> None:
        plot_midcrisis(curves, ax)
        ax.set_title(f"{profile}: test, per-layer exit accuracy and the logit lens", fontsize="medium")

    return save_figure(folder, "midcrisis_layers", draw)[0]


def robustness_figure(robust: pd.DataFrame, folder: Path, profile: str, metric: str) -> Path | None:
    """Drop vs clean test at the operating point, methods x perturbations; None when nothing is perturbed."""
    d = robust[(robust["metric"] == metric) & (robust["split"] == "test")]
    if d.empty or not (d["severity"] > 0).any():
        return None

    def draw(ax: Axes) -> None:
        plot_robustness_heatmap(d, ax, value="drop_vs_clean", metric=metric)
        where = ax.get_title().replace("drop_vs_clean ", "")
        ax.set_title(
            f"{profile}: {metric} drop vs clean test at the operating point, {where}", fontsize="medium"
        )

    return save_figure(folder, "robustness_heatmap", draw, size=(7.5, 4.8))[0]


def vs_fastest_figures(
    curves: pd.DataFrame, folder: Path, profile: str, devices: dict[str, str] | None = None
) -> dict[str, Path]:
    """`speedup_vs_fastest_<task>[_<timer>]`: every engine's batch-1 points on one axis, all against the
    same fastest full model (`analyses.fastest`), for each task and timer with more than one engine (with
    one, the engine's own figure already shows it)."""
    devices = devices or {}
    out: dict[str, Path] = {}
    clean = curves[(curves["split"] == "test") & (curves["perturbation"] == "none")]
    timers = sorted(clean["timer"].unique())
    for (task, timer), d in clean.groupby(["task", "timer"], sort=True):
        if d.loc[d["method"] != "full", "engine"].nunique() < 2:
            continue
        stem = f"speedup_vs_fastest_{task}" + (f"_{timer}" if len(timers) > 1 else "")
        against = ", ".join(sorted(d["baseline"].astype(str).unique()))
        title = (f"{profile}: {task} test, batch 1, measured speedup against the {against} "
                 f"({timer}, {devices.get(timer, 'unknown device')})")  # fmt: skip
        draw = partial(_speedup, curves=d, x="measured_speedup", metric=task_metric(d, task), title=title)
        out[stem] = save_figure(folder, stem, draw)[0]
    return out


def titled(plot: Callable[..., object], df: pd.DataFrame, title: str) -> Callable[[Axes], None]:
    """A `save_figure` draw function: `plot(df, ax)`, then the title (wrapped, never clipped)."""

    def draw(ax: Axes) -> None:
        plot(df, ax)
        ax.set_title(textwrap.fill(title, 72), fontsize="medium")

    return draw


def plot_logit_lens(lens: pd.DataFrame, ax: Axes) -> Axes:
    """VQA accuracy of the final norm + LM head on each layer's hidden state."""
    ax.plot(lens["layer"], lens["accuracy"], marker="o", ms=3)
    ax.set_xlabel("layer")
    ax.set_ylabel("vqa_accuracy (logit lens)")
    return ax
