"""Per-SME quotas: how much one SME may run and queue at once, and how much co-payment it may owe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.errors import DomainError, InvalidInput
from common.resources import Resources


class QuotaExceeded(DomainError):
    """A submission that can never be admitted under the SME's quota (too big, or the queue is full)."""

    code = "quota_exceeded"


def _non_negative_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"{name} must be a non-negative integer, got {value!r}")


@dataclass(frozen=True, slots=True)
class Quota:
    """One SME's limits.

    ``max_resources`` caps the resources of its admitted and running jobs together, ``max_running_jobs`` their
    number, ``max_queued_jobs`` the number waiting, and ``copay_limit`` (credits) the co-payment it may have
    outstanding in holds at once.
    """

    max_resources: Resources
    max_running_jobs: int
    max_queued_jobs: int
    copay_limit: int

    def __post_init__(self) -> None:
        if not isinstance(self.max_resources, Resources):
            raise InvalidInput(f"max_resources must be Resources, got {self.max_resources!r}")
        _non_negative_int("max_running_jobs", self.max_running_jobs)
        _non_negative_int("max_queued_jobs", self.max_queued_jobs)
        _non_negative_int("copay_limit", self.copay_limit)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict (for storage and the API)."""
        return {
            "milli_cpu": self.max_resources.milli_cpu,
            "gpus": self.max_resources.gpus,
            "memory_mib": self.max_resources.memory_mib,
            "max_running_jobs": self.max_running_jobs,
            "max_queued_jobs": self.max_queued_jobs,
            "copay_limit": self.copay_limit,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Quota:
        """Rebuild a quota from :meth:`to_dict` output."""
        try:
            resources = Resources(data["milli_cpu"], data["gpus"], data["memory_mib"])
            return cls(resources, data["max_running_jobs"], data["max_queued_jobs"], data["copay_limit"])
        except KeyError as exc:
            raise InvalidInput(f"quota is missing field {exc.args[0]!r}") from exc
        except ValueError as exc:
            raise InvalidInput(str(exc)) from exc


DEFAULT_QUOTA = Quota(
    max_resources=Resources(milli_cpu=8_000, gpus=1, memory_mib=32_768),
    max_running_jobs=4,
    max_queued_jobs=100,
    copay_limit=100_000,
)
"""The quota an SME gets until an operator sets its own: 8 CPUs, 1 GPU, 32 GiB, 4 running, 100 queued."""
