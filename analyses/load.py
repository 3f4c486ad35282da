"""Read a results folder (`results/<profile>/`) into plain data frames for the report, and write outputs
atomically, so a report is never half-written when a run is killed.

Nothing here interprets the numbers: missing inputs become None plus a note saying what was missing,
so the report can say "missing" instead of inventing a value. Sweep folder names carry no meaning here;
only the tables' own columns do (timer == "none" is a simulated sweep). Each sweep gets a `seed` column
(its manifest's "seed", default 0) and a `sweep` column (its folder name), and `compact` from its spec,
so that two sweeps differing only in a setting the table has no column for can be told apart.

Every sweep and samples frame also gets `engine` (the decode engine of live points: eager or graphs;
"none" for simulated ones), because a measured speedup is only meaningful against the full model timed
through the same engine. Tables written before the column existed get it from the manifest's spec, else
"eager" (the only engine there was) for live rows. Speculative sweeps' live rows are
"<engine>-speculative": lossless, they are curves of their own.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analyses.sweep_cost import timing_rows

EXIT_RUN = re.compile(r"^(?P<method>[a-z0-9_]+)-(?P<regime>[a-z0-9_]+?)(?:-s(?P<seed>\d+))?$")
PER_EXIT = re.compile(r"^per_exit_(?P<split>val|test|test_novel)\.parquet$")
CAPTION_SCORES = re.compile(r"^per_exit_caption_scores_(?P<split>val|test|test_novel)\.parquet$")
SAMPLE_KEYS = ["method", "regime", "kv_policy", "batch_size", "task", "split", "perturbation", "threshold"]
LEGACY_ENGINE = "eager"  # the engine of live rows written before sweeps recorded one


@dataclass
class Results:
    """Everything the report reads; a None field is an input that was not there (see `notes`)."""

    root: Path
    manifest: dict[str, Any]
    quality: dict[str, Any] | None = None
    per_exit: dict[str, pd.DataFrame] = field(default_factory=dict)  # split -> concatenated table
    caption_scores: pd.DataFrame | None = None
    exit_runs: pd.DataFrame | None = None  # one row per exits run: method, regime, seed, seconds
    sweep: pd.DataFrame | None = None
    samples: pd.DataFrame | None = None
    sweep_timings: pd.DataFrame | None = None  # simulated sweeps' seconds per task (analyses.sweep_cost)
    notes: list[str] = field(default_factory=list)

    @property
    def profile(self) -> str:
        return str((self.manifest.get("config") or {}).get("profile") or self.root.name)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object, or None when the file is absent (a broken file is an error, not a missing one)."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data


def _exit_run(run: Path, res: Results) -> None:
    m = EXIT_RUN.match(run.name)
    seed = int(m["seed"]) if m and m["seed"] else 0
    found = False
    for f in sorted(run.glob("per_exit_*.parquet")):
        for pattern, kind in ((PER_EXIT, "per_exit"), (CAPTION_SCORES, "caption")):
            if (hit := pattern.match(f.name)) is None:
                continue
            df = pd.read_parquet(f).assign(seed=seed, run=run.name)
            if kind == "per_exit":
                found = True
                split = hit["split"]
                res.per_exit[split] = pd.concat([res.per_exit.get(split), df], ignore_index=True)
            else:
                res.caption_scores = pd.concat([res.caption_scores, df], ignore_index=True)
    meta = read_json(run / "manifest.json") or {}
    config = meta.get("config") or {}
    if not found and not meta:
        res.notes.append(f"exits/{run.name}: no per_exit_<split>.parquet and no manifest.json; skipped")
        return
    row = {
        "run": run.name,
        "method": config.get("method") or (m["method"] if m else run.name),
        "regime": config.get("regime") or (m["regime"] if m else "unknown"),
        "seed": seed,
        "train_seconds": meta.get("train_seconds", float("nan")),
        "wall_seconds": meta.get("wall_seconds", float("nan")),  # the last process's (see resumed_at_steps)
        "resumed_at_steps": (
            " ".join(map(str, meta["resumed_at_steps"])) if "resumed_at_steps" in meta else "not recorded"
        ),
        "device": meta.get("device", "unknown"),
    }
    res.exit_runs = pd.concat([res.exit_runs, pd.DataFrame([row])], ignore_index=True)


def with_engine(df: pd.DataFrame, spec_engine: object = None, spec_decode: object = None) -> pd.DataFrame:
    """`df` with an `engine` on every row: simulated rows (timer "none") are "none"; a live row keeps its
    own engine, else takes the spec's, else `LEGACY_ENGINE`. A speculative sweep's live rows (drafts
    verified by the full model: lossless) are "<engine>-speculative", so they are never pooled with
    the same engine's lossy early exits."""
    live_default = str(spec_engine) if spec_engine else LEGACY_ENGINE
    own = df["engine"] if "engine" in df.columns else pd.Series(pd.NA, index=df.index, dtype=object)
    own = own.astype(object).where(own.notna() & (own.astype(str) != ""), live_default).astype(str)
    if spec_decode == "speculative":
        own = own + "-speculative"
    return df.assign(engine=own.where(df["timer"] != "none", "none").astype(str))


