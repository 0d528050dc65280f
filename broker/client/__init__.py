"""The broker's Python client (``from broker.client import Client``): typed methods over the REST API for
SMEs and custodians in notebooks; refusals raise :class:`BrokerError` with the broker's ``code``. The
``sbx`` CLI sends every request through it, so the two never drift."""

from __future__ import annotations

from broker.client.client import Client, Json, Transport, delta_e12, epsilon_micro
from broker.client.errors import BrokerError, Unreachable
from broker.client.types import Cost, DryRunAnswer, HistoryEntry, Me, QueryAnswer

__all__ = [
    "BrokerError",
    "Client",
    "Cost",
    "DryRunAnswer",
    "HistoryEntry",
    "Json",
    "Me",
    "QueryAnswer",
    "Transport",
    "Unreachable",
    "delta_e12",
    "epsilon_micro",
]
