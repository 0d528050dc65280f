"""Differentially private aggregate queries over a dataset's bounded version.

How a query runs: :func:`validate` checks the spec against the *public* policy (no data touched, so every
error an SME sees is data-independent); :func:`estimate_cost` prices it (the caller reserves that cost
atomically before reading data); :func:`run_queries` computes the exact aggregates of a whole batch with
Polars in one pass per grouping, then releases each through an OpenDP measurement. Noise is never sampled
here: OpenDP's discrete Laplace (integers, floating-point safe) and its quantile mechanism do it.

Neighbouring datasets and sensitivities. Two datasets are neighbours when one adds or removes **one privacy
unit**, i.e. up to ``k = max_rows_per_unit`` rows of the bounded version. With ``M`` the largest absolute
bound of a numeric column in fixed-point units:

* count: ``k``;  sum: ``k·M`` (sums run on Int64 fixed-point units, so rounding never enlarges this; they are
  added in Int128 and saturated into Int64, so they never wrap — see ``datasets.policy`` for the limits that make
  the saturation a no-op);
* grouped counts / grouped sums / histogram, over the public key set of a categorical column (declared
  categories plus ``OTHER_CATEGORY``, missing groups released as noisy zeros): the L1 sensitivity of the
  whole vector is still ``k`` (resp. ``k·M``), because each of the unit's ``k`` rows lies in exactly one
  group. We do **not** assume a unit sits in one group (parallel composition per group would be wrong when
  ``k > 1``); a vector Laplace with the full L1 sensitivity covers every split of the unit's rows;
* quantile: OpenDP's ``make_private_quantile`` under the symmetric distance with ``d_in = k``, candidates on
  an evenly spaced grid of the declared bounds (public).

Budget split (``estimate_cost`` is exactly the sum of the parts, and ``charged`` always equals it): a mean
is a sum (⌈ε/2⌉) and a count (⌊ε/2⌋); ``m`` quantiles split ε evenly (the remainder to the first). Each part's
Laplace scale is calibrated so that OpenDP's own privacy map, read as an exact fraction, is at most the
part's ε in micro-ε — OpenDP's accounting, never ours, decides whether the claim holds.

Bounded input. Quantile levels and ε reach this module from users: levels go through
``common.numbers.parse_exact`` (form and exponent checked before any conversion, then ``0 < q < 1``) and must be
distinct as exact values (``0.5``, ``"1/2"`` and ``"0.50"`` are one level: ``duplicate_value``); ``epsilon_micro``
is an integer in ``1..MAX_EPSILON_MICRO``.

Confidence intervals are 95% intervals of the noise only, from the discrete Laplace's exact tail
(:func:`laplace_half_width`); per key they are marginal, not simultaneous. A mean's interval takes each part
at 97.5% and the ratio's extremes, clamped to the bounds. Quantiles have none (their error is in rank, not in
value).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction
from typing import Any

import numpy as np
import opendp.prelude as dp
import polars as pl

from common.errors import InvalidInput
from common.numbers import INT64_MAX, INT64_MIN, check_int, check_unique, parse_exact
from datasets.policy import ColumnKind, ColumnSpec, DatasetPolicy, PolicyError
from privacy.budget import DELTA_UNITS, EPSILON_UNITS, PrivacyCost

dp.enable_features("contrib")

MAX_QUANTILES = 20
MAX_EPSILON_MICRO = 10**12  # one query's ε: at most 10⁶ ε, the largest grant an access request may ask
MAX_QUANTILE_CANDIDATES = 1025
TOTAL_KEY = "*"
_SPEC_FIELDS = frozenset({"kind", "epsilon", "epsilon_micro", "column", "group_by", "quantiles"})
CI_MISS = 0.05  # 95% intervals; a mean's two parts take 2.5% each (union bound)


class QueryError(InvalidInput):
    """A query spec is invalid for this dataset's policy (decided before any data is read)."""

    code = "invalid_query"


