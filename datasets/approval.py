"""Access requests and their approval: a self-guarding state machine over plain values.

``PENDING → APPROVED | REFUSED`` and ``APPROVED → REVOKED | EXPIRED``; REFUSED, REVOKED and EXPIRED are
terminal. An approval is bound to what it approves (:class:`Grant`): the dataset version (content hash), the
SME, an ε/δ cap (at most what was asked and at most the dataset's per-SME cap), the allowed release kinds
and an expiry. Budgets are the integers of ``privacy.budget`` (micro-ε, δ in 10⁻¹²).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from common.clock import Clock
from common.errors import Conflict, DomainError, InvalidInput
from datasets.policy import DatasetPolicy


class AccessDenied(DomainError):
    """An action is not covered by an approved, unexpired grant for this dataset version and kind."""

    code = "access_denied"


class AccessStatus(StrEnum):
    """The life of an access request."""

    PENDING = "pending"
    APPROVED = "approved"
    REFUSED = "refused"
    REVOKED = "revoked"
    EXPIRED = "expired"

    def is_terminal(self) -> bool:
        """True for states a request never leaves."""
        return self in _TERMINAL


_TERMINAL = frozenset({AccessStatus.REFUSED, AccessStatus.REVOKED, AccessStatus.EXPIRED})
_ALLOWED: dict[AccessStatus, frozenset[AccessStatus]] = {
    AccessStatus.PENDING: frozenset({AccessStatus.APPROVED, AccessStatus.REFUSED}),
    AccessStatus.APPROVED: frozenset({AccessStatus.REVOKED, AccessStatus.EXPIRED}),
}


class ReleaseKind(StrEnum):
    """What a grant may release: DP aggregate queries, DP-SGD training, or both."""

    QUERY = "query"
    TRAINING = "training"


def check_transition(current: AccessStatus, target: AccessStatus) -> None:
    """Raise Conflict unless ``current → target`` is a legal move."""
    if target not in _ALLOWED.get(current, frozenset()):
        raise Conflict(f"an access request cannot go from {current.value} to {target.value}")


@dataclass(frozen=True, slots=True)
class Grant:
    """What an approval allows: one SME, one dataset version, a budget cap, release kinds, an expiry."""

    dataset_hash: str
    sme_org: str
    epsilon_cap_micro: int
    delta_cap_e12: int
    kinds: frozenset[ReleaseKind]
    expires_ms: int


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """An SME's request for access to one dataset version, and its decision."""

    request_id: str
    dataset_hash: str
    sme_org: str
    purpose: str
    asked_epsilon_micro: int
    asked_delta_e12: int
    asked_kinds: frozenset[ReleaseKind]
    created_ms: int
    status: AccessStatus = AccessStatus.PENDING
    grant: Grant | None = None
    decided_ms: int | None = None
    reason: str = ""


def _non_negative_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"{name} must be a non-negative integer")
    return value


def new_request(
    *,
    request_id: str,
    dataset_hash: str,
    sme_org: str,
    purpose: str,
    epsilon_micro: int,
    delta_e12: int = 0,
    kinds: frozenset[ReleaseKind] | set[ReleaseKind],
    clock: Clock,
) -> AccessRequest:
    """Validate and open a PENDING request (ε > 0, a purpose, at least one release kind)."""
    if not purpose.strip():
        raise InvalidInput("an access request needs a purpose")
    if _non_negative_int("epsilon_micro", epsilon_micro) == 0:
        raise InvalidInput("an access request must ask for a positive epsilon")
    _non_negative_int("delta_e12", delta_e12)
    if not kinds:
        raise InvalidInput("ask for at least one release kind (query, training)")
    return AccessRequest(
        request_id=request_id,
        dataset_hash=dataset_hash,
        sme_org=sme_org,
        purpose=purpose.strip(),
        asked_epsilon_micro=epsilon_micro,
        asked_delta_e12=delta_e12,
        asked_kinds=frozenset(ReleaseKind(k) for k in kinds),
        created_ms=clock.now_ms(),
    )


