"""Privacy audit: each mechanism the query engine uses meets its claimed ε on worst-case neighbours.

Method: run a mechanism many times on two neighbouring inputs (one privacy unit added, with all its
``k`` rows), pick an event ``E``, and bound ``ε ≥ ln(P[M(D) ∈ E] / P[M(D') ∈ E])`` from below with
Clopper-Pearson intervals at confidence 1 - 10^-6 (stricter than 99%, so a correct mechanism
fails this suite about once in a million runs; the sample sizes still give the audit its power). A correct mechanism's lower bound stays at or below its claim; a
broken one (wrong sensitivity) goes above it, and the test must say so. The events are the tight ones for
Laplace noise (``Y ≤ x``), so a correct mechanism sits right under its claim and a mechanism calibrated for a
smaller sensitivity is caught.

A second check covers Mironov's floating-point attack: OpenDP's discrete Laplace has the same support (all
integers) on both neighbours, while a textbook floating-point Laplace produces outputs that are impossible
under one of them, which reveals the input exactly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import pytest
from scipy.stats import beta

from datasets.policy import ColumnSpec
from privacy.queries import calibrated_laplace, calibrated_quantile

EPS_MICRO = 1_000_000
EPS = 1.0
ALPHA = 1e-6  # confidence 1 - 1e-6 overall: no flaky failures, still enough power
K = 3  # rows one privacy unit may contribute


def clopper_pearson(hits: int, n: int, alpha: float) -> tuple[float, float]:
    """Exact two-sided (1 - alpha) binomial interval."""
    lo = float(beta.ppf(alpha / 2, hits, n - hits + 1)) if hits > 0 else 0.0
    hi = float(beta.ppf(1 - alpha / 2, hits + 1, n - hits)) if hits < n else 1.0
    return lo, hi


def epsilon_lower_bound(
    in_event_d: Sequence[bool], in_event_d2: Sequence[bool], alpha: float = ALPHA
) -> float:
    """A (1 - alpha) lower confidence bound on ε from event frequencies under D and D'."""
    p_lo, _ = clopper_pearson(int(np.sum(in_event_d)), len(in_event_d), alpha)
    _, q_hi = clopper_pearson(int(np.sum(in_event_d2)), len(in_event_d2), alpha)
    return math.log(p_lo / q_hi) if p_lo > 0 else 0.0