class QueryKind(StrEnum):
    """The aggregate a query releases."""

    COUNT = "count"
    SUM = "sum"
    MEAN = "mean"
    QUANTILE = "quantile"
    HISTOGRAM = "histogram"


@dataclass(frozen=True, slots=True)
class QuerySpec:
    """One DP query: kind, column, optional group-by (categorical), quantile levels, and its ε."""

    kind: QueryKind
    epsilon: PrivacyCost
    column: str | None = None
    group_by: str | None = None
    quantiles: tuple[Fraction, ...] = ()

    def __post_init__(self) -> None:
        # Accept the loose forms too (kind as text, ε as micro-ε), so every spec holds exact values.
        if not isinstance(self.kind, QueryKind):
            try:
                object.__setattr__(self, "kind", QueryKind(self.kind))
            except ValueError as exc:
                raise QueryError(f"query kind must be one of {[k.value for k in QueryKind]}") from exc
        if not isinstance(self.epsilon, PrivacyCost):
            object.__setattr__(self, "epsilon", PrivacyCost(self.epsilon))
        levels = tuple(_parse_level(q, f"quantiles[{i}]") for i, q in enumerate(self.quantiles))
        check_unique(levels, "quantiles", show=self.quantiles)
        object.__setattr__(self, "quantiles", levels)

    @classmethod
    def make(
        cls,
        kind: str,
        epsilon: PrivacyCost | int,
        column: str | None = None,
        group_by: str | None = None,
        quantiles: Sequence[Fraction | float | str] = (),
    ) -> QuerySpec:
        """Build a spec from loose inputs (ε as micro-ε int or PrivacyCost; quantiles as exact values)."""
        return cls(kind, epsilon, column, group_by, tuple(quantiles))  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuerySpec:
        """Parse the API/JSON form: ``epsilon`` as ``{"epsilon_micro": n}`` or ``epsilon_micro`` as an int."""
        if not isinstance(data, Mapping):
            raise QueryError("a query must be a JSON object")
        unknown = set(data) - _SPEC_FIELDS
        if unknown:
            raise QueryError(f"unknown query fields: {sorted(unknown)}")
        raw_eps = data.get("epsilon", data.get("epsilon_micro"))
        if isinstance(raw_eps, Mapping):
            eps: PrivacyCost | int = _bounded_cost(raw_eps)
        elif raw_eps is not None:
            eps = check_int(raw_eps, "epsilon_micro", lo=1, hi=MAX_EPSILON_MICRO)
        else:
            raise QueryError("a query needs epsilon_micro (an integer of micro-ε)")
        quantiles = data.get("quantiles") or ()
        if not isinstance(quantiles, list | tuple):
            raise QueryError("quantiles must be a list of levels in (0, 1)")
        if len(quantiles) > MAX_QUANTILES:
            raise QueryError(f"a quantile query needs 1..{MAX_QUANTILES} levels")
        for name in ("column", "group_by"):
            if data.get(name) is not None and not isinstance(data.get(name), str):
                raise QueryError(f"{name} must be a column name")
        return cls.make(str(data.get("kind")), eps, data.get("column"), data.get("group_by"), quantiles)

    def to_dict(self) -> dict[str, Any]:
        """JSON form of the spec (for the audit log and the API)."""
        return {
            "kind": self.kind.value,
            "epsilon": self.epsilon.to_dict(),
            "column": self.column,
            "group_by": self.group_by,
            "quantiles": [level_text(q) for q in self.quantiles],
        }


def level_text(level: Fraction) -> str:
    """How a quantile level is written in results and JSON: its shortest float form, e.g. ``0.1``."""
    return repr(float(level))


def _parse_level(value: Fraction | float | str, field: str) -> Fraction:
    """A quantile level in (0, 1) through the one bounded parser (its form is checked before conversion)."""
    return parse_exact(value, field, lo=0, hi=1, lo_open=True, hi_open=True)


