"""Contribution bounding and the holdout split, with the secure RNG outside tests.

DP-SGD's guarantee is per *record*; keeping at most one row per privacy unit makes it per *person*.
Each row draws a uniform 64-bit key; the row with the smallest key wins for its unit (a uniform pick).
Each kept unit then joins the holdout independently with probability ``holdout_ppm / 10⁶``, decided by a
second key compared with an exact integer threshold (no float rounding).
"""

from __future__ import annotations

import secrets

import numpy as np
import numpy.typing as npt
import polars as pl

_KEY = "__sbx_key"
_SPLIT = "__sbx_split"
_TWO_64 = 2**64


class RandomKeys:
    """Uniform 64-bit keys: from the OS CSPRNG (``seed=None``) or a seeded NumPy generator (tests only)."""

    def __init__(self, seed: int | None) -> None:
        self._rng = None if seed is None else np.random.default_rng(seed)

    def draw(self, n: int) -> npt.NDArray[np.uint64]:
        """``n`` independent uniform keys in ``[0, 2**64)``."""
        if self._rng is None:
            return np.frombuffer(secrets.token_bytes(8 * n), dtype=np.uint64).copy()
        return self._rng.integers(0, _TWO_64, size=n, dtype=np.uint64, endpoint=False)


def one_row_per_unit(frame: pl.DataFrame, unit: str, keys: RandomKeys) -> pl.DataFrame:
    """Keep one uniformly drawn row per value of ``unit`` (rows with a null unit are dropped)."""
    present = frame.filter(pl.col(unit).is_not_null())
    keyed = present.with_columns(pl.Series(_KEY, keys.draw(present.height)))
    return keyed.sort(_KEY).unique(subset=[unit], keep="first", maintain_order=True).drop(_KEY)


def split_holdout(
    frame: pl.DataFrame, holdout_ppm: int, keys: RandomKeys
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split rows into ``(train, holdout)``; each row is held out independently w.p. ``holdout_ppm/10⁶``."""
    if not 0 <= holdout_ppm <= 10**6 // 2:
        raise ValueError("holdout_ppm must be in 0..500000")
    threshold = np.uint64(holdout_ppm * _TWO_64 // 10**6)  # < 2**63: fits, and 0 holds nothing out
    marked = frame.with_columns(pl.Series(_SPLIT, keys.draw(frame.height) < threshold))
    train = marked.filter(~pl.col(_SPLIT)).drop(_SPLIT)
    holdout = marked.filter(pl.col(_SPLIT)).drop(_SPLIT)
    return train, holdout
