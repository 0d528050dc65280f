"""Dataset privacy policy: the declared schema, the privacy unit, public bounds and categories, and budgets.

Everything in a policy is *public*: bounds, categories and budgets are chosen by the custodian, never read
from the data, so they can be stored, returned by the API and used to price a query before any row is read.

Numeric columns are fixed-point: a column with ``decimals = d`` is stored and summed as integers in units of
10⁻ᵈ, and its bounds must be exact at that scale (``lo = -2.5`` needs ``d >= 1``). Budgets are kept as the
integers of :mod:`privacy.budget` (micro-ε, δ in 10⁻¹²); ``privacy`` turns them into ``PrivacyCost`` values
(``datasets`` may not import ``privacy``: the arrows point down).

Exact sums cannot wrap (the decision, and why). A fixed-point sum over ``n`` rows of a column whose largest
absolute bound is ``M`` units is at most ``n·M`` in magnitude. Two rules keep it exact:

* a numeric column's bounds are at most :data:`MAX_ABS_UNITS` = 2⁵³ units (``|bound| · 10^decimals``), so every
  value the preparation computes in float64 is an exact integer (a 9-decimal column may hold up to about 9·10⁶;
  a whole-number column up to about 9·10¹⁵): such a policy is refused otherwise;
* a bounded version is refused at registration when ``rows · M`` exceeds :data:`SUM_LIMIT` (the signed 64-bit
  range) for one of its numeric columns (:func:`check_sum_range`): the custodian, who knows the rows, learns it.

``privacy.queries`` sums in 128-bit integers and saturates into the 64-bit range anyway (a 1-Lipschitz step:
the sensitivity and so the privacy guarantee are unchanged), so even a frame that bypassed registration never
wraps; with the two rules above the saturation never changes a value.

Categorical values outside the declared set are mapped to :data:`OTHER_CATEGORY` when the bounded version is
prepared, so every declared key set is ``categories + (OTHER_CATEGORY,)`` and never comes from the data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from fractions import Fraction
from typing import Any

from common import numbers
from common.errors import DomainError

OTHER_CATEGORY = "__other__"
MAX_DECIMALS = 9
MAX_CATEGORIES = 1000
MAX_ROWS_PER_UNIT_LIMIT = 10_000
_DELTA_UNITS = 1_000_000_000_000
MAX_ABS_UNITS = 2**53
"""Largest absolute bound of a numeric column in fixed-point units (exact in float64)."""
MAX_BOUND = 2**53
"""Largest absolute bound in natural units a policy may name (at 0 decimals it is MAX_ABS_UNITS)."""
SUM_LIMIT = numbers.INT64_MAX
"""Largest ``rows · max|bound|`` (units) a bounded version may reach: a 64-bit sum of it cannot wrap."""

# The small dtype vocabulary a data schema is described in (prepare.schema_of maps Polars dtypes to it).
SCHEMA_TYPES = frozenset({"int", "float", "decimal", "string", "bool", "other"})
_COMPATIBLE: dict[str, frozenset[str]] = {
    "numeric": frozenset({"int", "float", "decimal"}),
    "categorical": frozenset({"string", "int", "bool"}),
    "unit": frozenset({"string", "int"}),
}


class PolicyError(DomainError):
    """A dataset policy is malformed or does not match the data's schema."""

    code = "invalid_policy"


class ColumnKind(StrEnum):
    """How a column may be used: summed within bounds, counted by declared category, or the privacy unit."""

    NUMERIC = "numeric"
    CATEGORICAL = "categorical"
    UNIT = "unit"


def parse_exact(value: object, what: str) -> Fraction:
    """Read an exact bound: int, Fraction, Decimal, decimal text, or float (via its shortest repr), through
    the one bounded parser of ``common.numbers`` (form and exponent checked before conversion), and within
    ±:data:`MAX_BOUND`."""
    return numbers.parse_exact(value, what, lo=-MAX_BOUND, hi=MAX_BOUND, ratios=False)