def _bounded_cost(data: Mapping[str, Any]) -> PrivacyCost:
    """``{"epsilon_micro": n, "delta_e12": m}`` with both integers range-checked before use."""
    extra = sorted(str(k) for k in data if k not in ("epsilon_micro", "delta_e12"))
    if extra:
        raise QueryError(f"unknown privacy cost fields: {extra}")
    eps = check_int(data.get("epsilon_micro"), "epsilon.epsilon_micro", lo=1, hi=MAX_EPSILON_MICRO)
    delta = check_int(data.get("delta_e12", 0), "epsilon.delta_e12", lo=0, hi=DELTA_UNITS - 1)
    return PrivacyCost(eps, delta)


@dataclass(frozen=True, slots=True)
class _Part:
    """One noisy component of a query: what it measures and its share of ε (micro-ε)."""

    name: str  # "count" or "sum" or "q<i>"
    epsilon_micro: int


@dataclass(frozen=True, slots=True)
class QueryResult:
    """A released answer: noisy values only (by group key, quantile level or TOTAL_KEY) and their noise."""

    kind: QueryKind
    values: dict[str, float]
    charged: PrivacyCost
    noise_scale: dict[str, float]
    confidence_interval: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form for the API."""
        return {
            "kind": self.kind.value,
            "values": self.values,
            "charged": self.charged.to_dict(),
            "noise_scale": self.noise_scale,
            "confidence_interval": {k: list(v) for k, v in self.confidence_interval.items()},
        }


# ----------------------------------------------------------------------------------------------- validation


def _column(policy: DatasetPolicy, name: str | None, kind: ColumnKind, role: str) -> ColumnSpec:
    if name is None:
        raise QueryError(f"this query needs a {role} ({kind.value} column)")
    try:
        col = policy.column(name)
    except PolicyError as exc:
        raise QueryError(exc.detail) from exc
    if col.kind is not kind:
        raise QueryError(f"{role} {name!r} must be a {kind.value} column, it is {col.kind.value}")
    return col


def _parts(spec: QuerySpec) -> list[_Part]:
    eps = spec.epsilon.epsilon_micro
    if spec.kind is QueryKind.MEAN:
        return [_Part("sum", eps - eps // 2), _Part("count", eps // 2)]
    if spec.kind is QueryKind.QUANTILE:
        m = len(spec.quantiles)
        share, rest = divmod(eps, m)
        return [_Part(f"q{i}", share + (rest if i == 0 else 0)) for i in range(m)]
    return [_Part("sum" if spec.kind is QueryKind.SUM else "count", eps)]


def _validate_shape(spec: QuerySpec, policy: DatasetPolicy) -> None:
    if spec.kind in (QueryKind.SUM, QueryKind.MEAN, QueryKind.QUANTILE):
        _column(policy, spec.column, ColumnKind.NUMERIC, "column")
    elif spec.kind is QueryKind.HISTOGRAM:
        _column(policy, spec.column, ColumnKind.CATEGORICAL, "column")
    elif spec.column is not None:
        raise QueryError("a count takes no column (use group_by to count per category)")
    if spec.group_by is not None:
        if spec.kind in (QueryKind.QUANTILE, QueryKind.HISTOGRAM):
            raise QueryError(f"a {spec.kind.value} query takes no group_by")
        _column(policy, spec.group_by, ColumnKind.CATEGORICAL, "group_by")
    if spec.kind is QueryKind.QUANTILE:
        if not 1 <= len(spec.quantiles) <= MAX_QUANTILES:
            raise QueryError(f"a quantile query needs 1..{MAX_QUANTILES} levels")
        if any(not 0 < q < 1 for q in spec.quantiles):
            raise QueryError("quantile levels must lie strictly between 0 and 1")
    elif spec.quantiles:
        raise QueryError("only a quantile query takes quantile levels")


def validate(spec: QuerySpec, policy: DatasetPolicy) -> None:
    """Refuse a malformed query using only the spec and the public policy (never the data)."""
    if not isinstance(spec.epsilon, PrivacyCost):
        raise QueryError("epsilon must be a PrivacyCost")
    if spec.epsilon.delta_e12 != 0:
        raise QueryError("aggregate queries are pure ε-DP: ask for δ = 0")
    _validate_shape(spec, policy)
    if any(p.epsilon_micro < 1 for p in _parts(spec)):
        raise QueryError("epsilon is too small to split over this query's parts (at least 1 micro-ε each)")


def estimate_cost(spec: QuerySpec, policy: DatasetPolicy) -> PrivacyCost:
    """The exact privacy cost of ``spec`` (validated first): the sum of its parts, equal to its ε."""
    validate(spec, policy)
    return PrivacyCost(sum(p.epsilon_micro for p in _parts(spec)))


# ------------------------------------------------------------------------------------------------ mechanisms


def _fits(measurement: dp.Measurement, d_in: int, epsilon_micro: int) -> bool:
    claimed = measurement.map(d_in)  # type: ignore[no-untyped-call]
    return Fraction(claimed) <= Fraction(epsilon_micro, EPSILON_UNITS)


def _calibrated(build: Any, d_in: int, epsilon_micro: int) -> tuple[dp.Measurement, float]:
    """Build ``build(scale)`` at the smallest tried scale whose OpenDP privacy map fits ``epsilon_micro``."""
    unit_eps = Fraction(build(1.0).map(d_in))
    scale = float(unit_eps / Fraction(epsilon_micro, EPSILON_UNITS))
    for _ in range(64):
        meas = build(scale)
        if _fits(meas, d_in, epsilon_micro):
            return meas, scale
        scale = math.nextafter(scale, math.inf) * (1 + 1e-12)
    raise RuntimeError("could not calibrate the noise scale")  # pragma: no cover - OpenDP maps are linear


def _laplace_scalar(scale: float) -> dp.Measurement:
    return dp.m.make_laplace(dp.atom_domain(T="i64"), dp.absolute_distance(T="i64"), scale=scale)


def _laplace_vector(scale: float) -> dp.Measurement:
    return dp.m.make_laplace(dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64"), scale=scale)


def _sensitivity(part: str, policy: DatasetPolicy, col: ColumnSpec | None) -> int:
    k = policy.max_rows_per_unit
    if part == "count":
        return k
    assert col is not None  # sums always name a numeric column (validated)
    return k * col.max_abs_units


@functools.lru_cache(maxsize=512)
def calibrated_laplace(sensitivity: int, epsilon_micro: int, *, vector: bool) -> tuple[dp.Measurement, float]:
    """OpenDP's discrete Laplace on i64 (a scalar, or a vector under the L1 distance) for (Δ, ε); and its scale.

    The scale is the smallest tried one whose OpenDP privacy map at ``d_in = sensitivity`` is at most ε.
    Measurements are immutable and draw from OpenDP's OS-seeded sampler, so they are cached and reused.
    """
    return _calibrated(_laplace_vector if vector else _laplace_scalar, sensitivity, epsilon_micro)


def _noisy_ints(exact: list[int], sensitivity: int, epsilon_micro: int) -> tuple[list[int], float]:
    """Release integers through OpenDP's discrete Laplace, calibrated to (L1 sensitivity, ε)."""
    if len(exact) == 1:
        meas, scale = calibrated_laplace(sensitivity, epsilon_micro, vector=False)
        return [int(meas(exact[0]))], scale
    meas, scale = calibrated_laplace(sensitivity, epsilon_micro, vector=True)
    return [int(v) for v in meas(exact)], scale


