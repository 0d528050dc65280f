"""Every route declares who may call it; the tenant-isolation test reads these declarations."""

from __future__ import annotations

from typing import Any

POLICY_KEY = "x-sbx-policy"
KNOWN = {"public", "any", "operator", "issuer", "custodian", "sme", "own"}


def policy(*who: str) -> dict[str, Any]:
    """``openapi_extra`` declaring the roles (or ``public``/``any``/``own``) a route admits."""
    unknown = set(who) - KNOWN
    if not who or unknown:
        raise ValueError(f"a route policy needs roles from {sorted(KNOWN)}, got {who}")
    return {POLICY_KEY: list(who)}
