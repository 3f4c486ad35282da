"""`analyses.overthinking` on hand-made per-exit tables whose answers can be counted by hand."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from analyses.overthinking import (  # noqa: E402
    compute_overthinking,
    compute_overthinking_by_layer,
    correctness_matrix,
    plot_overthinking,
)

REPO = Path(__file__).resolve().parents[2]


def per_exit(
    acc: dict[str, list[float]], method: str = "free", regime: str = "semi", types=None
) -> pd.DataFrame:
    """acc[question] = accuracies at exit layers 1..L then the final (at layer L)."""
    rows = []
    for i, (q, values) in enumerate(acc.items()):
        depth = len(values) - 1
        for layer, a in enumerate(values, start=1):
            final = layer == depth + 1
            rows.append(
                {
                    "question_id": q,
                    "question_type": types[i] if types else "exist",
                    "layer": depth if final else layer,
                    "exit_kind": "final" if final else "exit",
                    "prediction": "yes",
                    "confidence": 0.5,
                    "accuracy": a,
                    "split": "test",
                    "method": method,
                    "regime": regime,
                }
            )
    return pd.DataFrame(rows)


# 4 questions x 3 exit layers + final (L = 3). Only q1 overthinks (right at layer 1, wrong at the final);
# q2 is right only at the exit at layer 3 = L, which is not *earlier* than the final, so it does not count.
FOUR = {
    "q0": [0.0, 1.0, 1.0, 1.0],  # earliest correct exit 2
    "q1": [1.0, 0.0, 0.0, 0.0],  # overthinks; earliest 1
    "q2": [0.0, 0.0, 1.0, 0.0],  # earliest 3 (exit at L), final wrong
    "q3": [0.0, 0.0, 0.3, 0.0],  # never correct at 1.0; oracle layer = L = 3
}


def test_correctness_matrix_shape_and_values() -> None:
    m = correctness_matrix(per_exit(FOUR))
    assert list(m.columns) == [1, 2, 3, "final"]
    assert m.index.names == ["method", "regime", "question_id"]
    assert m.loc[("free", "semi", "q1")].tolist() == [True, False, False, False]
    assert m.loc[("free", "semi", "q3")].tolist() == [False, False, False, False]
    soft = correctness_matrix(per_exit(FOUR), correct_at=0.3)
    assert bool(soft.loc[("free", "semi", "q3"), 3])


def test_overthinking_rate_and_oracle_counted_by_hand() -> None:
    out = compute_overthinking(per_exit(FOUR), n_boot=200)
    assert len(out) == 1
    row = out.iloc[0]
    assert row["n"] == 4 and row["depth"] == 3
    assert row["overthinking_rate"] == pytest.approx(0.25)
    assert row["final_correct"] == pytest.approx(0.25)
    assert row["final_accuracy"] == pytest.approx(0.25)
    assert row["any_exit_correct"] == pytest.approx(0.75)
    assert row["oracle_accuracy"] == pytest.approx(0.75)
    # earliest correct exit: 2, 1, 3, and 3 (= L, nothing correct) -> mean 9/4
    assert row["oracle_mean_exit_layer"] == pytest.approx(9 / 4)
    assert row["oracle_expected_speedup"] == pytest.approx(3 / (9 / 4))
    assert row["overthinking_rate_lo"] <= 0.25 <= row["overthinking_rate_hi"]


def test_oracle_counts_a_final_only_correct_sample_at_depth() -> None:
    out = compute_overthinking(per_exit({"a": [0.0, 0.0, 1.0], "b": [1.0, 0.0, 1.0]}), n_boot=10).iloc[0]
    assert out["oracle_accuracy"] == pytest.approx(1.0)
    assert out["any_exit_correct"] == pytest.approx(0.5)
    assert out["overthinking_rate"] == 0.0
    assert out["oracle_mean_exit_layer"] == pytest.approx((2 + 1) / 2)


def test_groups_by_method_regime_and_by_question_type() -> None:
    other = per_exit({"q0": [1.0, 1.0, 1.0, 0.0], "q1": [1.0, 1.0, 1.0, 1.0]}, method="deebert")
    df = pd.concat([per_exit(FOUR, types=["color", "color", "count", "count"]), other])
    out = compute_overthinking(df, n_boot=50).set_index("method")
    assert out.loc["deebert", "overthinking_rate"] == pytest.approx(0.5)
    assert out.loc["free", "overthinking_rate"] == pytest.approx(0.25)
    by_type = compute_overthinking(df, by="question_type", n_boot=50).set_index(["method", "question_type"])
    assert by_type.loc[("free", "color"), "overthinking_rate"] == pytest.approx(0.5)
    assert by_type.loc[("free", "count"), "overthinking_rate"] == 0.0
    assert by_type.loc[("free", "color"), "n"] == 2


def test_by_layer_rates_counted_by_hand() -> None:
    out = compute_overthinking_by_layer(per_exit(FOUR)).set_index("layer")
    assert list(out.index) == [1, 2, 3]
    # final correct only for q0. layer 1: q1 right/final wrong; q0 wrong/final right.
    assert out.loc[1, "right_here_wrong_at_end"] == pytest.approx(0.25)
    assert out.loc[1, "wrong_here_right_at_end"] == pytest.approx(0.25)
    assert out.loc[2, "right_here_wrong_at_end"] == 0.0
    assert out.loc[3, "right_here_wrong_at_end"] == pytest.approx(0.25)  # q2 at the exit at L
    assert out.loc[3, "accuracy"] == pytest.approx((1.0 + 0.0 + 1.0 + 0.3) / 4)
    assert out.loc[3, "correct_rate"] == pytest.approx(0.5)


def test_bootstrap_ci_brackets_estimate_is_seeded_and_fast() -> None:
    rng = np.random.default_rng(3)
    acc = {f"q{i}": list(rng.choice([0.0, 1.0], size=4)) for i in range(4000)}
    df = per_exit(acc)
    start = time.perf_counter()
    a = compute_overthinking(df, n_boot=1000, seed=7).iloc[0]
    assert time.perf_counter() - start < 2.0  # pivot + 1000 resamples of 4000 questions
    b = compute_overthinking(df, n_boot=1000, seed=7).iloc[0]
    assert a["overthinking_rate_lo"] < a["overthinking_rate"] < a["overthinking_rate_hi"]
    assert a["overthinking_rate_hi"] - a["overthinking_rate_lo"] < 0.05
    assert (a["overthinking_rate_lo"], a["overthinking_rate_hi"]) == (
        b["overthinking_rate_lo"],
        b["overthinking_rate_hi"],
    )


def test_sample_counts_rows_sum_to_n() -> None:
    from analyses.bootstrap import sample_counts

    counts = sample_counts(50, 30, np.random.default_rng(0))
    assert counts.shape == (30, 50)
    assert (counts.sum(axis=1) == 50).all()
    with pytest.raises(ValueError, match="n_boot"):
        sample_counts(50, 0, np.random.default_rng(0))


@pytest.mark.parametrize("column", ["accuracy", "exit_kind", "question_id", "method"])
def test_missing_column_is_named(column: str) -> None:
    with pytest.raises(ValueError, match=column):
        compute_overthinking(per_exit(FOUR).drop(columns=column))


def test_malformed_inputs_are_refused() -> None:
    df = per_exit(FOUR)
    with pytest.raises(ValueError, match="empty"):
        compute_overthinking(df.iloc[0:0])
    with pytest.raises(ValueError, match="duplicate"):
        compute_overthinking(pd.concat([df, df.iloc[:1]]))
    with pytest.raises(ValueError, match="final"):
        compute_overthinking(df[df["exit_kind"] != "final"])
    with pytest.raises(ValueError, match="lack rows"):
        compute_overthinking(df.drop(index=0))
    with pytest.raises(ValueError, match="exit_kind"):
        compute_overthinking(df.assign(exit_kind="head"))
    with pytest.raises(ValueError, match="correct_at"):
        compute_overthinking(df, correct_at=0.0)


def test_plot_overthinking_one_line_per_method_regime() -> None:
    df = pd.concat([per_exit(FOUR), per_exit(FOUR, regime="unsupervised"), per_exit(FOUR, method="pabee")])
    fig, ax = plt.subplots()
    out = plot_overthinking(compute_overthinking_by_layer(df), ax)
    assert out is ax
    assert len(ax.get_lines()) == 3
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {
        "free-semi",
        "free-unsupervised",
        "pabee-semi",
    }
    plt.close(fig)


def test_importing_analyses_does_not_import_torch() -> None:
    code = "import sys, analyses.overthinking, analyses.midcrisis; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