def quantile_candidates(col: ColumnSpec) -> list[int]:
    """Public candidates for a quantile, in fixed-point units: an even grid over the declared bounds."""
    lo, hi = col.lo_units, col.hi_units
    if hi - lo < MAX_QUANTILE_CANDIDATES:
        return list(range(lo, hi + 1))
    return sorted({int(v) for v in np.linspace(lo, hi, MAX_QUANTILE_CANDIDATES).round()})


@functools.lru_cache(maxsize=256)
def calibrated_quantile(
    col: ColumnSpec, level: Fraction, rows_per_unit: int, epsilon_micro: int
) -> dp.Measurement:
    """OpenDP's private quantile over i64 vectors (symmetric distance, d_in = rows per unit) fitting ε."""
    candidates = quantile_candidates(col)

    def build(scale: float) -> dp.Measurement:
        return dp.m.make_private_quantile(
            dp.vector_domain(dp.atom_domain(T="i64")),
            dp.symmetric_distance(),
            dp.max_divergence(),
            candidates=candidates,
            alpha=float(level),
            scale=scale,
        )

    return _calibrated(build, rows_per_unit, epsilon_micro)[0]


# ------------------------------------------------------------------------------------------- exact aggregates


@dataclass
class _Aggregates:
    """Exact aggregates of a batch: scalar ones by name, grouped ones by (group column, name) → key → int."""

    scalar: dict[str, int] = field(default_factory=dict)
    grouped: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)


