"""The reproduce stage after robustness: thresholds with a guarantee, and exits under attack.

Per calibration run (seed 0): Learn-then-Test on val (`free-bench calibrate`), the certified threshold
then evaluated on test clean and under every perturbation x severity of the robustness grid (where the
guarantee breaks); and a slowdown attack on test at the run's val operating point (`free-bench attack`).
Work folders live in the cache (a finished one is reused); their tables are copied into
results/<profile>/calibration/<run>/ and results/<profile>/attack/<run>/.
"""

from __future__ import annotations

import json
import logging

from free_bench.pipeline.context import Context
from free_bench.pipeline.plans import copy_file
from free_bench.pipeline.stages import run_names

log = logging.getLogger(__name__)
CALIBRATION_FILES = ("calibration.json", "calibration.parquet", "evaluation.parquet", "manifest.json")
ATTACK_FILES = ("attack.parquet", "attack_samples.parquet", "manifest.json")


def _runs(ctx: Context) -> list[tuple[str, str]]:
    cfg = ctx.settings.reproduce
    return [(n, m) for n, m, r, s in run_names(ctx) if s == cfg.seeds[0] and f"{m}:{r}" in cfg.calibration_runs]


def _grid(ctx: Context) -> tuple[str, ...]:
    from free_bench.data.perturb import PERTURBATIONS

    cfg = ctx.settings.reproduce
    return tuple(f"{p}:{s}" for p in sorted(cfg.perturbations or PERTURBATIONS) for s in cfg.severities)


def guarantees_stage(ctx: Context) -> dict:
    """Calibrate, evaluate under shifts, attack: per calibration run, into results/<profile>/."""
    from free_bench.calibration.run import calibrate_run
    from free_bench.evaluation.attack import attack_run

    cfg = ctx.settings.reproduce
    runs = _runs(ctx)
    if not runs:
        return {"calibrated": {}, "attacked": [], "not_attacked": {}}
    ops = json.loads((ctx.cache / "sweeps.done.json").read_text())["operating_points"]
    # the attack runs at a run's val operating point, which only live runs have; calibration needs none
    unplaced = {n: "no val operating point (not in reproduce.live_runs)" for n, _ in runs if n not in ops}
    for name, why in unplaced.items():
        log.warning("[guarantees] %s calibrated but not attacked: %s", name, why)
    certified = {}
    for name, method in runs:
        exits = ctx.cache / "exits" / name
        work = ctx.cache / "calibration" / name
        if not (work / "calibration.json").is_file():
            calibrate_run(exits, work, method=method, split="val", epsilon=cfg.calibration_epsilon,
                          delta=cfg.calibration_delta, risk=cfg.calibration_risk, data=ctx.data,
                          max_rows=cfg.calibration_rows, test_split="test", test_rows=cfg.robustness_rows,
                          perturbations=_grid(ctx), batch_size=cfg.calibration_batch_size, overwrite=True)  # fmt: skip
        for f in CALIBRATION_FILES:
            if (work / f).is_file():  # no evaluation.parquet when nothing was certified
                copy_file(work / f, ctx.results / "calibration" / name / f)
        certified[name] = json.loads((work / "calibration.json").read_text())["threshold"]
        if name in unplaced:
            continue
        attack = ctx.cache / "attack" / name
        if not (attack / "attack.parquet").is_file():
            attack_run(exits, attack, method=method, split="test", max_rows=cfg.attack_rows, eps=cfg.attack_eps,
                       steps=cfg.attack_steps, threshold=ops[name]["threshold"], data=ctx.data)  # fmt: skip
        for f in ATTACK_FILES:
            copy_file(attack / f, ctx.results / "attack" / name / f)
    return {"calibrated": certified, "attacked": [n for n, _ in runs if n not in unplaced], "not_attacked": unplaced}
