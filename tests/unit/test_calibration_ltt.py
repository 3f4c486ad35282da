"""Learn-then-Test: Hoeffding-Bentkus p-values and fixed-sequence testing, checked on synthetic risks
whose truth is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from free_bench.calibration import certify, hb_p_value, ltt_threshold
from free_bench.calibration.ltt import binom_cdf
from free_bench.core.errors import FreeBenchError

TRUE_RISK = np.linspace(0.0, 0.3, 31)  # threshold j's risk, safest (j = 0) to most aggressive


def _draw(rng: np.random.Generator, n: int) -> np.ndarray:
    """(31, n) nested 0/1 losses: sample i is lost at every threshold whose risk exceeds its u_i, as an
    exit that errs on a sample keeps erring when it exits earlier still."""
    u = rng.random(n)
    return (u[None, :] < TRUE_RISK[:, None]).astype(np.float64)


def test_binomial_tail_and_p_values_against_direct_sums() -> None:
    for n, p, k in [(10, 0.3, 2), (40, 0.1, 0), (40, 0.1, 40), (25, 0.5, 12)]:
        direct = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))
        assert binom_cdf(k, n, p) == pytest.approx(direct, rel=1e-9)
    # no loss in 100 samples, epsilon 0.1: Hoeffding's (0.9)^100 beats Bentkus' e (0.9)^100
    assert hb_p_value(0.0, 100, 0.1) == pytest.approx(0.9**100, rel=1e-9)
    assert hb_p_value(0.1, 100, 0.1) == 1.0  # at epsilon: no evidence at all
    assert hb_p_value(0.05, 400, 0.1) < hb_p_value(0.05, 100, 0.1) < hb_p_value(0.08, 100, 0.1)


def test_the_guarantee_holds_over_many_draws() -> None:
    """P(the certified threshold's true risk > epsilon) <= delta, estimated over 1000 calibrations."""
    rng, epsilon, delta, draws = np.random.default_rng(0), 0.1, 0.1, 1000
    violations = 0
    for _ in range(draws):
        chosen = ltt_threshold(list(range(31)), _draw(rng, 200), epsilon=epsilon, delta=delta)
        violations += chosen is not None and TRUE_RISK[int(chosen)] > epsilon
    assert violations / draws <= delta  # the bound; Hoeffding-Bentkus sits well inside it


def test_it_is_not_trivially_conservative() -> None:
    """With 2000 samples the certified risk comes close to epsilon: most draws certify a threshold
    whose true risk is within 3 points of 0.1 (the best allowed is exactly 0.1)."""
    rng = np.random.default_rng(1)
    risks = []
    for _ in range(200):
        chosen = ltt_threshold(list(range(31)), _draw(rng, 2000), epsilon=0.1, delta=0.1)
        assert chosen is not None
        risks.append(TRUE_RISK[int(chosen)])
    assert np.mean(np.array(risks) >= 0.07) >= 0.9


def test_fixed_sequence_stops_at_the_first_threshold_not_certified() -> None:
    losses = np.array([[0.0] * 100, [1.0] * 100, [0.0] * 100])  # the middle one fails: the last is never tested
    cert = certify([0.9, 0.8, 0.7], losses, epsilon=0.1, delta=0.1)
    assert cert.threshold == 0.9 and cert.tested == 2 and cert.n == 100
    assert cert.risks == (0.0, 1.0, 0.0) and cert.p_values[1] == 1.0
    assert ltt_threshold([0.9], np.ones((1, 50)), epsilon=0.1, delta=0.1) is None


@pytest.mark.parametrize(
    ("thresholds", "losses", "kw", "match"),
    [
        ([0.9, 0.8], np.zeros((3, 5)), {}, r"shape \(len\(thresholds\), n\) = \(2, n\)"),
        ([0.9], np.full((1, 5), 1.5), {}, r"in \[0, 1\]"),
        ([0.9], np.zeros((1, 0)), {}, "no calibration samples"),
        ([0.9], np.zeros((1, 5)), {"epsilon": 0.0}, r"epsilon must lie in \(0, 1\)"),
        ([0.9], np.zeros((1, 5)), {"delta": 1.0}, r"delta must lie in \(0, 1\)"),
    ],
)
def test_bad_input_is_named(thresholds, losses, kw, match) -> None:
    with pytest.raises(FreeBenchError, match=match):
        ltt_threshold(thresholds, losses, **({"epsilon": 0.1, "delta": 0.1} | kw))


def test_thresholds_run_from_the_safest_for_every_rule() -> None:
    from free_bench.methods.rules import safest_first, thresholds_for

    assert safest_first("max_prob", thresholds_for("max_prob", [2, 4], 3)) == [1.0, 0.5, 0.0]  # a high bar exits least
    assert safest_first("entropy", thresholds_for("entropy", [2, 4], 3)) == [0.0, 2.5, 5.0]  # exits below the value
    assert safest_first("patience", thresholds_for("patience", [2, 4, 6], 0)) == [3.0, 2.0, 1.0]
    assert safest_first("static", thresholds_for("static", [2, 4, 6], 0)) == [6.0, 4.0, 2.0]  # the deepest first
    with pytest.raises(FreeBenchError, match="rule 'oracle' has no threshold order"):
        safest_first("oracle", [0.5])