def _sweep(folder: Path, res: Results) -> None:
    meta = read_json(folder / "manifest.json") or {}
    spec = meta.get("spec") or {}
    tags = {
        "seed": int(meta.get("seed", 0) or 0),
        "sweep": folder.name,
        "compact": str(spec["compact"]).lower() if "compact" in spec else "n/a",
        "exits_at": str(spec.get("exits_at") or ""),  # the exits consulted (analyses.projection)
    }
    sweep = with_engine(pd.read_parquet(folder / "sweep.parquet").assign(**tags), spec.get("engine"),
                        spec.get("decode"))  # fmt: skip
    res.sweep = pd.concat([res.sweep, sweep], ignore_index=True)
    if timed := timing_rows(folder.name, meta.get("timings")):
        res.sweep_timings = pd.concat([res.sweep_timings, pd.DataFrame(timed)], ignore_index=True)
    path = folder / "samples.parquet"
    if not path.is_file():
        return
    samples = pd.read_parquet(path)
    if samples.empty:
        return
    # the samples table has no timer nor engine: take them from the sweep rows of the same point (a
    # sweep is one spec, so one engine; a folder mixing two at one point cannot be attributed)
    points = sweep[SAMPLE_KEYS + ["timer", "engine"]].drop_duplicates()
    if points.duplicated(SAMPLE_KEYS).any():
        res.notes.append(
            f"sweeps/{folder.name}/samples.parquet: not used, its sweep has several engines at one point"
        )
        return
    as_float = {"threshold": lambda d: d["threshold"].astype(float)}
    own = [c for c in ("timer", "engine") if c in samples.columns]  # the sweep rows' (with the spec's) win
    samples = samples.drop(columns=own).assign(**as_float).merge(points.assign(**as_float), on=SAMPLE_KEYS,
                                                                 how="left")  # fmt: skip
    res.samples = pd.concat([res.samples, samples.assign(**tags)], ignore_index=True)


def load_results(results: Path) -> Results:
    """Read `results/<profile>/`; ValueError when the folder is missing or has neither sweeps nor exits."""
    root = Path(results)
    if not root.is_dir():
        raise ValueError(f"results folder {root} does not exist (or is not a folder)")
    res = Results(root=root, manifest=read_json(root / "manifest.json") or {})
    if not res.manifest:
        res.notes.append("manifest.json: missing (device, git commit unknown)")
    res.quality = read_json(root / "backbone" / "quality.json")
    if res.quality is None:
        res.notes.append("backbone/quality.json: missing (no backbone accuracy, no logit lens)")
    scored = read_json(root / "backbone" / "caption_scores.json")  # `free-bench score-captions --out`
    caps = (res.quality or {}).get("captions")
    if res.quality is not None and scored and (not isinstance(caps, dict) or "missing" in caps):
        res.quality["captions"] = scored["scores"]  # scored where pycocoevalcap runs (not the GPU host)
    for run in sorted(p for p in (root / "exits").glob("*") if p.is_dir()):
        _exit_run(run, res)
    for folder in sorted(p for p in (root / "sweeps").glob("*") if p.is_dir()):
        if (folder / "sweep.parquet").is_file():
            _sweep(folder, res)
        else:
            res.notes.append(f"sweeps/{folder.name}: no sweep.parquet; skipped")
    if res.sweep is None and not res.per_exit:
        raise ValueError(
            f"results folder {root} has no sweeps (sweeps/<name>/sweep.parquet) and no exits "
            "(exits/<method>-<regime>/per_exit_<split>.parquet): nothing to report"
        )
    if res.sweep is None:
        res.notes.append("sweeps/: no sweep.parquet found (no accuracy-vs-speedup, no robustness)")
    if not res.per_exit:
        res.notes.append("exits/: no per_exit_<split>.parquet found (no overthinking, no mid-crisis)")
    return res


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) on a hidden temporary file in path's folder, then rename it over path (atomic on
    POSIX). The writer creates the file itself, so it gets the usual permissions (mkstemp's are 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_csv(path: Path, df: pd.DataFrame) -> Path:
    return atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))
