"""Job kinds: what each kind of job adds to its launch and does once it is settled (Kueue's jobframework,
in small).

A code job (kind ``job``) is SME code and needs nothing beyond the generic launch. The broker's own harness
runs (``training`` today) implement :class:`JobKind` and are registered with the job service by the
composition of services (``broker/services/registry.py``), so no service reaches into another's attributes.
"""

from __future__ import annotations

from typing import Protocol

from broker.compute import JobLaunch
from broker.db.jobs import Job


class JobKind(Protocol):
    """One kind of job the broker runs for its own harness."""

    def launch(self, job: Job, base: JobLaunch, *, stage_locally: bool) -> JobLaunch:
        """Return the launch of ``job``: ``base`` with this kind's entrypoint, environment and secrets.

        ``stage_locally`` is true when the backend runs the job on this machine inside the broker's
        sandbox: the kind then writes its input into ``base.job_dir / "input"`` (read-only inside) and
        passes no credentials at all; otherwise it passes what a remote harness needs to fetch its input.
        """
        ...

    def settled(self, job: Job) -> None:
        """Called once after the job's settlement committed (close charges, collect results, audit)."""
        ...
