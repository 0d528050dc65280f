"""The shapes of the client's most used answers (``TypedDict``: plain dicts at run time, checked by mypy)."""

from __future__ import annotations

from typing import Any, TypedDict


class Cost(TypedDict):
    """A privacy cost: exact integers (micro-ε, 10⁻¹² δ) and how a person reads them."""

    epsilon_micro: int
    delta_e12: int
    display: str


class Me(TypedDict):
    """Who a token belongs to."""

    org_id: str
    role: str
    token_id: str


class QueryAnswer(TypedDict):
    """A DP query batch's answer: released values, the ε/δ charged, what the grant has left, credits billed."""

    query_id: str
    dataset_id: str
    dataset_version: int
    results: list[dict[str, Any]]
    charged: Cost
    grant_remaining: Cost
    credits: int
    elapsed_ms: int


class DryRunAnswer(TypedDict):
    """What a batch would cost (nothing spent): ε/δ, the grant left after it, the credit hold it would place."""

    dry_run: bool
    dataset_id: str
    dataset_version: int
    queries: list[dict[str, Any]]
    charged: Cost
    grant_remaining: Cost
    credits_hold: int
    rate_card_version: int


class HistoryEntry(TypedDict):
    """One past query or training run of the caller: its cost, credits and outcome (never a value)."""

    id: str
    dataset_id: str
    dataset_version: int
    kind: str
    charged: Cost
    queries: list[dict[str, Any]] | None
    credits: int | None
    elapsed_ms: int | None
    status: str
    created_ms: int
    finished_ms: int | None
