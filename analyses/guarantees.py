"""Thresholds with a guarantee and exits under attack, from the tables `free-bench calibrate` and
`free-bench attack` write (results/<profile>/calibration/<run>/, attack/<run>/).

Calibration: per run, the Learn-then-Test threshold certified on val, its risk and expected speedup on
test, and its risk under every perturbation x severity: where the guarantee, made on clean data, breaks.
Attack: per run, the speedups and accuracy before and after a slowdown attack, and the share of the
speedup's gain an adversary takes away, with a paired bootstrap CI over the attacked questions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from analyses.bootstrap import percentile_interval, sample_counts


def load_calibration(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per calibrated run from its calibration.json, the runs' evaluation.parquet rows)."""
    certs, evals = [], []
    for f in sorted(Path(root).glob("calibration/*/calibration.json")):
        c = json.loads(f.read_text())
        run = f.parent.name
        certs.append({"run": run, "method": c["method"], "regime": c.get("regime", "none"), "risk_kind": c["risk"],
                      "epsilon": c["epsilon"], "delta": c["delta"], "n": c["n"], "threshold": c["threshold"],
                      "calibration_risk": c.get("calibration_risk"),
                      "calibration_expected_speedup": c.get("calibration_expected_speedup")})  # fmt: skip
        if (f.parent / "evaluation.parquet").is_file():
            evals.append(pd.read_parquet(f.parent / "evaluation.parquet").assign(run=run))
    return pd.DataFrame(certs), (pd.concat(evals, ignore_index=True) if evals else pd.DataFrame())


def compute_calibration(certs: pd.DataFrame, evaluation: pd.DataFrame) -> pd.DataFrame:
    """Per run: the certificate, then on clean test its risk (and whether it stays <= epsilon), accuracy
    and expected speedup, and how many perturbation x severity cells break it (risk > epsilon)."""
    if certs.empty:
        return pd.DataFrame()
    rows = []
    for c in certs.to_dict("records"):
        ev = evaluation[evaluation["run"] == c["run"]] if len(evaluation) else evaluation
        clean = ev[ev["perturbation"] == "none"] if len(ev) else ev
        shifted = ev[ev["perturbation"] != "none"] if len(ev) else ev
        t = clean.iloc[0] if len(clean) else None
        worst = shifted.loc[shifted["risk"].idxmax()] if len(shifted) else None
        nan = float("nan")
        rows.append({**c,
                     "test_risk": t["risk"] if t is not None else nan,
                     "test_holds": bool(t["holds"]) if t is not None else None,
                     "test_value": t["value"] if t is not None else nan,
                     "test_full_value": t["full_value"] if t is not None else nan,
                     "test_expected_speedup": t["expected_speedup"] if t is not None else nan,
                     "test_measured_speedup": t.get("measured_speedup", nan) if t is not None else nan,
                     "timer": t.get("timer", "none") if t is not None else "none",
                     "shifts_broken": int((shifted["risk"] > c["epsilon"]).sum()) if len(shifted) else 0,
                     "shifts": len(shifted),
                     "worst_shift": f"{worst['perturbation']}:{worst['severity']}" if worst is not None else "",
                     "worst_shift_risk": worst["risk"] if worst is not None else nan})  # fmt: skip
    return pd.DataFrame(rows)


def compute_calibration_shifts(evaluation: pd.DataFrame) -> pd.DataFrame:
    """Risk of each run's certified threshold per input (clean test and every perturbation x severity):
    one row per run, one column per `perturbation:severity`."""
    if evaluation.empty:
        return pd.DataFrame()
    shift = np.where(evaluation["perturbation"] == "none", "clean",
                     evaluation["perturbation"] + ":" + evaluation["severity"].astype(str))  # fmt: skip
    wide = evaluation.assign(shift=shift).pivot_table(index=["run", "method"], columns="shift", values="risk")
    cols = ["clean"] + sorted(c for c in wide.columns if c != "clean")
    return wide[cols].reset_index()


def plot_calibration_shifts(evaluation: pd.DataFrame, ax, epsilon: float) -> None:
    """The worst risk over perturbations at each severity, per run, against the certified level."""
    shifted = evaluation[evaluation["perturbation"] != "none"]
    for run, g in shifted.groupby("run"):
        worst = g.groupby("severity")["risk"].max()
        clean = evaluation[(evaluation["run"] == run) & (evaluation["perturbation"] == "none")]["risk"]
        xs = [0, *worst.index.tolist()]
        ys = [clean.iloc[0] if len(clean) else np.nan, *worst.tolist()]
        ax.plot(xs, ys, marker="o", label=run)
    ax.axhline(epsilon, color="black", linestyle="--", linewidth=1, label=f"epsilon = {epsilon:g}")
    ax.set_xlabel("severity (0: clean test)")
    ax.set_ylabel("risk, worst perturbation")
    ax.legend(fontsize=7)


