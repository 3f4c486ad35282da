"""BLIP-2 at full size (random init, `results/<profile>/scale/`): per model and method, the full
model's latency at batch 1, the prefix's share of it, and what exiting at the first exit measures
against what the layer count expects; next to the projection, which prices the embedded model's exit
depths with the engine benchmarks' costs instead."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd

from analyses.checks import require
from analyses.fixed_cost import compute_fixed_share
from analyses.projection import compute_projection


def load_scale(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The sweep and exit-check tables of `bench_scale.py`, with the model size as a column."""

    def read(prefix: str) -> pd.DataFrame:  # sweep_<size>_<engine>.csv, exit_check_<size>.csv
        files = sorted(folder.glob(f"{prefix}*.csv"))
        frames = [pd.read_csv(f).assign(size=f.stem.removeprefix(prefix).split("_")[0]) for f in files]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    return read("sweep_"), read("exit_check_")


def compute_scale(sweeps: pd.DataFrame, checks: pd.DataFrame) -> pd.DataFrame:
    """One row per (size, method): the full model and the earliest-exiting point of the same sweep."""
    rows: list[dict] = []
    if sweeps.empty:
        return pd.DataFrame(rows)
    for (size, method), g in sweeps.groupby(["size", "method"], sort=True):
        full = g[g["point"] == "full"]
        exits = g[g["point"] != "full"].sort_values("latency_ms_median")
        if full.empty or exits.empty:
            continue
        f, e = full.iloc[0], exits.iloc[0]
        check = checks[(checks["size"] == size) & (checks["method"] == method)] if len(checks) else checks
        rows.append({
            "model": size, "method": method, "questions": int(f["questions"]),
            "full_ms_median": f["latency_ms_median"], "prefix_share": f["prefix_share"],
            "exit_layer": e["mean_exit_layer"], "exit_ms_median": e["latency_ms_median"],
            "measured_speedup": e["measured_speedup"], "expected_speedup": e["expected_speedup"],
            "exit_check_ms": check["check_ms_median"].iloc[0] if len(check) else float("nan"),
        })  # fmt: skip
    return pd.DataFrame(rows)


REPLAY_KEYS = ["model", "method", "threshold", "engine"]


def load_replay(folder: Path) -> pd.DataFrame:
    """Per-sample replay rows (`replay_samples_<size>.csv` of `bench_scale.py --replay`), with the model."""
    files = sorted(folder.glob("replay_samples_*.csv"))
    frames = [pd.read_csv(f).assign(model=f.stem.removeprefix("replay_samples_")) for f in files]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def compute_replay(samples: pd.DataFrame, costs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per model, method, threshold and engine: the replayed depths' measured speedups, end to end and
    of the LM part after the prefix (summed times, full model / replay), beside the layer-count
    expectation alone (what the LM part should give) and with the measured prefix counted
    (`analyses.fixed_cost.compute_fixed_share`, the live sweeps' own table), and where `costs`
    (`analyses.projection.costs_from_bench`) hold the engine's, the projection of the same depths
    (which leaves the prefix out: compare it with `lm_measured_speedup`)."""
    if samples.empty:
        return pd.DataFrame()
    samples = samples if "source" in samples.columns else samples.assign(source="")
    parts = [_replay_table(part, costs) for _, part in samples.groupby("source", sort=True)]
    return pd.concat(parts, ignore_index=True)


def _replay_table(samples: pd.DataFrame, costs: pd.DataFrame | None) -> pd.DataFrame:
    """`compute_replay` of one source's depths: its thresholds are its own, so sources never pool."""
    need = [*REPLAY_KEYS, "tokens", "mean_exit_layer", "replay_ms", "full_ms", "prefix_ms", "cost_layers",
            "full_cost_layers", "exits_at"]  # fmt: skip
    require(samples, need, "replay samples")
    as_sweep = samples.rename(columns={"replay_ms": "latency_ms", "full_ms": "full_latency_ms"}).assign(
        regime=samples.get("regime", "none"), kv_policy="propagate", batch_size=1, task="vqa", split="test",
        perturbation="none", sweep=samples["model"],
    )  # fmt: skip
    shares = compute_fixed_share(as_sweep).rename(columns={"sweep": "model"})
    rows = []
    for key, g in samples.groupby(REPLAY_KEYS, sort=True):
        rows.append(dict(zip(REPLAY_KEYS, key, strict=True)) | {
            "source": g["source"].iloc[0], "questions": len(g),
            "mapping": g["mapping"].iloc[0] if "mapping" in g.columns and g["mapping"].notna().all() else "exact",
            "tokens": int(g["tokens"].sum()),
            "mean_exit_layer": float((g["mean_exit_layer"] * g["tokens"]).sum() / g["tokens"].sum()),
            "projected_speedup": _projected(g, key, costs),
        })  # fmt: skip
    cols = ["prefix_share", "measured_speedup", "expected_with_prefix", "measured_over_expected_with_prefix",
            "lm_measured_speedup", "expected_speedup", "lm_measured_over_expected"]  # fmt: skip
    table = pd.DataFrame(rows).merge(shares[[*REPLAY_KEYS, *cols]], on=REPLAY_KEYS, how="left")
    return table[[*REPLAY_KEYS, "source", "mapping", "questions", "tokens", "mean_exit_layer", *cols,
                  "projected_speedup"]]  # fmt: skip


def _projected(g: pd.DataFrame, key: tuple, costs: pd.DataFrame | None) -> float:
    """The projection (`analyses.projection`) of these tokens' depths with the costs of their engine
    under `propagate` at the same depth, or NaN without such a cost row or per-token layers."""
    if costs is None or costs.empty or "exit_layers" not in g.columns or g["exit_layers"].isna().any():
        return float("nan")
    model, method, threshold, engine = key
    if "opt" not in str(model).lower():  # the engine benchmarks are of OPT-2.7b's LM shape only
        return float("nan")
    hist = Counter(k for layers in g["exit_layers"] for k in json.loads(layers))
    same = costs[(costs["policy"] == "propagate") & (costs.get("engine", "eager") == engine)]
    if same.empty:
        return float("nan")
    depth = int(same["num_layers"].iloc[0])  # the replay ran at the benchmarked shape: depths map 1:1
    point = pd.DataFrame([{"method": method, "kv_policy": "propagate", "threshold": threshold, "engine": engine,
                           "exit_layer_hist": json.dumps({str(k): v for k, v in sorted(hist.items())}),
                           "exits_at": g["exits_at"].iloc[0], "depth": depth}])  # fmt: skip
    projected = compute_projection(point, same)
    return float(projected["projected_speedup"].iloc[0]) if len(projected) else float("nan")
