"""Rate cards and job pricing: exact arithmetic, one ceiling at the end.

A :class:`RateCard` says how many credits one CPU-second, GPU-second and GiB-second cost. Rates are
``fractions.Fraction`` (or ``int``) so that "1/3 credit per CPU-second" is exact; floats are refused.

Rounding rule (see ``docs/architecture.md``): every cost is computed exactly as a ``Fraction`` over the
whole quantity and rounded **up once**, at the end, to whole credits. Metering (``quotas.metering.cost_of``)
uses the same exact per-unit rates, so pricing a job's usage records gives the same integer as pricing its
resources for the same duration.

Splitting a cost into the voucher-covered share and the SME's co-payment: the covered share is
``floor(cost * coverage_bps / 10000)`` and the co-payment is the rest. The programme (public money) therefore
never pays more than its declared coverage; a fractional credit falls to the co-payment.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from common.errors import InvalidInput
from common.numbers import parse_exact
from common.resources import Resources

BPS_DENOMINATOR = 10_000
"""Coverage is given in basis points: 10000 = the programme pays 100%."""

MS_PER_S = 1_000
MILLI_PER_CPU = 1_000
MIB_PER_GIB = 1_024

_RATIO_TEXT = re.compile(r"[0-9]{1,30}(?:/[0-9]{1,30})?", re.ASCII)
_RATE_FIELDS = ("credits_per_cpu_second", "credits_per_gpu_second", "credits_per_gib_second")


def _exact_rate(name: str, value: object) -> Fraction:
    """Return ``value`` as a non-negative Fraction, refusing floats, bools and anything inexact."""
    if isinstance(value, bool) or not isinstance(value, int | Fraction):
        raise InvalidInput(f"{name} must be an int or fractions.Fraction (never a float), got {value!r}")
    rate = Fraction(value)
    if rate < 0:
        raise InvalidInput(f"{name} must be non-negative, got {rate}")
    return rate


@dataclass(frozen=True, slots=True)
class RateCard:
    """A versioned price list: credits per CPU-second, GPU-second and GiB-second of allocation.

    Rates are stored as ``Fraction`` whatever exact type was passed in. ``version`` is a non-negative integer
    (0 for a built-in default card); a hold or settlement records the version it was priced with so a later
    card never re-prices old jobs.
    """

    version: int
    credits_per_cpu_second: Fraction
    credits_per_gpu_second: Fraction
    credits_per_gib_second: Fraction

    def __init__(
        self,
        version: int,
        credits_per_cpu_second: Fraction | int,
        credits_per_gpu_second: Fraction | int,
        credits_per_gib_second: Fraction | int,
    ) -> None:
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise InvalidInput(f"rate card version must be a non-negative integer, got {version!r}")
        object.__setattr__(self, "version", version)
        for name, value in zip(
            _RATE_FIELDS,
            (credits_per_cpu_second, credits_per_gpu_second, credits_per_gib_second),
            strict=True,
        ):
            object.__setattr__(self, name, _exact_rate(name, value))

    # Exact per-unit rates in the units our integers use (milli-CPU·ms, GPU·ms, MiB·ms).

    @property
    def per_milli_cpu_ms(self) -> Fraction:
        """Credits per milli-CPU per millisecond."""
        return self.credits_per_cpu_second / (MILLI_PER_CPU * MS_PER_S)

    @property
    def per_gpu_ms(self) -> Fraction:
        """Credits per GPU per millisecond."""
        return self.credits_per_gpu_second / MS_PER_S

    @property
    def per_mib_ms(self) -> Fraction:
        """Credits per MiB per millisecond."""
        return self.credits_per_gib_second / (MIB_PER_GIB * MS_PER_S)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict; rates are written as ``"numerator/denominator"`` strings (exact)."""
        return {
            "version": self.version,
            **{name: _fraction_to_str(getattr(self, name)) for name in _RATE_FIELDS},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RateCard:
        """Rebuild a card from :meth:`to_dict` output (rates may be ints or ``"n/d"`` strings)."""
        try:
            version = data["version"]
            rates = [_fraction_from_json(name, data[name]) for name in _RATE_FIELDS]
        except KeyError as exc:
            raise InvalidInput(f"rate card is missing field {exc.args[0]!r}") from exc
        return cls(version, *rates)

    def to_json(self) -> str:
        """Serialise to a canonical JSON string (sorted keys) for storage."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> RateCard:
        """Parse :meth:`to_json` output."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"rate card is not valid JSON: {exc.msg}") from exc
        if not isinstance(data, dict):
            raise InvalidInput("rate card JSON must be an object")
        return cls.from_dict(data)


def _fraction_to_str(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _fraction_from_json(name: str, value: object) -> Fraction | int:
    """Accept an int or an exact ``"n"``/``"n/d"`` string; refuse floats and decimal strings."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        if _RATIO_TEXT.fullmatch(value) is None:
            raise InvalidInput(f"{name} must be 'n' or 'n/d' with integers, got {value[:40]!r}")
        return parse_exact(value, name, lo=0)  # the one bounded parser (common.numbers)
    raise InvalidInput(f"{name} must be an integer or an 'n/d' string, got {value!r}")


def ceil_credits(amount: Fraction) -> int:
    """Round an exact non-negative credit amount up to whole credits (the one rounding step)."""
    return -((-amount.numerator) // amount.denominator)


def exact_cost(resources: Resources, duration_ms: int, card: RateCard) -> Fraction:
    """Return the exact (unrounded) cost of holding ``resources`` for ``duration_ms`` milliseconds."""
    if isinstance(duration_ms, bool) or not isinstance(duration_ms, int) or duration_ms < 0:
        raise InvalidInput(f"duration_ms must be a non-negative integer, got {duration_ms!r}")
    per_ms = (
        card.per_milli_cpu_ms * resources.milli_cpu
        + card.per_gpu_ms * resources.gpus
        + card.per_mib_ms * resources.memory_mib
    )
    return per_ms * duration_ms


def price(resources: Resources, duration_ms: int, card: RateCard) -> int:
    """Price ``resources`` allocated for ``duration_ms``: exact, then rounded up once to whole credits."""
    return ceil_credits(exact_cost(resources, duration_ms, card))


def max_cost(resources: Resources, max_runtime_s: int, card: RateCard) -> int:
    """The most a job can cost: its resources for its whole maximum runtime (what a hold reserves)."""
    if isinstance(max_runtime_s, bool) or not isinstance(max_runtime_s, int) or max_runtime_s <= 0:
        raise InvalidInput(f"max_runtime_s must be a positive integer, got {max_runtime_s!r}")
    return price(resources, max_runtime_s * MS_PER_S, card)


def split_cost(cost: int, coverage_bps: int) -> tuple[int, int]:
    """Split ``cost`` into ``(covered, copay)``: covered = floor(cost * bps / 10000), copay the rest."""
    if isinstance(cost, bool) or not isinstance(cost, int) or cost < 0:
        raise InvalidInput(f"cost must be a non-negative integer, got {cost!r}")
    if isinstance(coverage_bps, bool) or not isinstance(coverage_bps, int):
        raise InvalidInput(f"coverage_bps must be an integer, got {coverage_bps!r}")
    if not 0 <= coverage_bps <= BPS_DENOMINATOR:
        raise InvalidInput(f"coverage_bps must be between 0 and {BPS_DENOMINATOR}, got {coverage_bps}")
    covered = cost * coverage_bps // BPS_DENOMINATOR
    return covered, cost - covered


@dataclass(frozen=True, slots=True)
class Quote:
    """What a job would reserve before it runs: its maximum cost and how that splits.

    ``covered`` is the voucher-covered share (drawn from credit grants), ``copay`` the SME's co-payment
    (counted against its co-payment limit). ``covered + copay == max_cost`` always.
    """

    rate_card_version: int
    max_cost: int
    coverage_bps: int
    covered: int
    copay: int

    def affordable(self, available_credit: int, copay_headroom: int) -> bool:
        """True when both shares fit: covered within voucher credit, copay within co-payment headroom."""
        return self.covered <= available_credit and self.copay <= copay_headroom


def quote(resources: Resources, max_runtime_s: int, card: RateCard, coverage_bps: int) -> Quote:
    """Quote a job: max cost of ``resources`` over ``max_runtime_s`` split by ``coverage_bps``."""
    cost = max_cost(resources, max_runtime_s, card)
    covered, copay = split_cost(cost, coverage_bps)
    return Quote(card.version, cost, coverage_bps, covered, copay)
