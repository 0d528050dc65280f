"""The client's exceptions: every refusal carries the broker's stable ``code`` (the ``error`` field)."""

from __future__ import annotations


class BrokerError(Exception):
    """The broker refused or failed a request: ``code`` is its stable error code (``budget_exceeded``,
    ``not_found`` …), ``detail`` its human reason, ``status`` the HTTP status (``None``: no answer).

    ``structured`` is False when the answer was not the broker's ``{"error", "detail"}`` body (a proxy's
    HTML page): then ``code`` is ``http_<status>`` and ``detail`` only names the status.
    """

    def __init__(self, code: str, detail: str, *, status: int | None, structured: bool = True) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.status = status
        self.structured = structured

    @property
    def unavailable(self) -> bool:
        """The broker (or its database, disk or backend) is unreachable or unavailable: retrying later may
        succeed (5xx, 503 with ``Retry-After``, or no answer at all)."""
        return self.status is None or self.status >= 500


class Unreachable(BrokerError):
    """No answer at all: the broker is not running at that URL, or the network is down."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            "unreachable",
            f"cannot reach the broker at {url} ({reason}); is `sbx serve` running? Set --url or SBX_URL.",
            status=None,
        )
        self.url = url