def load_attack(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(attack.parquet rows, attack_samples.parquet rows) of every attacked run, with `run`."""
    rows, samples = [], []
    for f in sorted(Path(root).glob("attack/*/attack.parquet")):
        rows.append(pd.read_parquet(f).assign(run=f.parent.name))
        if (f.parent / "attack_samples.parquet").is_file():
            samples.append(pd.read_parquet(f.parent / "attack_samples.parquet").assign(run=f.parent.name))
    cat = lambda xs: pd.concat(xs, ignore_index=True) if xs else pd.DataFrame()  # noqa: E731
    return cat(rows), cat(samples)


ATTACK_COLS = ["accuracy", "full_accuracy", "mean_exit_layer", "expected_speedup", "measured_speedup"]


def compute_attack(attack: pd.DataFrame) -> pd.DataFrame:
    """Per run: clean and attacked accuracy, mean exit layer, expected and measured speedup side by side,
    and `speedup_taken` (the share of the clean expected speedup's gain the attack removes)."""
    if attack.empty:
        return pd.DataFrame()
    wide = attack.pivot_table(index=["run", "method"], columns="condition", values=ATTACK_COLS)
    wide.columns = [f"{cond}_{col}" for col, cond in wide.columns]
    wide = wide.reset_index()
    clean, hit = wide["clean_expected_speedup"], wide["attacked_expected_speedup"]
    wide["speedup_taken"] = np.where(clean > 1, (clean - hit) / (clean - 1), np.nan)
    meta = attack.drop_duplicates("run").set_index("run")
    for col in ("threshold", "eps", "steps", "n_samples", "timer"):
        if col in meta.columns:
            wide[col] = wide["run"].map(meta[col])
    return wide


def compute_attack_ci(samples: pd.DataFrame, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Per run, a percentile CI of `speedup_taken` over the attacked questions (clean and attacked rows of a
    question drawn together), and of its difference to FREE's on the same questions (one count matrix
    for every run: the resamples are paired across runs where they share sample ids)."""
    if samples.empty:
        return pd.DataFrame()
    ids = sorted(set(samples["sample_id"].astype(str)))
    counts = sample_counts(len(ids), n_boot, np.random.default_rng(seed))  # (n_boot, n)
    taken = {}
    for run, g in samples.groupby("run"):
        cost = g.pivot_table(index=g["sample_id"].astype(str), columns="condition", values=["cost_layers", "full_cost_layers"])
        cost = cost.reindex(ids).fillna(0.0)  # questions this run did not attack weigh nothing
        sums = {k: counts @ cost[k].to_numpy() for k in ("cost_layers", "full_cost_layers")}  # (n_boot, 2)
        cols = list(cost["cost_layers"].columns)
        clean = sums["full_cost_layers"][:, cols.index("clean")] / sums["cost_layers"][:, cols.index("clean")]
        hit = sums["full_cost_layers"][:, cols.index("attacked")] / sums["cost_layers"][:, cols.index("attacked")]
        with np.errstate(invalid="ignore", divide="ignore"):
            taken[run] = np.where(clean > 1, (clean - hit) / (clean - 1), np.nan)
    free = next((r for r in taken if r.startswith("free")), None)
    rows = []
    for run, t in taken.items():
        lo, hi = percentile_interval(t[:, None], level)
        row = {"run": run, "speedup_taken_lo": float(lo[0]), "speedup_taken_hi": float(hi[0])}
        if free is not None and run != free:
            dlo, dhi = percentile_interval((t - taken[free])[:, None], level)
            row |= {"minus_free_lo": float(dlo[0]), "minus_free_hi": float(dhi[0])}
        rows.append(row)
    return pd.DataFrame(rows)


def verdict_compute_robustness(attack: pd.DataFrame | None, ci: pd.DataFrame | None,
                               missing: str | None = None) -> tuple[str, str]:  # fmt: skip
    """FREE's speedup under a slowdown attack against the baselines': "holds" when, for every baseline,
    the CI of (its speedup_taken - FREE's) lies above 0; "does not hold" when one lies below 0; else
    "within noise". Without an attack table: "not measured"."""
    if attack is None or attack.empty:
        return "not measured", f"No slowdown attack: {missing or 'no attack tables'}."
    free = attack[attack["run"].str.startswith("free")]
    if free.empty or len(attack) < 2:
        return "not measured", "The attack tables lack FREE or a baseline."
    shown = "; ".join(f"{r.run} {r.clean_expected_speedup:.2f}x -> {r.attacked_expected_speedup:.2f}x "
                      f"({100 * r.speedup_taken:.0f} % of the gain taken)" for r in attack.itertuples())  # fmt: skip
    if ci is None or ci.empty or "minus_free_lo" not in ci.columns:
        return "inconclusive (no per-sample data)", f"Expected speedup clean -> attacked: {shown}."
    others = ci[~ci["run"].str.startswith("free")]
    if others.empty or others[["minus_free_lo", "minus_free_hi"]].isna().any().any():
        return "inconclusive", (f"Expected speedup clean -> attacked: {shown}. A run without a speedup to take "
                                "(clean expected speedup <= 1x) or without a CI gives no comparison.")  # fmt: skip
    if (others["minus_free_lo"] > 0).all():
        verdict = "holds"
    elif (others["minus_free_hi"] < 0).any():
        verdict = "does not hold"
    else:
        verdict = "within noise"
    return verdict, (f"Compute under a slowdown attack (expected speedup, clean -> attacked): {shown}. "
                     "The verdict compares each baseline's share taken with FREE's, paired 95 % CIs over the "
                     "attacked questions.")  # fmt: skip