def _grant_for(
    req: AccessRequest,
    policy: DatasetPolicy,
    epsilon_cap_micro: int | None,
    delta_cap_e12: int | None,
    kinds: frozenset[ReleaseKind] | None,
    expires_ms: int,
) -> Grant:
    eps = req.asked_epsilon_micro if epsilon_cap_micro is None else epsilon_cap_micro
    delta = req.asked_delta_e12 if delta_cap_e12 is None else delta_cap_e12
    if _non_negative_int("epsilon_cap_micro", eps) == 0:
        raise InvalidInput("an approval must grant a positive epsilon (refuse the request instead)")
    _non_negative_int("delta_cap_e12", delta)
    if eps > req.asked_epsilon_micro or delta > req.asked_delta_e12:
        raise InvalidInput("an approval cannot grant more epsilon or delta than was asked")
    if eps > policy.sme_cap_epsilon_micro or delta > policy.sme_cap_delta_e12:
        raise InvalidInput(
            f"the grant exceeds the dataset's per-SME cap (ε cap {policy.sme_cap_epsilon_micro} micro-ε, "
            f"δ cap {policy.sme_cap_delta_e12} e-12)"
        )
    granted = req.asked_kinds if kinds is None else frozenset(kinds)
    if not granted or not granted <= req.asked_kinds:
        raise InvalidInput("approve a non-empty subset of the release kinds asked for")
    return Grant(req.dataset_hash, req.sme_org, eps, delta, granted, expires_ms)


def approve(
    req: AccessRequest,
    policy: DatasetPolicy,
    *,
    expires_ms: int,
    clock: Clock,
    epsilon_cap_micro: int | None = None,
    delta_cap_e12: int | None = None,
    kinds: frozenset[ReleaseKind] | None = None,
) -> AccessRequest:
    """Approve a PENDING request, possibly with a smaller cap or fewer kinds; binds the :class:`Grant`."""
    check_transition(req.status, AccessStatus.APPROVED)
    now = clock.now_ms()
    if expires_ms <= now:
        raise InvalidInput("an approval must expire in the future")
    grant = _grant_for(req, policy, epsilon_cap_micro, delta_cap_e12, kinds, expires_ms)
    return replace(req, status=AccessStatus.APPROVED, grant=grant, decided_ms=now)


def refuse(req: AccessRequest, *, reason: str, clock: Clock) -> AccessRequest:
    """Refuse a PENDING request with a reason the SME will read."""
    check_transition(req.status, AccessStatus.REFUSED)
    return replace(req, status=AccessStatus.REFUSED, decided_ms=clock.now_ms(), reason=reason)


def revoke(req: AccessRequest, *, reason: str, clock: Clock) -> AccessRequest:
    """Revoke an APPROVED request (the caller cancels its queued work in the same transaction)."""
    check_transition(req.status, AccessStatus.REVOKED)
    return replace(req, status=AccessStatus.REVOKED, decided_ms=clock.now_ms(), reason=reason)


def expire_if_due(req: AccessRequest, *, clock: Clock) -> AccessRequest:
    """Move an APPROVED request whose grant has expired to EXPIRED; any other request is returned as is."""
    if (
        req.status is AccessStatus.APPROVED
        and req.grant is not None
        and clock.now_ms() >= req.grant.expires_ms
    ):
        check_transition(req.status, AccessStatus.EXPIRED)
        return replace(req, status=AccessStatus.EXPIRED, reason="grant expired")
    return req


def check_use(
    req: AccessRequest, *, dataset_hash: str, sme_org: str, kind: ReleaseKind, clock: Clock
) -> Grant:
    """Return the grant if it covers this SME, dataset version and release kind now; else AccessDenied."""
    current = expire_if_due(req, clock=clock)
    grant = current.grant
    if current.status is not AccessStatus.APPROVED or grant is None:
        raise AccessDenied(f"no approved access: the request is {current.status.value}")
    if grant.sme_org != sme_org:
        raise AccessDenied("this grant belongs to another organisation")
    if grant.dataset_hash != dataset_hash:
        raise AccessDenied("the grant covers another version of this dataset; ask for access again")
    if kind not in grant.kinds:
        raise AccessDenied(f"the grant does not allow {kind.value} releases")
    return grant