def _agg_exprs(name: str, policy: DatasetPolicy, clip: bool) -> list[pl.Expr]:
    """Polars expressions for one exact aggregate; a sum also reports min and max (see _sums_in_bounds)."""
    if name == "count":
        return [pl.len().cast(pl.Int64).alias(name)]
    col = policy.column(name.removeprefix("sum:"))
    value = pl.col(col.name).clip(col.lo_units, col.hi_units) if clip else pl.col(col.name)
    return [
        _checked_sum(value).alias(name),
        value.min().cast(pl.Int64).alias(f"min:{col.name}"),
        value.max().cast(pl.Int64).alias(f"max:{col.name}"),
    ]


def _checked_sum(value: pl.Expr) -> pl.Expr:
    """The exact sum of an Int64 column without wrapping: summed in Int128 (no overflow below 2⁶⁴ rows), then
    saturated into Int64 — a 1-Lipschitz step, so the sum's sensitivity ``k·M`` and the guarantee are unchanged.
    With ``datasets.policy.check_sum_range`` enforced at registration the saturation never alters a value."""
    return value.cast(pl.Int128).sum().clip(INT64_MIN, INT64_MAX).cast(pl.Int64)


def _sums_in_bounds(frame: pl.DataFrame, names: Sequence[str], policy: DatasetPolicy) -> bool:
    """True when every summed column of ``frame`` stayed within its bounds.

    The bounded version is clamped at registration; checking min/max in the same pass costs far less than
    clamping again. If a stored frame ever breaks its bounds, the caller recomputes with a clamp, so the
    released sums have the documented sensitivity whatever the storage holds.
    """
    for name in names:
        if name.startswith("sum:"):
            col = policy.column(name.removeprefix("sum:"))
            lo = frame.get_column(f"min:{col.name}").min()
            hi = frame.get_column(f"max:{col.name}").max()
            if lo is not None and hi is not None and (int(lo) < col.lo_units or int(hi) > col.hi_units):  # type: ignore[arg-type]
                return False
    return True


def _needed(spec: QuerySpec) -> list[str]:
    if spec.kind in (QueryKind.COUNT, QueryKind.HISTOGRAM):
        return ["count"]
    if spec.kind is QueryKind.SUM:
        return [f"sum:{spec.column}"]
    if spec.kind is QueryKind.MEAN:
        return [f"sum:{spec.column}", "count"]
    return []


def _group_column(spec: QuerySpec) -> str | None:
    return spec.column if spec.kind is QueryKind.HISTOGRAM else spec.group_by


def _scalar_aggregates(names: list[str], policy: DatasetPolicy, bounded: pl.DataFrame) -> dict[str, int]:
    def run(clip: bool) -> pl.DataFrame:
        return bounded.select([e for n in names for e in _agg_exprs(n, policy, clip)])

    frame = run(clip=False)
    if not _sums_in_bounds(frame, names, policy):
        frame = run(clip=True)
    row = frame.row(0, named=True)
    return {n: int(row[n] or 0) for n in names}