def decimal_text(value: Fraction, decimals: int) -> str:
    """Write a value that is exact at ``decimals`` places as a decimal string (JSON-safe, lossless)."""
    units = value * 10**decimals
    if units.denominator != 1:
        raise PolicyError(f"{value} is not exact at {decimals} decimals")
    return str(Decimal(int(units)).scaleb(-decimals))


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """One declared column. Build with :meth:`numeric`, :meth:`categorical` or :meth:`unit`."""

    name: str
    kind: ColumnKind
    lo: Fraction | None = None
    hi: Fraction | None = None
    decimals: int = 0
    categories: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise PolicyError("a column needs a non-empty name")
        if self.kind is ColumnKind.NUMERIC:
            self._check_numeric()
        elif self.kind is ColumnKind.CATEGORICAL:
            self._check_categorical()
        elif self.lo is not None or self.hi is not None or self.categories:
            raise PolicyError(f"column {self.name!r}: the privacy unit column takes no bounds or categories")

    def _check_numeric(self) -> None:
        if self.categories:
            raise PolicyError(f"numeric column {self.name!r} takes bounds, not categories")
        if isinstance(self.decimals, bool) or not isinstance(self.decimals, int):
            raise PolicyError(f"numeric column {self.name!r}: decimals must be an integer")
        if not 0 <= self.decimals <= MAX_DECIMALS:
            raise PolicyError(f"numeric column {self.name!r}: decimals must be in 0..{MAX_DECIMALS}")
        if self.lo is None or self.hi is None:
            raise PolicyError(f"numeric column {self.name!r} needs both bounds lo and hi")
        if self.lo >= self.hi:
            raise PolicyError(f"numeric column {self.name!r}: lo ({self.lo}) must be below hi ({self.hi})")
        for bound in (self.lo, self.hi):
            if (bound * self.scale).denominator != 1:
                raise PolicyError(
                    f"numeric column {self.name!r}: bound {float(bound)} is not exact at "
                    f"{self.decimals} decimals; raise decimals"
                )
        if self.max_abs_units > MAX_ABS_UNITS:
            raise PolicyError(
                f"numeric column {self.name!r}: bounds times 10^decimals reach {self.max_abs_units} units, above "
                f"2^53 (sums and the float preparation must stay exact); narrow the bounds or lower decimals"
            )

    def _check_categorical(self) -> None:
        if self.lo is not None or self.hi is not None:
            raise PolicyError(f"categorical column {self.name!r} takes categories, not bounds")
        cats = self.categories
        if not isinstance(cats, tuple) or not all(isinstance(c, str) and c for c in cats):
            raise PolicyError(f"categorical column {self.name!r}: categories must be non-empty strings")
        if not 1 <= len(cats) <= MAX_CATEGORIES:
            raise PolicyError(f"categorical column {self.name!r}: declare 1..{MAX_CATEGORIES} categories")
        if len(set(cats)) != len(cats):
            raise PolicyError(f"categorical column {self.name!r}: categories must be unique")
        if OTHER_CATEGORY in cats:
            raise PolicyError(f"categorical column {self.name!r}: {OTHER_CATEGORY!r} is reserved")

    @classmethod
    def numeric(cls, name: str, lo: object, hi: object, decimals: int = 0) -> ColumnSpec:
        """A bounded numeric column; values are clamped to [lo, hi] and kept at ``decimals`` places."""
        return cls(name, ColumnKind.NUMERIC, parse_exact(lo, "lo"), parse_exact(hi, "hi"), decimals)

    @classmethod
    def categorical(cls, name: str, categories: tuple[str, ...] | list[str]) -> ColumnSpec:
        """A categorical column with its public set of categories (others map to OTHER_CATEGORY)."""
        return cls(name, ColumnKind.CATEGORICAL, categories=tuple(categories))

    @classmethod
    def unit(cls, name: str) -> ColumnSpec:
        """The column identifying the privacy unit (a person or a household)."""
        return cls(name, ColumnKind.UNIT)

    @property
    def scale(self) -> int:
        """Fixed-point scale: one unit of the stored integer is ``1 / scale``."""
        return int(10**self.decimals)

    @property
    def lo_units(self) -> int:
        """The lower bound in fixed-point units (numeric columns only)."""
        return self._units(self.lo)

    @property
    def hi_units(self) -> int:
        """The upper bound in fixed-point units (numeric columns only)."""
        return self._units(self.hi)

    @property
    def max_abs_units(self) -> int:
        """The largest absolute value a row may hold, in fixed-point units: one row's sum sensitivity."""
        return max(abs(self.lo_units), abs(self.hi_units))

    @property
    def key_set(self) -> tuple[str, ...]:
        """The public group keys of a categorical column: the declared categories, then OTHER_CATEGORY."""
        if self.kind is not ColumnKind.CATEGORICAL:
            raise PolicyError(f"column {self.name!r} is not categorical")
        return (*self.categories, OTHER_CATEGORY)

    def _units(self, bound: Fraction | None) -> int:
        if bound is None:
            raise PolicyError(f"column {self.name!r} has no bounds")
        return int(bound * self.scale)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (bounds as exact decimal strings)."""
        data: dict[str, Any] = {"name": self.name, "kind": self.kind.value}
        if self.kind is ColumnKind.NUMERIC and self.lo is not None and self.hi is not None:
            data |= {
                "lo": decimal_text(self.lo, self.decimals),
                "hi": decimal_text(self.hi, self.decimals),
                "decimals": self.decimals,
            }
        if self.kind is ColumnKind.CATEGORICAL:
            data["categories"] = list(self.categories)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ColumnSpec:
        """Parse the JSON form produced by :meth:`to_dict`."""
        try:
            kind = ColumnKind(str(data.get("kind")))
        except ValueError as exc:
            raise PolicyError(f"column kind must be one of {[k.value for k in ColumnKind]}") from exc
        name = data.get("name", "")
        _refuse_unknown_keys(f"column {name!r}", data, _COLUMN_KEYS[kind])
        if kind is ColumnKind.NUMERIC:
            return cls.numeric(name, data.get("lo"), data.get("hi"), data.get("decimals", 0))
        if kind is ColumnKind.CATEGORICAL:
            categories = data.get("categories")
            if not isinstance(categories, list | tuple):
                raise PolicyError(f"categorical column {name!r} needs a list of categories")
            return cls.categorical(name, tuple(categories))
        return cls.unit(name)


_POLICY_KEYS = frozenset({"privacy_unit", "max_rows_per_unit", "columns", "total_budget", "sme_cap"})
_BUDGET_KEYS = frozenset({"epsilon_micro", "delta_e12"})
_COLUMN_KEYS = {
    ColumnKind.UNIT: frozenset({"name", "kind"}),
    ColumnKind.NUMERIC: frozenset({"name", "kind", "lo", "hi", "decimals"}),
    ColumnKind.CATEGORICAL: frozenset({"name", "kind", "categories"}),
}


def _refuse_unknown_keys(where: str, data: Mapping[str, Any], known: frozenset[str]) -> None:
    """A misspelt field must not pass unnoticed: a policy that silently drops it protects less than meant."""
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise PolicyError(f"{where} has unknown fields {unknown}; the fields it takes are {sorted(known)}")


def _check_budget_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PolicyError(f"{name} must be a non-negative integer")
    numbers.check_int(value, name, lo=0, hi=numbers.INT64_MAX)  # budgets are BIGINT columns


@dataclass(frozen=True, slots=True)
class DatasetPolicy:
    """The custodian's policy for one dataset: unit, contribution bound, columns and budgets (integers)."""

    privacy_unit: str
    max_rows_per_unit: int
    columns: tuple[ColumnSpec, ...]
    total_epsilon_micro: int
    sme_cap_epsilon_micro: int
    total_delta_e12: int = 0
    sme_cap_delta_e12: int = 0

    def __post_init__(self) -> None:
        k = self.max_rows_per_unit
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_ROWS_PER_UNIT_LIMIT:
            raise PolicyError(f"max_rows_per_unit must be an integer in 1..{MAX_ROWS_PER_UNIT_LIMIT}")
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise PolicyError("column names must be unique")
        units = [c.name for c in self.columns if c.kind is ColumnKind.UNIT]
        if units != [self.privacy_unit]:
            raise PolicyError(
                f"exactly one column must be the privacy unit {self.privacy_unit!r} (declared: {units})"
            )
        self._check_budgets()

    def _check_budgets(self) -> None:
        for name in ("total_epsilon_micro", "sme_cap_epsilon_micro", "total_delta_e12", "sme_cap_delta_e12"):
            _check_budget_int(name, getattr(self, name))
        if max(self.total_delta_e12, self.sme_cap_delta_e12) >= _DELTA_UNITS:
            raise PolicyError("delta budgets must be below 1")
        if self.total_epsilon_micro == 0:
            raise PolicyError("the total epsilon budget must be positive")
        if (
            self.sme_cap_epsilon_micro > self.total_epsilon_micro
            or self.sme_cap_delta_e12 > self.total_delta_e12
        ):
            raise PolicyError("the per-SME cap cannot exceed the dataset's total budget")

    def column(self, name: str) -> ColumnSpec:
        """The declared column ``name``; PolicyError when it is not declared."""
        for col in self.columns:
            if col.name == name:
                return col
        raise PolicyError(f"column {name!r} is not declared in the dataset policy")

    def columns_of(self, kind: ColumnKind) -> tuple[ColumnSpec, ...]:
        """The declared columns of one kind, in declaration order."""
        return tuple(c for c in self.columns if c.kind is kind)

    def to_dict(self) -> dict[str, Any]:
        """JSON form of the policy: schema, bounds, categories and budgets; never any data value."""
        return {
            "privacy_unit": self.privacy_unit,
            "max_rows_per_unit": self.max_rows_per_unit,
            "columns": [c.to_dict() for c in self.columns],
            "total_budget": {"epsilon_micro": self.total_epsilon_micro, "delta_e12": self.total_delta_e12},
            "sme_cap": {"epsilon_micro": self.sme_cap_epsilon_micro, "delta_e12": self.sme_cap_delta_e12},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetPolicy:
        """Parse the JSON form produced by :meth:`to_dict`; any malformed part raises PolicyError."""
        if not isinstance(data, Mapping):
            raise PolicyError("a policy must be a JSON object")
        columns = data.get("columns")
        if not isinstance(columns, list) or not all(isinstance(c, Mapping) for c in columns):
            raise PolicyError("policy.columns must be a list of column objects")
        total, cap = data.get("total_budget"), data.get("sme_cap")
        if not isinstance(total, Mapping) or not isinstance(cap, Mapping):
            raise PolicyError("policy needs total_budget and sme_cap objects")
        _refuse_unknown_keys("the policy", data, _POLICY_KEYS)
        _refuse_unknown_keys("total_budget", total, _BUDGET_KEYS)
        _refuse_unknown_keys("sme_cap", cap, _BUDGET_KEYS)
        return cls(
            privacy_unit=data.get("privacy_unit", ""),
            max_rows_per_unit=data.get("max_rows_per_unit", 0),
            columns=tuple(ColumnSpec.from_dict(c) for c in columns),
            total_epsilon_micro=total.get("epsilon_micro", 0),
            total_delta_e12=total.get("delta_e12", 0),
            sme_cap_epsilon_micro=cap.get("epsilon_micro", 0),
            sme_cap_delta_e12=cap.get("delta_e12", 0),
        )


def check_sum_range(policy: DatasetPolicy, rows: int) -> None:
    """Refuse a bounded version of ``rows`` rows whose exact sum of some numeric column could leave the signed
    64-bit range (``rows · max|bound| > SUM_LIMIT``; see the module docstring)."""
    for col in policy.columns_of(ColumnKind.NUMERIC):
        if rows * col.max_abs_units > SUM_LIMIT:
            raise PolicyError(
                f"numeric column {col.name!r}: {rows} rows of up to {col.max_abs_units} units could sum beyond "
                f"the 64-bit range; at most {SUM_LIMIT // col.max_abs_units} rows fit these bounds — narrow "
                "them, lower decimals or split the dataset"
            )


def validate_against_schema(policy: DatasetPolicy, schema: Mapping[str, str]) -> None:
    """Check that every data column is declared, every declared column exists, and their types agree.

    ``schema`` maps column name → one of :data:`SCHEMA_TYPES` (see ``datasets.prepare.schema_of``).
    """
    declared = {c.name for c in policy.columns}
    undeclared = sorted(set(schema) - declared)
    if undeclared:
        raise PolicyError(f"data columns not declared in the policy: {undeclared}; declare or drop them")
    missing = sorted(declared - set(schema))
    if missing:
        raise PolicyError(f"declared columns missing from the data: {missing}")
    for col in policy.columns:
        dtype = schema[col.name]
        allowed = _COMPATIBLE[col.kind.value]
        if dtype not in allowed:
            raise PolicyError(
                f"column {col.name!r} is declared {col.kind.value} but the data holds {dtype}; "
                f"expected one of {sorted(allowed)}"
            )
