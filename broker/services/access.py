"""Role and organisation scope checks shared by every service."""

from __future__ import annotations

from broker.db.orgs import Principal
from broker.errors import Forbidden
from common.errors import NotFound


def require_role(principal: Principal, *roles: str) -> None:
    """Refuse (403) a caller whose role is not one of ``roles``."""
    if principal.role not in roles:
        raise Forbidden(f"this needs the role {' or '.join(roles)}; your token is for a {principal.role}")


def own_or_operator(principal: Principal, org_id: str | None) -> str:
    """The organisation a call is about: the caller's own, or any one an operator names.

    A non-operator naming another organisation gets the same 404 as for a missing one.
    """
    if org_id is None or org_id == principal.org_id:
        return principal.org_id
    if principal.role == "operator":
        return org_id
    raise NotFound(f"no organisation {org_id}")


def read_scope(principal: Principal) -> str | None:
    """The organisation a listing is limited to: the caller's own, or none for operators (they see all)."""
    return None if principal.role == "operator" else principal.org_id


def visible(principal: Principal, *owners: str | None) -> bool:
    """True when the caller may see an object owned by any of ``owners`` (operators see everything)."""
    return principal.role == "operator" or principal.org_id in owners
