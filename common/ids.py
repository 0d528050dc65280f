"""Identifiers: a readable prefix plus 20 hex digits of secure randomness."""

from __future__ import annotations

import secrets


def new_id(prefix: str) -> str:
    """Return a fresh identifier such as ``job_3f2a…`` (unguessable, so ids leak nothing)."""
    return f"{prefix}_{secrets.token_hex(10)}"
