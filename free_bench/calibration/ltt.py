"""Learn-then-Test (Angelopoulos, Bates, Candès, Jordan, Lei 2021): a threshold whose risk is certified.

Each candidate threshold is a null hypothesis "its risk exceeds epsilon". A valid p-value per
hypothesis (Hoeffding-Bentkus, for losses bounded in [0, 1]) and fixed-sequence testing (the thresholds
tested in a fixed order from the safest to the most aggressive, stopping at the first that is not
rejected) control the family-wise error rate at delta: with probability at least 1 - delta, every
threshold returned has risk <= epsilon. CALM (Schuster et al. 2022) calibrates its exits this way.

The binomial tail is summed here in log space rather than taken from scipy: it is the one
function needed, and the suite does not otherwise depend on scipy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from free_bench.core.errors import FreeBenchError


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k), summed in log space (large n stays finite)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])  # log m!
    i = np.arange(0, k + 1)
    log_terms = log_fact[n] - log_fact[i] - log_fact[n - i] + i * math.log(p) + (n - i) * math.log1p(-p)
    top = log_terms.max()
    return float(min(1.0, math.exp(top) * np.exp(log_terms - top).sum()))


def _kl_bernoulli(a: float, b: float) -> float:
    """KL(Bernoulli(a) || Bernoulli(b)), with 0 log 0 = 0."""
    out = 0.0
    if a > 0:
        out += a * math.log(a / b)
    if a < 1:
        out += (1 - a) * math.log((1 - a) / (1 - b))
    return out


def hb_p_value(risk: float, n: int, epsilon: float) -> float:
    """Hoeffding-Bentkus p-value of "true risk > epsilon" given the mean of n losses in [0, 1]
    (Bates et al. 2021, Prop. 3.5 / LTT eq. 13): the smaller of the Hoeffding bound
    exp(-n h(min(risk, epsilon), epsilon)) and Bentkus' e P(Bin(n, epsilon) <= ceil(n risk))."""
    if not 0.0 < epsilon < 1.0:
        raise FreeBenchError(f"epsilon must lie in (0, 1), got {epsilon}")
    if n < 1:
        raise FreeBenchError("a p-value needs at least one calibration sample")
    hoeffding = math.exp(-n * _kl_bernoulli(min(risk, epsilon), epsilon))
    bentkus = math.e * binom_cdf(math.ceil(n * risk - 1e-9), n, epsilon)
    return min(1.0, hoeffding, bentkus)


@dataclass(frozen=True)
class Certificate:
    """What the calibration tested: per threshold (safest first) its empirical risk and p-value, and
    the threshold fixed-sequence testing certifies (None: not even the safest one)."""

    thresholds: tuple[float, ...]
    risks: tuple[float, ...]
    p_values: tuple[float, ...]
    n: int
    epsilon: float
    delta: float
    threshold: float | None
    tested: int  # thresholds tested before the sequence stopped (the rest were never tested)

    def as_dict(self) -> dict:
        return {"threshold": self.threshold, "n": self.n, "epsilon": self.epsilon, "delta": self.delta,
                "tested": self.tested, "thresholds": list(self.thresholds), "risks": list(self.risks),
                "p_values": list(self.p_values)}  # fmt: skip


def certify(thresholds, losses, *, epsilon: float, delta: float) -> Certificate:
    """`ltt_threshold` with its working: every threshold's risk and p-value."""
    values = [float(t) for t in thresholds]
    arr = np.asarray(losses, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != len(values):
        raise FreeBenchError(f"losses must have shape (len(thresholds), n) = ({len(values)}, n), got {arr.shape}")
    if arr.shape[1] == 0:
        raise FreeBenchError("no calibration samples: losses has no columns")
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise FreeBenchError("losses must be finite and lie in [0, 1]")
    if not 0.0 < delta < 1.0:
        raise FreeBenchError(f"delta must lie in (0, 1), got {delta}")
    n = arr.shape[1]
    risks = arr.mean(axis=1)
    p_values = [hb_p_value(float(r), n, epsilon) for r in risks]
    chosen, tested = None, 0
    for t, p in zip(values, p_values, strict=True):  # fixed sequence: stop at the first not rejected
        tested += 1
        if p > delta:
            break
        chosen = t
    return Certificate(tuple(values), tuple(float(r) for r in risks), tuple(p_values), n, epsilon, delta, chosen,
                       tested)  # fmt: skip


def ltt_threshold(thresholds, losses, *, epsilon: float, delta: float) -> float | None:
    """The most aggressive of `thresholds` (ordered from the safest to the most aggressive) whose risk
    (mean of `losses`' row, shape (len(thresholds), n), values in [0, 1]) is certified <= `epsilon`
    with probability >= 1 - `delta`, by fixed-sequence testing of Hoeffding-Bentkus p-values; None
    when even the safest is not certified."""
    return certify(thresholds, losses, epsilon=epsilon, delta=delta).threshold
