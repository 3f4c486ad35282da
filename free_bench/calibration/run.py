"""`free-bench calibrate`: a trained exit method's threshold certified by Learn-then-Test on one split,
then (optionally) what that threshold's risk becomes on another split and under input perturbations,
the shifts against which a guarantee made on clean calibration data promises nothing."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import datasets
import pandas as pd

from free_bench.calibration.ltt import certify
from free_bench.calibration.risk import RISKS, losses, timed_speedup
from free_bench.core.errors import FreeBenchError, check_choice
from free_bench.core.records import Manifest, atomic_dir, write_json, write_parquet
from free_bench.core.runs import check_writable, writer_lock
from free_bench.data.perturb import apply_to_row, parse_spec
from free_bench.evaluation.metrics.vqa import SCORERS
from free_bench.evaluation.trained import open_exits, run_data, run_record
from free_bench.methods import rules

log = logging.getLogger(__name__)
GRID = 11  # default thresholds per rule (`rules.thresholds_for`)


def perturbed(rows: datasets.Dataset, spec: str, split: str) -> datasets.Dataset:
    """The rows with one perturbation applied (seeded per row by its question id)."""
    name, severity = parse_spec(spec)
    label = hashlib.sha256(f"calibrate|{split}|{len(rows)}|{spec}".encode()).hexdigest()[:32]
    return rows.map(lambda r: apply_to_row(r, name, severity), new_fingerprint=label, keep_in_memory=True,
                    desc=f"perturb {spec}")  # fmt: skip


def _first(rows: datasets.Dataset, max_rows: int | None) -> datasets.Dataset:
    rows = rows.filter(bool, input_columns="question", keep_in_memory=True)
    return rows.select(range(min(max_rows, len(rows)))) if max_rows else rows


def calibrate_run(exits: str | Path, out: str | Path, *, method: str, split: str = "val", epsilon: float = 0.1,
                  delta: float = 0.1, risk: str = "consistency", thresholds: list[float] | None = None,
                  data: str | Path | None = None, max_rows: int | None = None, test_split: str | None = None,
                  test_rows: int | None = None, perturbations: tuple[str, ...] = (), scorer: str = "lavis", batch_size: int = 16,
                  device: str | None = None, overwrite: bool = False, progress: bool = True) -> Path:  # fmt: skip
    """Certify a threshold of the exits in `exits` on `split`; write into `out` (atomically, the whole
    folder or nothing): `calibration.json` (the certificate: threshold or null, n, epsilon, delta, each
    threshold's risk and p-value), `calibration.parquet` (per threshold), `calibration_samples.parquet`
    (per threshold and sample) and, with `test_split`, `evaluation.parquet`: the certified threshold's
    risk, accuracy and expected speedup on its first `test_rows` (default `max_rows`) questions, clean
    and under each of `perturbations` (NAME:SEVERITY)."""
    exits, out = Path(exits), Path(out)
    check_choice("risk", risk, RISKS)
    check_choice("scorer", scorer, SCORERS)
    for name, v in (("epsilon", epsilon), ("delta", delta)):
        if not 0.0 < v < 1.0:
            raise FreeBenchError(f"--{name} must lie in (0, 1), got {v}")
    for spec in perturbations:
        parse_spec(spec)
    for flag, n in (("--max-rows", max_rows), ("--test-rows", test_rows)):
        if n is not None and n < 1:
            raise FreeBenchError(f"{flag} must be >= 1, got {n}")
    record = run_record(exits)
    trained = record["exits"].get("method")
    if trained is not None and trained != method:
        raise FreeBenchError(f"--method {method} but {exits} holds {trained} exits")
    source = run_data(record, data, progress=progress)
    rows = _first(source.split(split, need="calibration"), max_rows)
    test = _first(source.split(test_split, need="evaluating the certified threshold"), test_rows or max_rows) if (
        test_split) else None
    check_writable(out)
    if out.exists() and any(out.iterdir()):  # replaced whole at the end, and only by a finished run
        if not overwrite:
            raise FreeBenchError(f"{out} is not empty; pass --overwrite to replace it, or choose another --out")
        if not (out / "calibration.json").is_file():
            raise FreeBenchError(f"{out} is not a calibration folder (no calibration.json); it is left alone")
    m = open_exits(exits, device=device, record=record)
    grid = thresholds if thresholds else rules.thresholds_for(m.rule, list(m.layers), GRID)
    ordered = rules.safest_first(m.rule, grid)
    settings = {"exits": str(exits.resolve()), "method": method, "regime": record.get("regime", "none"),
                "split": split, "epsilon": epsilon, "delta": delta, "risk": risk, "scorer": scorer,
                "thresholds": ordered, "max_rows": max_rows, "test_split": test_split, "test_rows": test_rows,
                "perturbations": list(perturbations), "data": source.ref, "dataset_hash": source.hash,
                "backbone": m.backbone.spec, "prompts": m.backbone.prompts}  # fmt: skip
    manifest = Manifest("calibrate", settings, seeds=[], dataset_hash=source.hash)
    per = losses(m, rows, ordered, risk=risk, scorer=scorer, batch_size=batch_size, progress=progress)
    matrix = per.pivot(index="threshold", columns="sample_id", values="loss").loc[ordered]  # (T, n)
    cert = certify(ordered, matrix.to_numpy(), epsilon=epsilon, delta=delta)
    table = _per_threshold(per, ordered).assign(p_value=list(cert.p_values),
                                                tested=[i < cert.tested for i in range(len(ordered))])  # fmt: skip
    chosen = None if cert.threshold is None else table[table["threshold"] == cert.threshold].iloc[0]
    summary = {**settings, **cert.as_dict(), "rule": m.rule,
               "calibration_risk": None if chosen is None else float(chosen["risk"]),
               "calibration_expected_speedup": None if chosen is None else float(chosen["expected_speedup"])}  # fmt: skip
    evaluation = None
    if test is not None and cert.threshold is not None:
        evaluation = _evaluate(m, test, test_split, cert.threshold, perturbations, risk, scorer, batch_size,
                               epsilon, progress)  # fmt: skip
    with writer_lock(out), atomic_dir(out) as tmp:
        write_json(summary, tmp / "calibration.json")
        write_parquet(table.assign(method=method, risk_kind=risk, split=split), tmp / "calibration.parquet")
        write_parquet(per.assign(method=method, risk_kind=risk, split=split), tmp / "calibration_samples.parquet")
        if evaluation is not None:
            write_parquet(evaluation.assign(method=method, risk_kind=risk), tmp / "evaluation.parquet")
        manifest.write(tmp / "manifest.json")
    log.info("%s: threshold %s certified (risk <= %g with probability >= %g, n = %d)\n%s", method,
             cert.threshold, epsilon, 1 - delta, cert.n, table.round(4).to_string(index=False))  # fmt: skip
    return out


def _per_threshold(per: pd.DataFrame, ordered: list[float]) -> pd.DataFrame:
    g = per.groupby("threshold", sort=False)
    table = pd.DataFrame({
        "risk": g["loss"].mean(), "n": g["loss"].size(), "value": g["value"].mean(), "full_value": g["full_value"].mean(),
        "mean_exit_layer": g["exit_layer_mean"].mean(), "expected_speedup": g["expected_speedup"].first(),
    }).reindex(ordered)  # fmt: skip
    return table.rename_axis("threshold").reset_index()


def _evaluate(m, test: datasets.Dataset, split: str, threshold: float, perturbations: tuple[str, ...], risk: str,
              scorer: str, batch_size: int, epsilon: float, progress: bool) -> pd.DataFrame:  # fmt: skip
    """The certified threshold on `split`, clean and under each perturbation: risk against the full model on
    the same (perturbed) inputs, accuracies, mean exit layer, expected speedup (and on clean inputs the
    measured one, at the decode batch size); `holds` where risk <= epsilon."""
    rows = []
    for spec in ("none", *perturbations):
        data = test if spec == "none" else perturbed(test, spec, split)
        per = losses(m, data, [threshold], risk=risk, scorer=scorer, batch_size=batch_size, progress=progress)
        name, severity = ("none", 0) if spec == "none" else parse_spec(spec)
        # on clean test also timed: the certified threshold's measured speedup beside its layer count
        measured, timer = timed_speedup(m, data, threshold, batch_size=batch_size) if spec == "none" else (
            float("nan"), "none")
        rows.append({"split": split, "perturbation": name, "severity": severity, "threshold": threshold,
                     "n": len(per), "risk": per["loss"].mean(), "holds": bool(per["loss"].mean() <= epsilon),
                     "value": per["value"].mean(), "full_value": per["full_value"].mean(),
                     "mean_exit_layer": per["exit_layer_mean"].mean(),
                     "expected_speedup": per["expected_speedup"].iloc[0], "measured_speedup": measured,
                     "timer": timer})  # fmt: skip
    return pd.DataFrame(rows)
