"""Issuance rules: a programme's yearly budget and its per-SME cap (pure integer arithmetic)."""

from __future__ import annotations

from datetime import UTC, datetime

from common.errors import InvalidInput
from vouchers.errors import PROGRAMME_BUDGET_EXCEEDED, SME_CAP_EXCEEDED, IssuanceRefused


def _non_negative(name: str, value: int) -> None:
    if type(value) is not int or value < 0:
        raise InvalidInput(f"{name} must be a non-negative integer number of credits, got {value!r}")


def _shortfall_message(what: str, *, requested: int, limit: int, used: int) -> str:
    """Say what was asked, what is left, and by how much it is short (after Tumult's budget messages)."""
    remaining = max(limit - used, 0)
    return (
        f"Issuing {requested} credits would exceed the {what}: requested {requested}, remaining {remaining} "
        f"(limit {limit}, already issued {used}); short by {requested - remaining}. "
        f"Issue at most {remaining} credits, or raise the limit."
    )


def check_issuance(
    *,
    amount: int,
    programme_year_budget: int,
    issued_this_year: int,
    sme_cap: int,
    issued_to_sme_total: int,
) -> None:
    """Refuse issuing ``amount`` credits beyond the programme's budget for the year or the SME's cap.

    ``issued_this_year`` is what the programme already issued in the voucher's budget year (see
    :func:`year_of`); ``issued_to_sme_total`` what it already issued to this SME. Revoked vouchers count as
    the caller decides (the database layer sums them). Raises :class:`IssuanceRefused` with code
    ``programme_budget_exceeded`` (checked first) or ``sme_cap_exceeded``; ``InvalidInput`` for a
    non-positive amount or negative totals.
    """
    if type(amount) is not int or amount <= 0:
        raise InvalidInput(f"a voucher must carry a positive integer number of credits, got {amount!r}")
    _non_negative("programme_year_budget", programme_year_budget)
    _non_negative("issued_this_year", issued_this_year)
    _non_negative("sme_cap", sme_cap)
    _non_negative("issued_to_sme_total", issued_to_sme_total)
    if issued_this_year + amount > programme_year_budget:
        raise IssuanceRefused(
            PROGRAMME_BUDGET_EXCEEDED,
            _shortfall_message(
                "programme's budget for this year",
                requested=amount,
                limit=programme_year_budget,
                used=issued_this_year,
            ),
        )
    if issued_to_sme_total + amount > sme_cap:
        raise IssuanceRefused(
            SME_CAP_EXCEEDED,
            _shortfall_message("cap for this SME", requested=amount, limit=sme_cap, used=issued_to_sme_total),
        )


def year_of(ts_s: int) -> int:
    """Return the UTC calendar year of ``ts_s`` (epoch seconds): the budget year a voucher counts against."""
    return datetime.fromtimestamp(ts_s, tz=UTC).year
