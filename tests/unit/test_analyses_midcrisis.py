"""`analyses.midcrisis` on hand-made curves with dips placed on purpose."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from analyses.midcrisis import compute_dip, compute_dip_ci, compute_layer_curves, plot_midcrisis  # noqa: E402


def curve(
    acc: list[float], method: str = "free", regime: str = "semi", layers: list[int] | None = None
) -> pd.DataFrame:
    layers = layers or list(range(1, len(acc) + 1))
    return pd.DataFrame({"method": method, "regime": regime, "layer": layers, "accuracy": acc})


def per_exit(acc: np.ndarray, method: str = "free", regime: str = "semi") -> pd.DataFrame:
    """acc: (questions, exit layers 1..L); a final row at L with accuracy 1 is added per question."""
    n, depth = acc.shape
    rows = [
        {"question_id": f"q{i}", "layer": layer, "exit_kind": "exit", "accuracy": float(acc[i, layer - 1])}
        for i in range(n)
        for layer in range(1, depth + 1)
    ] + [{"question_id": f"q{i}", "layer": depth, "exit_kind": "final", "accuracy": 1.0} for i in range(n)]
    return pd.DataFrame(rows).assign(method=method, regime=regime, question_type="exist")


def test_dip_placed_at_a_middle_layer() -> None:
    # L = 8, middle layers: 2 < l <= 6 -> 3..6. Drops of 0.3 at layer 2 and layer 7 are outside the middle.
    acc = [0.5, 0.2, 0.7, 0.5, 0.75, 0.8, 0.5, 0.9]
    out = compute_dip(curve(acc)).iloc[0]
    assert out["dip"] == pytest.approx(0.2)
    assert out["dip_layer"] == 4
    assert out["peak_layer"] == 3
    assert (out["depth"], out["middle_first"], out["middle_last"]) == (8, 3, 6)


def test_dip_reference_may_lie_before_the_middle() -> None:
    # the best shallower layer is layer 1 (0.9), outside the middle (3..6): drops 0.2 at 3 and 0.3 at 4.
    out = compute_dip(curve([0.9, 0.5, 0.7, 0.6, 0.95, 0.96, 0.97, 0.98])).iloc[0]
    assert out["dip"] == pytest.approx(0.3)
    assert (out["dip_layer"], out["peak_layer"]) == (4, 1)


def test_monotone_and_flat_curves_have_no_dip() -> None:
    df = pd.concat([curve([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]), curve([0.3] * 8, method="flat")])
    out = compute_dip(df)
    assert out["dip"].tolist() == [0.0, 0.0]
    assert out["dip_layer"].isna().all() and out["peak_layer"].isna().all()


def test_middle_rule_on_every_second_layer() -> None:
    # layers 2..24 (L = 24), middle = (0.25, 0.75) -> 6 < l <= 18 -> 8..18
    layers = list(range(2, 25, 2))
    acc = [0.8] * 12
    acc[layers.index(6)] = 0.1  # layer 6 is not middle
    acc[layers.index(18)] = 0.7  # layer 18 is
    out = compute_dip(curve(acc, layers=layers)).iloc[0]
    assert (out["middle_first"], out["middle_last"]) == (8, 18)
    assert out["dip"] == pytest.approx(0.1) and out["dip_layer"] == 18


def test_no_middle_layer_gives_nan_dip() -> None:
    out = compute_dip(curve([0.5, 0.4]), middle=(0.6, 0.9)).iloc[0]
    assert np.isnan(out["dip"]) and np.isnan(out["middle_first"])


def test_layer_curves_with_lens_and_cis() -> None:
    acc = np.array([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.3, 1.0]])
    lens = pd.DataFrame({"layer": [1, 2, 3], "accuracy": [0.2, 0.5, 0.9]})
    out = compute_layer_curves(per_exit(acc), lens=lens, n_boot=500, seed=1)
    assert list(out.columns) == ["method", "regime", "layer", "accuracy", "accuracy_lo", "accuracy_hi"]
    free = out[out["method"] == "free"].set_index("layer")
    assert free["accuracy"].tolist() == pytest.approx([0.75, 1.3 / 4, 1.0])
    assert (free["accuracy_lo"] <= free["accuracy"]).all() and (free["accuracy"] <= free["accuracy_hi"]).all()
    assert free.loc[3, "accuracy_lo"] == free.loc[3, "accuracy_hi"] == 1.0  # no variance, no width
    assert free.loc[1, "accuracy_lo"] < free.loc[1, "accuracy_hi"]
    lens_rows = out[out["method"] == "logit_lens"]
    assert set(lens_rows["regime"]) == {"none"} and lens_rows["accuracy_lo"].isna().all()
    assert lens_rows["accuracy"].tolist() == [0.2, 0.5, 0.9]


def test_dip_ci_brackets_point_and_matches_compute_dip() -> None:
    rng = np.random.default_rng(0)
    depth, n = 8, 2000
    p = np.array([0.5, 0.55, 0.7, 0.5, 0.75, 0.8, 0.85, 0.9])  # dip of 0.2 at layer 4
    acc = (rng.random((n, depth)) < p).astype(float)
    df = per_exit(acc)
    ci = compute_dip_ci(df, n_boot=500, seed=2).iloc[0]
    point = compute_dip(compute_layer_curves(df, n_boot=10)).iloc[0]
    assert ci["dip"] == pytest.approx(point["dip"])
    assert ci["dip_lo"] <= ci["dip"] <= ci["dip_hi"]
    assert 0.1 < ci["dip_lo"] and ci["dip_hi"] < 0.3


def test_monotone_per_question_data_has_zero_dip_ci() -> None:
    acc = np.tile([0.0, 0.0, 1.0, 1.0], (5, 1))  # every question: wrong, wrong, right, right
    ci = compute_dip_ci(per_exit(acc), n_boot=100).iloc[0]
    assert (ci["dip"], ci["dip_lo"], ci["dip_hi"]) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("column", ["layer", "accuracy", "regime"])
def test_missing_curve_column_is_named(column: str) -> None:
    with pytest.raises(ValueError, match=column):
        compute_dip(curve([0.1, 0.2, 0.3]).drop(columns=column))


def test_malformed_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        compute_dip(curve([0.1]).iloc[0:0])
    with pytest.raises(ValueError, match="several rows"):
        compute_dip(curve([0.1, 0.2], layers=[1, 1]))
    with pytest.raises(ValueError, match="middle"):
        compute_dip(curve([0.1, 0.2]), middle=(0.8, 0.2))
    with pytest.raises(ValueError, match="lens is missing column"):
        compute_layer_curves(per_exit(np.ones((2, 3))), lens=pd.DataFrame({"layer": [1]}))
    with pytest.raises(ValueError, match="question_id"):
        compute_layer_curves(per_exit(np.ones((2, 3))).drop(columns="question_id"))
    with pytest.raises(ValueError, match="no exit_kind == 'exit'"):
        df = per_exit(np.ones((2, 3)))
        compute_layer_curves(df[df["exit_kind"] == "final"])


def test_plot_midcrisis_lines_dashes_and_bands() -> None:
    a = per_exit(np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]))
    b = per_exit(np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]), method="deebert")
    lens = pd.DataFrame({"layer": [1, 2, 3], "accuracy": [0.2, 0.5, 0.9]})
    curves = compute_layer_curves(pd.concat([a, b]), lens=lens, n_boot=50)
    fig, ax = plt.subplots()
    assert plot_midcrisis(curves, ax) is ax
    lines = ax.get_lines()
    assert len(lines) == 3
    assert [ln.get_linestyle() for ln in lines].count("--") == 1
    assert len(ax.collections) == 2  # CI bands for the two methods, none for the lens
    plt.close(fig)
