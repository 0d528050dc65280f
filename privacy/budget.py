"""Exact privacy values: a cost (ε, δ) as integers, sequential composition as addition.

Units: ε in micro-ε (``epsilon_micro``, 1 = 10⁻⁶ ε) and δ in units of 10⁻¹² (``delta_e12``). Every stored,
compared or added budget is one of these integers, so sums never drift.

Rounding rule (the only place a float or a Fraction becomes a cost): round **up** to the next unit. A recorded
cost is therefore never smaller than the true cost, so a budget can only be over-charged, never
under-charged. The same rule is used by :func:`PrivacyCost.from_float` and :func:`PrivacyCost.from_fraction`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from common.errors import DomainError, InvalidInput
from common.numbers import INT64_MAX, check_int
from datasets.approval import Grant
from datasets.policy import DatasetPolicy

EPSILON_UNITS = 1_000_000
DELTA_UNITS = 1_000_000_000_000


class BudgetExceeded(DomainError):
    """A privacy cost does not fit in what is left of a budget (dataset total, grant, or per-SME cap)."""

    code = "budget_exceeded"

    def __init__(self, detail: str, *, requested: PrivacyCost, remaining: PrivacyCost) -> None:
        super().__init__(detail)
        self.requested = requested
        self.remaining = remaining


def _ceil_units(value: Fraction, units: int) -> int:
    return math.ceil(value * units)


def _decimal_text(amount: int, units: int) -> str:
    """Write ``amount / units`` exactly in decimal, without trailing zeros (units: a power of 10)."""
    digits = len(str(units)) - 1
    whole, frac = divmod(amount, units)
    if frac == 0:
        return str(whole)
    return f"{whole}.{str(frac).rjust(digits, '0').rstrip('0')}"


@dataclass(frozen=True, slots=True)
class PrivacyCost:
    """An exact privacy cost or budget: ε in micro-ε and δ in 10⁻¹² units, both non-negative integers."""

    epsilon_micro: int
    delta_e12: int = 0

    def __post_init__(self) -> None:
        for name in ("epsilon_micro", "delta_e12"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInput(f"{name} must be an integer, got {type(value).__name__}")
            check_int(value, name, lo=0, hi=INT64_MAX)  # stored in BIGINT columns: signed 64-bit
        if self.delta_e12 >= DELTA_UNITS:
            raise InvalidInput(f"delta must be < 1, got {self.delta_e12} x 1e-12")

    @classmethod
    def zero(cls) -> PrivacyCost:
        """The cost of doing nothing (the neutral element of composition)."""
        return cls(0, 0)

    @classmethod
    def from_fraction(cls, epsilon: Fraction | int, delta: Fraction | int = 0) -> PrivacyCost:
        """Build a cost from exact values, rounding each **up** to the next unit (see module rule)."""
        return cls(_ceil_units(Fraction(epsilon), EPSILON_UNITS), _ceil_units(Fraction(delta), DELTA_UNITS))

    @classmethod
    def from_float(cls, epsilon: float, delta: float = 0.0) -> PrivacyCost:
        """Build a cost from floats (e.g. an accountant's ε), rounding **up** on the float's exact value."""
        for name, value in (("epsilon", epsilon), ("delta", delta)):
            if not math.isfinite(value):
                raise InvalidInput(f"{name} must be finite, got {value!r}")
        return cls.from_fraction(Fraction(epsilon), Fraction(delta))

    @property
    def epsilon(self) -> Fraction:
        """ε as an exact fraction."""
        return Fraction(self.epsilon_micro, EPSILON_UNITS)

    @property
    def delta(self) -> Fraction:
        """δ as an exact fraction."""
        return Fraction(self.delta_e12, DELTA_UNITS)

    def __add__(self, other: PrivacyCost) -> PrivacyCost:
        """Sequential composition: ε and δ add."""
        if not isinstance(other, PrivacyCost):
            return NotImplemented
        return PrivacyCost(self.epsilon_micro + other.epsilon_micro, self.delta_e12 + other.delta_e12)

    def fits_within(self, budget: PrivacyCost) -> bool:
        """True when this cost is at most ``budget`` in both ε and δ (a partial order, not a total one)."""
        return self.epsilon_micro <= budget.epsilon_micro and self.delta_e12 <= budget.delta_e12

    def remaining_after(self, spent: PrivacyCost) -> PrivacyCost:
        """What is left of this budget after ``spent``; refuses (BudgetExceeded) rather than go negative."""
        check_fits(spent, self, what="budget")
        return PrivacyCost(self.epsilon_micro - spent.epsilon_micro, self.delta_e12 - spent.delta_e12)

    def shortfall(self, remaining: PrivacyCost) -> PrivacyCost:
        """By how much this cost exceeds ``remaining`` in each component (zero where it fits)."""
        return PrivacyCost(
            max(0, self.epsilon_micro - remaining.epsilon_micro), max(0, self.delta_e12 - remaining.delta_e12)
        )

    def to_display(self) -> str:
        """Human text with exact decimals, e.g. ``ε=0.5`` or ``ε=1.25, δ=0.000001``."""
        text = f"ε={_decimal_text(self.epsilon_micro, EPSILON_UNITS)}"
        if self.delta_e12:
            text += f", δ={_decimal_text(self.delta_e12, DELTA_UNITS)}"
        return text

    def to_dict(self) -> dict[str, int]:
        """JSON form (integers only), the inverse of :meth:`from_dict`."""
        return {"epsilon_micro": self.epsilon_micro, "delta_e12": self.delta_e12}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrivacyCost:
        """Parse the JSON form; unknown keys or non-integers are refused."""
        extra = set(data) - {"epsilon_micro", "delta_e12"}
        if extra:
            raise InvalidInput(f"unknown privacy cost fields: {sorted(extra)}")
        if "epsilon_micro" not in data:
            raise InvalidInput("privacy cost needs epsilon_micro")
        return cls(data["epsilon_micro"], data.get("delta_e12", 0))


def compose(costs: Iterable[PrivacyCost]) -> PrivacyCost:
    """Sequential composition of several releases on the same data: the sum of their costs."""
    total = PrivacyCost.zero()
    for cost in costs:
        total = total + cost
    return total


def format_insufficient_budget(requested: PrivacyCost, remaining: PrivacyCost, *, what: str) -> str:
    """Explain a refusal: what was requested, what remains of ``what``, and by how much it falls short."""
    return (
        f"insufficient {what}: requested {requested.to_display()}, remaining {remaining.to_display()}, "
        f"short by {requested.shortfall(remaining).to_display()}; ask for less or for a larger grant"
    )


def check_fits(requested: PrivacyCost, remaining: PrivacyCost, *, what: str) -> None:
    """Raise :class:`BudgetExceeded` unless ``requested`` fits within ``remaining``."""
    if not requested.fits_within(remaining):
        raise BudgetExceeded(
            format_insufficient_budget(requested, remaining, what=what),
            requested=requested,
            remaining=remaining,
        )


def check_all_fit(requested: PrivacyCost, remaining: Mapping[str, PrivacyCost]) -> None:
    """Refuse unless ``requested`` fits every named remaining budget; the first that does not is named.

    For a reservation: ``{"dataset budget": total - spent_by_all, "grant": cap - spent_by_sme}``. The repository
    re-checks the same inequalities in its conditional UPDATE; this gives the human message.
    """
    for what, left in remaining.items():
        check_fits(requested, left, what=what)


def dataset_total_budget(policy: DatasetPolicy) -> PrivacyCost:
    """A dataset's total budget (all SMEs together) as a PrivacyCost."""
    return PrivacyCost(policy.total_epsilon_micro, policy.total_delta_e12)


def dataset_sme_cap(policy: DatasetPolicy) -> PrivacyCost:
    """A dataset's per-SME cap as a PrivacyCost."""
    return PrivacyCost(policy.sme_cap_epsilon_micro, policy.sme_cap_delta_e12)


def grant_cap(grant: Grant) -> PrivacyCost:
    """What an approval lets one SME spend on one dataset version, as a PrivacyCost."""
    return PrivacyCost(grant.epsilon_cap_micro, grant.delta_cap_e12)
