"""Pure ledger rules: how a hold is drawn from grants and co-payment, and how a settlement splits.

The database layer applies these plans with conditional updates; nothing here does I/O. All amounts are
integer credits. Rounding rule: the programme's (voucher) share of any cost is rounded *down* and the SME's
co-payment takes the remainder, so a programme never pays more than its coverage promises.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from common.errors import Conflict, InsufficientFunds, InvalidInput

BASIS_POINTS = 10_000


class AccountKind(StrEnum):
    """What an account holds. Only ``programme`` and ``copay`` may go below zero (to their floor)."""

    PROGRAMME = "programme"  # an issuer's source: minus what its vouchers created
    GRANT = "grant"  # one redeemed voucher's credit on an SME
    COPAY = "copay"  # an SME's co-payment line, floor = minus its co-payment limit
    HELD = "held"  # credit an SME has on hold for running work
    SPENT = "spent"  # what a programme's vouchers paid (per issuer)
    COPAID = "copaid"  # what an SME co-paid
    EXPIRED = "expired"  # credit that expired unused (per issuer)


class HoldState(StrEnum):
    """``HELD → SETTLED | RELEASED | EXPIRED``; the three outcomes are terminal."""

    HELD = "HELD"
    SETTLED = "SETTLED"
    RELEASED = "RELEASED"
    EXPIRED = "EXPIRED"

    @property
    def is_terminal(self) -> bool:
        """True for every state but ``HELD``."""
        return self is not HoldState.HELD


def close_hold(current: HoldState, target: HoldState) -> HoldState:
    """Return ``target`` if a hold in ``current`` may move there, else raise :class:`Conflict`."""
    if current is HoldState.HELD and target.is_terminal:
        return target
    raise Conflict(
        f"hold is {current.value}; it cannot become {target.value} (a hold is closed exactly once)",
        code="hold_closed",
    )


@dataclass(frozen=True, slots=True)
class GrantBalance:
    """What admission may draw from one grant: its account, balance and coverage."""

    grant_id: str
    account_id: int
    balance: int
    coverage_bps: int
    expires_ms: int
    resources: frozenset[str]


@dataclass(frozen=True, slots=True)
class HoldLine:
    """One source of a hold: ``amount`` credits moved from ``account_id`` into the SME's held account."""

    account_id: int
    amount: int
    voucher: bool  # True for a grant (programme pays), False for co-payment
    grant_id: str | None = None


@dataclass(frozen=True, slots=True)
class HoldPlan:
    """The lines of a hold; ``voucher_total + copay_total == total``."""

    lines: tuple[HoldLine, ...]

    @property
    def total(self) -> int:
        """Sum of all lines."""
        return sum(line.amount for line in self.lines)

    @property
    def voucher_total(self) -> int:
        """What the programme's grants put on hold."""
        return sum(line.amount for line in self.lines if line.voucher)

    @property
    def copay_total(self) -> int:
        """What the SME's co-payment line put on hold."""
        return sum(line.amount for line in self.lines if not line.voucher)


def eligible_grants(
    grants: list[GrantBalance], *, resource_classes: frozenset[str], now_ms: int
) -> list[GrantBalance]:
    """Grants that may pay for work using ``resource_classes``, the one expiring first first."""
    usable = [
        g
        for g in grants
        if g.balance > 0 and g.expires_ms > now_ms and resource_classes <= g.resources and g.coverage_bps > 0
    ]
    return sorted(usable, key=lambda g: (g.expires_ms, g.grant_id))


def plan_hold(
    amount: int,
    grants: list[GrantBalance],
    *,
    copay_account_id: int,
    copay_headroom: int,
) -> HoldPlan:
    """Split a hold of ``amount`` over ``grants`` (already ordered, see :func:`eligible_grants`).

    Each grant pays its coverage share of the part of the cost it covers (rounded down); the SME co-pays
    the rest of that part, and all of any part no grant covers. Raises :class:`InsufficientFunds` when the
    co-payment needed exceeds ``copay_headroom``.
    """
    if amount <= 0:
        raise InvalidInput(f"a hold must be a positive number of credits, got {amount}")
    remaining = amount
    lines: list[HoldLine] = []
    copay = 0
    for grant in grants:
        if remaining == 0:
            break
        covered_part = min(remaining, grant.balance * BASIS_POINTS // grant.coverage_bps)
        voucher_share = covered_part * grant.coverage_bps // BASIS_POINTS
        if voucher_share > 0:
            lines.append(HoldLine(grant.account_id, voucher_share, True, grant.grant_id))
        copay += covered_part - voucher_share
        remaining -= covered_part
    copay += remaining
    if copay > copay_headroom:
        voucher = amount - copay
        raise InsufficientFunds(
            f"this needs {amount} credits: vouchers can cover {voucher} and the co-payment would be {copay}, "
            f"but only {max(copay_headroom, 0)} co-payment is available (short by "
            f"{copay - max(copay_headroom, 0)}); redeem another voucher or ask an operator to raise "
            "the co-payment limit"
        )
    if copay > 0:
        lines.append(HoldLine(copay_account_id, copay, False, None))
    return HoldPlan(tuple(lines))


def split_settlement(lines: tuple[HoldLine, ...], cost: int) -> list[tuple[HoldLine, int, int]]:
    """Split a settled ``cost`` across a hold's lines pro rata: ``(line, settled, released)`` per line.

    Shares are floors of ``cost * line / total``; the remainder goes one credit at a time to the lines with
    the largest fractional parts (ties: earlier line first), so ``sum(settled) == cost`` and every line
    satisfies ``settled + released == amount`` with ``settled <= amount``.
    """
    total = sum(line.amount for line in lines)
    if cost < 0 or cost > total:
        raise InvalidInput(f"a settlement must be between 0 and the held {total} credits, got {cost}")
    if total == 0:
        return [(line, 0, 0) for line in lines]
    floors = [cost * line.amount // total for line in lines]
    remainders = [cost * line.amount % total for line in lines]
    missing = cost - sum(floors)
    order = sorted(range(len(lines)), key=lambda i: (-remainders[i], i))
    for i in order[:missing]:
        floors[i] += 1
    return [(line, s, line.amount - s) for line, s in zip(lines, floors, strict=True)]
