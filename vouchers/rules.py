"""Issuance rules: a programme's yearly budget and its per-SME cap (pure integer arithmetic)."""

from __future__ import annotations

from datetime import UTC, datetime

from common.errors import InvalidInput
from vouchers.errors import PROGRAMME_BUDGET_EXCEEDED, SME_CAP_EXCEEDED, IssuanceRefused


def _non_negative(name: str, value: int) -> None:
    if type(value) is not int or value < 0:
        raise InvalidInput(f"{name} must be a non-negative integer number of credits, got {value!r}")


_WORDING = {
    "Issuing": ("issued", "Issue at most {remaining} credits, or raise the limit."),
    "Redeeming": ("redeemed", "The issuer must raise the limit before this voucher can be redeemed."),
}


def _shortfall_message(what: str, *, verb: str, requested: int, limit: int, used: int) -> str:
    """Say what was asked, what is left, and by how much it is short (after Tumult's budget messages)."""
    remaining = max(limit - used, 0)
    done, advice = _WORDING[verb]
    return (
        f"{verb} {requested} credits would exceed the {what}: requested {requested}, remaining {remaining} "
        f"(limit {limit}, already {done} {used}); short by {requested - remaining}. "
        + advice.format(remaining=remaining)
    )


def _check_limits(
    *, verb: str, amount: int, year_budget: int, used_this_year: int, sme_cap: int, used_by_sme: int
) -> None:
    """Refuse ``amount`` on top of ``used_*`` beyond the year budget (checked first) or the SME cap."""
    if type(amount) is not int or amount <= 0:
        raise InvalidInput(f"a voucher must carry a positive integer number of credits, got {amount!r}")
    _non_negative("programme_year_budget", year_budget)
    _non_negative("used_this_year", used_this_year)
    _non_negative("sme_cap", sme_cap)
    _non_negative("used_by_sme", used_by_sme)
    if used_this_year + amount > year_budget:
        raise IssuanceRefused(
            PROGRAMME_BUDGET_EXCEEDED,
            _shortfall_message(
                "programme's budget for this year",
                verb=verb,
                requested=amount,
                limit=year_budget,
                used=used_this_year,
            ),
        )
    if used_by_sme + amount > sme_cap:
        raise IssuanceRefused(
            SME_CAP_EXCEEDED,
            _shortfall_message(
                "cap for this SME", verb=verb, requested=amount, limit=sme_cap, used=used_by_sme
            ),
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
    _check_limits(
        verb="Issuing",
        amount=amount,
        year_budget=programme_year_budget,
        used_this_year=issued_this_year,
        sme_cap=sme_cap,
        used_by_sme=issued_to_sme_total,
    )


def check_redemption(
    *,
    amount: int,
    programme_year_budget: int,
    redeemed_this_year: int,
    sme_cap: int,
    redeemed_by_sme_total: int,
) -> None:
    """Refuse redeeming ``amount`` credits when the credit already granted would pass a limit.

    Checked again at redemption because issuance is not the only way a record can come to exist (a limit
    lowered since, a row written into the database by someone who holds it): whatever the records say, the
    credit actually granted from a programme never exceeds its year budget or its cap for one SME.
    ``redeemed_*`` count the other vouchers already redeemed (year of ``nbf``; all years for the SME).
    Same codes as :func:`check_issuance`.
    """
    _check_limits(
        verb="Redeeming",
        amount=amount,
        year_budget=programme_year_budget,
        used_this_year=redeemed_this_year,
        sme_cap=sme_cap,
        used_by_sme=redeemed_by_sme_total,
    )


def year_of(ts_s: int) -> int:
    """Return the UTC calendar year of ``ts_s`` (epoch seconds): the budget year a voucher counts against."""
    return datetime.fromtimestamp(ts_s, tz=UTC).year
