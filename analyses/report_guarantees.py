"""The report's guarantees part: Learn-then-Test thresholds (and where their guarantee breaks under
shift) and the slowdown attack, from results/<profile>/calibration/ and attack/ (`analyses.guarantees`)."""

from __future__ import annotations

from analyses.built import Built
from analyses.figures import save_figure
from analyses.guarantees import (
    compute_attack,
    compute_attack_ci,
    compute_calibration,
    compute_calibration_shifts,
    load_attack,
    load_calibration,
    plot_calibration_shifts,
)


def calibration_part(b: Built) -> None:
    certs, evaluation = load_calibration(b.res.root)
    if certs.empty:
        b.missing["calibration"] = "no calibration/<run>/calibration.json (`free-bench calibrate`)"
        return
    b.tables["calibration"] = compute_calibration(certs, evaluation)
    if evaluation.empty:
        b.missing["calibration_shifts"] = "no certified threshold was evaluated on test (evaluation.parquet)"
        return
    b.tables["calibration_shifts"] = compute_calibration_shifts(evaluation)
    epsilon = float(certs["epsilon"].iloc[0])

    def draw(ax) -> None:
        plot_calibration_shifts(evaluation, ax, epsilon)
        ax.set_title(f"{b.res.profile}: risk of the certified threshold under shift", fontsize="medium")

    b.figures["calibration_shifts"] = save_figure(b.res.root / "figures", "calibration_shifts", draw)[0]


def attack_part(b: Built) -> None:
    attack, samples = load_attack(b.res.root)
    if attack.empty:
        b.missing["attack"] = "no attack/<run>/attack.parquet (`free-bench attack`)"
        return
    b.tables["attack"] = compute_attack(attack)
    if samples.empty:
        b.missing["attack_ci"] = "no attack_samples.parquet: no CI on the share of speedup taken"
        return
    b.tables["attack_ci"] = compute_attack_ci(samples, n_boot=b.n_boot, seed=b.seed)