def _grouped_counts(group: ColumnSpec, bounded: pl.DataFrame) -> dict[str, dict[str, int]]:
    """Counts per public key from the Enum's physical codes (whose order is the key set's order)."""
    keys = group.key_set
    codes = bounded.get_column(group.name).drop_nulls().to_physical().to_numpy()
    counts = np.bincount(codes, minlength=len(keys))
    return {"count": {key: int(counts[i]) for i, key in enumerate(keys)}}


def _grouped_aggregates(
    names: list[str], group: ColumnSpec, policy: DatasetPolicy, bounded: pl.DataFrame
) -> dict[str, dict[str, int]]:
    if names == ["count"]:
        return _grouped_counts(group, bounded)

    def run(clip: bool) -> pl.DataFrame:
        exprs = [e for n in names for e in _agg_exprs(n, policy, clip)]
        return bounded.group_by(group.name).agg(exprs).with_columns(pl.col(group.name).cast(pl.String))

    frame = run(clip=False)
    if not _sums_in_bounds(frame, names, policy):
        frame = run(clip=True)
    found = {r[group.name]: r for r in frame.iter_rows(named=True)}
    # Every public key is reported, present in the data or not: the output's shape reveals nothing.
    return {n: {key: int(found.get(key, {}).get(n) or 0) for key in group.key_set} for n in names}


def _exact_aggregates(
    specs: Sequence[QuerySpec], policy: DatasetPolicy, bounded: pl.DataFrame
) -> _Aggregates:
    scalar: set[str] = set()
    grouped: dict[str, set[str]] = {}
    for spec in specs:
        group = _group_column(spec)
        target = scalar if group is None else grouped.setdefault(group, set())
        target.update(_needed(spec))
    out = _Aggregates()
    if scalar:
        out.scalar = _scalar_aggregates(sorted(scalar), policy, bounded)
    for group, names in grouped.items():
        out.grouped[group] = _grouped_aggregates(sorted(names), policy.column(group), policy, bounded)
    return out


# ----------------------------------------------------------------------------------------------- release


def _release_counts_or_sums(
    spec: QuerySpec, policy: DatasetPolicy, agg: _Aggregates
) -> tuple[dict[str, dict[str, int]], dict[str, float]]:
    """Noisy integer vectors per part (``count`` and/or ``sum``) keyed by group key, and the raw scales."""
    col = policy.column(spec.column or "") if spec.kind in (QueryKind.SUM, QueryKind.MEAN) else None
    group = _group_column(spec)
    noisy: dict[str, dict[str, int]] = {}
    scales: dict[str, float] = {}
    for part in _parts(spec):
        name = "count" if part.name == "count" else f"sum:{spec.column}"
        exact = {TOTAL_KEY: agg.scalar[name]} if group is None else agg.grouped[group][name]
        values, scale = _noisy_ints(
            list(exact.values()), _sensitivity(part.name, policy, col), part.epsilon_micro
        )
        noisy[part.name] = dict(zip(exact.keys(), values, strict=True))
        scales[part.name] = scale
    return noisy, scales


def laplace_half_width(scale: float, miss: float) -> int:
    """Smallest integer h with P(|Z| > h) <= ``miss`` for discrete Laplace noise Z of this ``scale``.

    For the discrete Laplace, P(|Z| >= t) = 2·e^(-t/b) / (1 + e^(-1/b)) for integers t >= 1; so t is the
    first integer with that tail <= miss, and h = t - 1 (an interval of ±h then covers with >= 1 - miss).
    """
    t = math.ceil(scale * math.log(2 / (miss * (1 + math.exp(-1 / scale)))))
    return max(0, t - 1)


def _interval(value: float, half_width: float) -> tuple[float, float]:
    return (value - half_width, value + half_width)


