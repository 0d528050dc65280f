"""Tables of the data foundation (datasets, access grants, privacy-budget ledger), on the shared metadata."""

from __future__ import annotations

from broker.db.tables import metadata

__all__ = ["metadata"]