def naive_float_laplace(x: float, scale: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """NEGATIVE CONTROL ONLY: textbook floating-point Laplace, the kind of code the project never ships."""
    return x + rng.laplace(0.0, scale, n)


# ------------------------------------------------------------------------------------------------ ε audits


def test_count_mechanism_meets_its_epsilon() -> None:
    meas, scale = calibrated_laplace(K, EPS_MICRO, vector=False)
    assert scale == pytest.approx(K / EPS)
    n = 6_000
    d = np.array([meas(0) for _ in range(n)])  # D: count 0 ...
    d2 = np.array([meas(K) for _ in range(n)])  # ... D': one more unit with k rows
    bound = epsilon_lower_bound(d <= 0, d2 <= 0)
    assert 0.5 < bound <= EPS  # close to the claim (the test has power) and never above it


def test_naive_mechanism_with_wrong_sensitivity_is_flagged() -> None:
    rng = np.random.default_rng(1)
    n = 10_000
    # Claims ε = 1 for a count but scales the noise for one row, not k: its true ε is k.
    d = naive_float_laplace(0.0, 1 / EPS, n, rng)
    d2 = naive_float_laplace(float(K), 1 / EPS, n, rng)
    assert epsilon_lower_bound(d <= 0, d2 <= 0) > EPS


def test_sum_mechanism_meets_its_epsilon() -> None:
    m_abs = 250  # max |bound| in fixed-point units
    meas, scale = calibrated_laplace(K * m_abs, EPS_MICRO, vector=True)
    assert scale == pytest.approx(K * m_abs / EPS)
    n = 40_000
    d = np.asarray(meas(np.zeros(n, dtype=np.int64)))  # n independent releases of sum 0 ...
    d2 = np.asarray(meas(np.full(n, K * m_abs, dtype=np.int64)))  # ... and of sum + k·M
    assert 0.5 < epsilon_lower_bound(d <= 0, d2 <= 0) <= EPS


def test_histogram_mechanism_covers_a_unit_split_over_groups() -> None:
    """A unit's k rows may fall in several groups: the L1 calibration must still hold (no per-group split)."""
    k = 2
    meas, _ = calibrated_laplace(k, EPS_MICRO, vector=True)
    n = 20_000
    d = np.asarray(meas(np.zeros(2 * n, dtype=np.int64))).reshape(n, 2)
    d2 = np.asarray(meas(np.ones(2 * n, dtype=np.int64))).reshape(n, 2)  # one row in each of two groups
    event_d, event_d2 = (d <= 0).all(axis=1), (d2 <= 0).all(axis=1)
    assert 0.5 < epsilon_lower_bound(event_d, event_d2) <= EPS
    # The classic mistake — noise each group for one unit's rows *per group* (sensitivity 1) — is flagged.
    wrong, _ = calibrated_laplace(1, EPS_MICRO, vector=True)
    w = np.asarray(wrong(np.zeros(2 * n, dtype=np.int64))).reshape(n, 2)
    w2 = np.asarray(wrong(np.ones(2 * n, dtype=np.int64))).reshape(n, 2)
    assert epsilon_lower_bound((w <= 0).all(axis=1), (w2 <= 0).all(axis=1)) > EPS


K_Q = 5  # rows per unit in the quantile audit (large, so the broken control is far above its claim)


def _quantile_audit(rows_per_unit_claimed: int) -> float:
    """Largest ε lower bound over outputs of the median mechanism, for a unit adding K_Q rows at the top."""
    col = ColumnSpec.numeric("x", 0, 10)
    meas = calibrated_quantile(col, Fraction(1, 2), rows_per_unit_claimed, EPS_MICRO)
    base = np.array([2, 3, 4, 5, 6], dtype=np.int64)
    neighbour = np.concatenate([base, np.full(K_Q, 10, dtype=np.int64)])  # one unit, K_Q rows at the top
    n = 3_000
    d = np.array([meas(base) for _ in range(n)])
    d2 = np.array([meas(neighbour) for _ in range(n)])
    candidates = range(11)
    alpha = ALPHA / (2 * len(candidates))  # Bonferroni over every candidate and both directions
    return max(
        max(epsilon_lower_bound(d == c, d2 == c, alpha), epsilon_lower_bound(d2 == c, d == c, alpha))
        for c in candidates
    )


def test_quantile_mechanism_meets_its_epsilon() -> None:
    assert _quantile_audit(K_Q) <= EPS


def test_quantile_calibrated_for_one_row_per_unit_is_flagged() -> None:
    assert _quantile_audit(1) > EPS  # forgetting that a unit brings K_Q rows multiplies the true ε


# ------------------------------------------------------------------------------------- Mironov's attack


def _textbook_laplace(x: float, scale: float, rng: random.Random) -> float:
    """NEGATIVE CONTROL ONLY: x + s·(-b·ln U) with U uniform on the 2^-53 grid (Mironov 2012's target)."""
    k = rng.randrange(1, 2**53)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    return x + sign * (-scale * math.log(k / 2**53))


def _possible_under(y: float, x: float, scale: float, window: int = 24) -> bool:
    """Can the textbook sampler output exactly ``y`` from input ``x``? (searches U around its inverse)."""
    sign = 1.0 if y >= x else -1.0
    centre = round(math.exp(-abs(y - x) / scale) * 2**53)
    for k in range(max(1, centre - window), min(2**53 - 1, centre + window) + 1):
        if x + sign * (-scale * math.log(k / 2**53)) == y:
            return True
    return False


def _impossible_fraction(outputs: Sequence[float], x: float, scale: float) -> float:
    return sum(not _possible_under(y, x, scale) for y in outputs) / len(outputs)


def test_floating_point_laplace_leaks_its_input_through_its_support() -> None:
    rng = random.Random(3)
    n, scale = 3_000, 1.0
    from_zero = [_textbook_laplace(0.0, scale, rng) for _ in range(n)]
    from_one = [_textbook_laplace(1.0, scale, rng) for _ in range(n)]
    # The checker is sound: outputs of x = 1 are always found possible under x = 1.
    assert _impossible_fraction(from_one, 1.0, scale) == 0.0
    # But many outputs of x = 0 could never come from x = 1: seeing one reveals the input (infinite ε).
    assert _impossible_fraction(from_zero, 1.0, scale) > 0.05


def test_opendp_laplace_has_the_same_support_on_neighbours() -> None:
    meas, _ = calibrated_laplace(K, EPS_MICRO, vector=True)
    n = 20_000
    d = meas(np.zeros(n, dtype=np.int64))
    d2 = meas(np.full(n, K, dtype=np.int64))
    # Outputs are integers, and every integer is a possible output of the discrete Laplace from any integer
    # input, so no output rules out a neighbour: the supports are equal (both are all the integers).
    assert all(isinstance(v, int) for v in d) and all(isinstance(v, int) for v in d2)
    seen, seen2 = set(d), set(d2)
    central = set(range(-3, 3 + K + 1))
    assert central <= seen and central <= seen2  # both neighbours actually reach the shared central values