def _mean_interval(s: int, c: int, bs: float, bc: float, col: ColumnSpec) -> tuple[float, float]:
    lo, hi = float(col.lo_units), float(col.hi_units)
    hc, hs = laplace_half_width(bc, CI_MISS / 2), laplace_half_width(bs, CI_MISS / 2)
    c_lo, c_hi = max(1.0, c - hc), max(1.0, c + hc)
    s_lo, s_hi = s - hs, s + hs
    ratios = [a / b for a in (s_lo, s_hi) for b in (c_lo, c_hi)]
    return (max(lo, min(ratios)) / col.scale, min(hi, max(ratios)) / col.scale)


def _finish_sum_like(spec: QuerySpec, policy: DatasetPolicy, agg: _Aggregates) -> QueryResult:
    noisy, scales = _release_counts_or_sums(spec, policy, agg)
    col = policy.column(spec.column) if spec.column and spec.kind is not QueryKind.HISTOGRAM else None
    unit = col.scale if col else 1
    values: dict[str, float] = {}
    ci: dict[str, tuple[float, float]] = {}
    if spec.kind is QueryKind.MEAN and col is not None:
        for key, s in noisy["sum"].items():
            c = noisy["count"][key]
            raw = min(max(s / max(c, 1), col.lo_units), col.hi_units)  # post-processing: clamp to bounds
            values[key] = raw / col.scale
            ci[key] = _mean_interval(s, c, scales["sum"], scales["count"], col)
    else:
        part = "count" if "count" in noisy else "sum"
        for key, v in noisy[part].items():
            values[key] = v / unit
            ci[key] = _interval(v / unit, laplace_half_width(scales[part], CI_MISS) / unit)
    natural = {p: s / (unit if p == "sum" else 1) for p, s in scales.items()}
    return QueryResult(spec.kind, values, estimate_cost(spec, policy), natural, ci)


def _finish_quantile(spec: QuerySpec, policy: DatasetPolicy, bounded: pl.DataFrame) -> QueryResult:
    col = policy.column(spec.column or "")
    data = (
        bounded.get_column(col.name).clip(col.lo_units, col.hi_units).cast(pl.Int64).to_numpy(writable=True)
    )
    values: dict[str, float] = {}
    for level, part in zip(spec.quantiles, _parts(spec), strict=True):
        chosen = int(calibrated_quantile(col, level, policy.max_rows_per_unit, part.epsilon_micro)(data))
        values[level_text(level)] = chosen / col.scale
    return QueryResult(spec.kind, values, estimate_cost(spec, policy), {}, {})


def _check_bounded(policy: DatasetPolicy, bounded: pl.DataFrame) -> None:
    """Refuse a frame that is not a bounded version of this policy (a programming error, not an SME's)."""
    for col in policy.columns:
        dtype = bounded.schema.get(col.name)
        if col.kind is ColumnKind.NUMERIC and dtype != pl.Int64:
            raise ValueError(f"column {col.name!r} of the bounded version must be Int64 fixed-point")
        if col.kind is ColumnKind.CATEGORICAL and dtype != pl.Enum(list(col.key_set)):
            raise ValueError(f"column {col.name!r} of the bounded version must be an Enum of its key set")


def run_queries(
    specs: Sequence[QuerySpec], policy: DatasetPolicy, bounded: pl.DataFrame
) -> list[QueryResult]:
    """Answer a batch of queries on the bounded version: one Polars pass per grouping, then OpenDP noise.

    Every spec is validated first (nothing is read if any is invalid). Each query is noised independently
    and charged its own :func:`estimate_cost`; the batch costs their sum (sequential composition).
    """
    for spec in specs:
        validate(spec, policy)
    _check_bounded(policy, bounded)
    agg = _exact_aggregates(specs, policy, bounded)
    return [
        _finish_quantile(s, policy, bounded)
        if s.kind is QueryKind.QUANTILE
        else _finish_sum_like(s, policy, agg)
        for s in specs
    ]


def run_query(spec: QuerySpec, policy: DatasetPolicy, bounded: pl.DataFrame) -> QueryResult:
    """Answer one query on the bounded version (see :func:`run_queries`)."""
    return run_queries([spec], policy, bounded)[0]
