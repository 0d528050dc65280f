"""Datasets, access requests and approvals, DP queries and the privacy-budget ledger (data foundation)."""

from __future__ import annotations

from broker.container import Container


class DatasetService:
    """Custodians register datasets and decide access; SMEs ask and run DP queries."""

    def __init__(self, c: Container) -> None:
        self.c = c
