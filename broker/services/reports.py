"""Subsidy reports for funders and data-access reports for custodians."""

from __future__ import annotations

from broker.container import Container


class ReportService:
    """Builds, signs and verifies reports from the ledger and usage records."""

    def __init__(self, c: Container) -> None:
        self.c = c
