"""DP counts and quality metrics on the holdout, through OpenDP's vetted integer mechanisms (no hand-written noise).

Both metrics are a noisy numerator over a noisy holdout size, each a bounded integer sum or count under
the symmetric (add/remove one unit) distance, released with OpenDP's discrete Laplace. The metric's ε is
split exactly in two integer micro-ε halves; the scales come from ``binary_search_chain`` so OpenDP itself
certifies ``map(1) <= ε``. Ratios are post-processing.

* classification: ``accuracy = noisy(#correct) / max(noisy(#rows), 1)``, clamped to [0, 1];
* regression: squared errors clipped to ``[0, mse_clip]`` and written as fixed-point integers in
  ``[0, 10⁶]`` (rounded down, so rounding never enlarges the sensitivity);
  ``mse = noisy(sum) * mse_clip / 10⁶ / max(noisy(#rows), 1)``, clamped to ``[0, mse_clip]``.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt
import opendp.prelude as dp

from privacy.training.spec import EPSILON_UNITS

FIXED_POINT = 10**6


def noisy_accuracy(correct: npt.NDArray[np.bool_], epsilon_micro: int) -> dict[str, float]:
    """A DP accuracy over the holdout's correct/incorrect flags, spending ``epsilon_micro`` in total."""
    count_eps, sum_eps = _halves(epsilon_micro)
    n_rows = noisy_count(correct.size, count_eps)
    n_correct = _noisy_bounded_sum(correct.astype(np.int64), 1, sum_eps)
    accuracy = min(max(n_correct / max(n_rows, 1), 0.0), 1.0)
    return {"accuracy": accuracy, "holdout_rows": float(max(n_rows, 0))}


def noisy_mse(
    squared_errors: npt.NDArray[np.float64], mse_clip: float, epsilon_micro: int
) -> dict[str, float]:
    """A DP mean squared error (errors clipped to ``[0, mse_clip]``), spending ``epsilon_micro`` in total."""
    count_eps, sum_eps = _halves(epsilon_micro)
    clipped = np.clip(np.nan_to_num(squared_errors, nan=mse_clip, posinf=mse_clip), 0.0, mse_clip)
    fixed = np.floor(clipped / mse_clip * FIXED_POINT).astype(np.int64)
    n_rows = noisy_count(fixed.size, count_eps)
    total = _noisy_bounded_sum(fixed, FIXED_POINT, sum_eps) * mse_clip / FIXED_POINT
    mse = min(max(total / max(n_rows, 1), 0.0), mse_clip)
    return {"mse": mse, "holdout_rows": float(max(n_rows, 0))}


def _halves(epsilon_micro: int) -> tuple[int, int]:
    if epsilon_micro < 2:
        raise ValueError("the metric needs at least 2 micro-epsilon")
    first = epsilon_micro // 2
    return first, epsilon_micro - first


def _epsilon_float(epsilon_micro: int) -> float:
    """The largest float not above ``epsilon_micro / 10⁶`` (so OpenDP's float check is never generous)."""
    exact = Fraction(epsilon_micro, EPSILON_UNITS)
    value = float(exact)
    return math.nextafter(value, 0.0) if Fraction(value) > exact else value


def noisy_count(n: int, epsilon_micro: int) -> int:
    """A DP count of ``n`` rows (discrete Laplace through OpenDP) spending ``epsilon_micro``; may be < 0."""
    dp.enable_features("contrib")
    count = dp.t.make_count(dp.vector_domain(dp.atom_domain(T=dp.i64)), dp.symmetric_distance())
    meas = dp.binary_search_chain(
        lambda scale: count >> dp.m.then_laplace(scale), d_in=1, d_out=_epsilon_float(epsilon_micro)
    )
    return int(meas(np.zeros(n, dtype=np.int64)))


def _noisy_bounded_sum(values: npt.NDArray[np.int64], upper: int, epsilon_micro: int) -> int:
    dp.enable_features("contrib")
    domain: Any = dp.vector_domain(dp.atom_domain(bounds=(0, upper), T=dp.i64))
    total = dp.t.make_sum(domain, dp.symmetric_distance())
    meas = dp.binary_search_chain(
        lambda scale: total >> dp.m.then_laplace(scale), d_in=1, d_out=_epsilon_float(epsilon_micro)
    )
    return int(meas(np.clip(values, 0, upper).astype(np.int64)))
