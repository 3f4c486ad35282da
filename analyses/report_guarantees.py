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


def guarantees_md(b: Built, md_table, figure, missing) -> list[str]:
    """Markdown of both parts (the renderer's table, figure and missing helpers passed in)."""
    out = ["### Thresholds with a guarantee (Learn-then-Test)", ""]
    if "calibration" in b.tables:
        c = b.tables["calibration"]
        first = c.iloc[0]
        out += [
            f"Each run's threshold certified on val by fixed-sequence testing with Hoeffding-Bentkus p-values "
            f"(`free-bench calibrate`): risk `{first['risk_kind']}` <= {first['epsilon']:g} with probability >= "
            f"{1 - first['delta']:g}. On test and under every perturbation x severity the same threshold's "
            "risk is measured again: a guarantee made on clean val promises nothing under shift, and "
            "`shifts_broken` counts where it fails.",
            "",
        ] + figure(b, "calibration_shifts", "calibration under shift") + [md_table(c), ""]
        if "calibration_shifts" in b.tables:
            out += ["Risk of the certified threshold per input (wide table in `tables/calibration_shifts.csv`).", ""]
    else:
        out += missing(b, "calibration") or ["**missing**", ""]
    out += ["### Slowdown attack", ""]
    if "attack" in b.tables:
        out += [
            "Projected gradient steps on the pixels within an L-inf budget, lowering every exit's confidence "
            "by the method's own rule (`free-bench attack`), at each run's val operating point; "
            "`speedup_taken` is the share of the clean expected speedup's gain the attack removes.",
            "",
            md_table(b.tables["attack"]),
            "",
        ]
        if "attack_ci" in b.tables:
            out += ["95 % CIs of `speedup_taken`, and of each baseline's minus FREE's on the same questions:", "",
                    md_table(b.tables["attack_ci"]), ""]  # fmt: skip
    else:
        out += missing(b, "attack") or ["**missing**", ""]
    return out
