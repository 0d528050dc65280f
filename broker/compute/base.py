"""The one small interface between the broker and whatever runs jobs.

The broker keeps jobs in its own database and drives a backend through :class:`ComputeBackend`. Every call
is keyed by a deterministic *launch name* derived from the broker's job id (:func:`launch_name`), so each
call is idempotent and a restarted broker finds its jobs again by name.

Exception tree (all subclasses of :class:`common.errors.DomainError`)::

    BackendError            code "backend_unavailable": the backend could not be reached or refused a call;
                            the third-party error is chained as ``__cause__``.
    SandboxUnavailable      code "sandbox_unavailable": the backend cannot isolate SME code, so it refuses
                            to run it (harness runs of the broker's own code are still accepted).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol, runtime_checkable

from common.errors import DomainError
from common.resources import Resources

#: Prefix of every launch name: names stay recognisably ours in Ray and Kubernetes.
LAUNCH_PREFIX = "sbx-"
#: DNS-1123 label limit (Kubernetes object names that become pod/service names must fit in 63).
_MAX_NAME = 63
_UNSAFE = re.compile(r"[^a-z0-9-]+")

DEFAULT_LOG_BYTES = 64 * 1024


class BackendError(DomainError):
    """The compute backend could not be reached or refused the call; retrying later may succeed."""

    code = "backend_unavailable"


class SandboxUnavailable(DomainError):
    """This backend cannot isolate SME code (a shared Ray cluster, or no working sandbox on this machine),
    so it refuses to run it rather than run it unprotected."""

    code = "sandbox_unavailable"


class BackendState(StrEnum):
    """What a backend says about one launch (a subset of Ray's ``JobStatus`` plus ``NOT_FOUND``)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"
    NOT_FOUND = "NOT_FOUND"

    @property
    def is_terminal(self) -> bool:
        """True for states a launch never leaves (``NOT_FOUND`` is not terminal: it may appear later)."""
        return self in _TERMINAL


_TERMINAL = frozenset({BackendState.SUCCEEDED, BackendState.FAILED, BackendState.STOPPED})


def launch_name(job_id: str) -> str:
    """Return the backend name of the broker job ``job_id``: deterministic and DNS-1123 label safe.

    The same job id always yields the same name (idempotent calls, recovery after a restart). Ids are
    lower-cased and anything outside ``[a-z0-9-]`` becomes ``-``; the result is at most 63 characters,
    starts with ``sbx-`` and ends with an alphanumeric character.
    """
    slug = _UNSAFE.sub("-", job_id.lower()).strip("-")
    if not slug:
        raise ValueError(f"job id {job_id!r} has no usable characters for a launch name")
    return (LAUNCH_PREFIX + slug)[:_MAX_NAME].rstrip("-")


@dataclass(frozen=True, slots=True)
class JobLaunch:
    """Everything a backend needs to run one job. Built by the broker from its job row.

    ``entrypoint`` is a shell command run in ``working_dir`` (uploaded to the cluster when given);
    ``requirements`` are pip requirement strings installed into the job's environment; ``resources`` are
    reserved for the entrypoint; ``max_runtime_s`` is the broker's limit (KubeRay also enforces it as
    ``activeDeadlineSeconds``; the broker stops the job itself on the other backends). ``env`` is passed to
    the job and must never carry broker secrets; ``secret_env`` carries the credentials of the broker's own
    harness (never an SME job's), which a backend must not write into an object others can read (KubeRay
    refers to a Kubernetes Secret instead); ``labels`` are recorded as metadata.

    ``harness`` is true only for the broker's own trusted code (DP-SGD and other harness runs); everything
    else is SME code, which a backend runs only where it can isolate it (see ``docs/security.md``).
    ``job_dir`` is the broker's directory of this job (``broker.compute.jobfiles``: ``work/`` holds the
    code the broker unpacked, ``output/`` what the job returns, ``input/`` a harness run's staged input);
    the local sandboxed backend binds those into the sandbox, remote backends ignore it.
    """

    name: str
    job_id: str
    org_id: str
    entrypoint: str
    working_dir: Path | None
    requirements: tuple[str, ...]
    resources: Resources
    max_runtime_s: int
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    secret_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    harness: bool = False
    job_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.name != launch_name(self.job_id):
            raise ValueError(f"launch name {self.name!r} must be launch_name({self.job_id!r})")
        if not self.entrypoint.strip():
            raise ValueError("entrypoint must not be empty")
        if self.max_runtime_s <= 0:
            raise ValueError(f"max_runtime_s must be positive, got {self.max_runtime_s}")


#: Why a sandbox killed a job (a stable code, shown in the job's status and counted by
#: ``sbx_sandbox_kills_total{reason}``).
SANDBOX_KILL_REASONS = ("out_of_memory", "disk_quota", "too_many_processes")


@dataclass(frozen=True, slots=True)
class BackendStatus:
    """A backend's view of one launch. ``start_ms``/``end_ms`` are the backend's own times (metering).

    ``reason`` is set when the backend itself ended the job for breaking a physical limit (one of
    :data:`SANDBOX_KILL_REASONS`); ``message`` says it for humans.
    """

    state: BackendState
    start_ms: int | None = None
    end_ms: int | None = None
    message: str = ""
    reason: str | None = None


NOT_FOUND_STATUS = BackendStatus(BackendState.NOT_FOUND, message="no such launch")


@runtime_checkable
class ComputeBackend(Protocol):
    """How the broker runs jobs. Every method is keyed by the launch name and safe to retry."""

    kind: str

    def create(self, launch: JobLaunch) -> None:
        """Register the launch without running it (idempotent)."""
        ...

    def start(self, launch: JobLaunch) -> None:
        """Run the launch (idempotent: a second call never starts a second job)."""
        ...

    def status(self, name: str) -> BackendStatus:
        """Return the launch's current state; ``NOT_FOUND`` when the backend does not know it."""
        ...

    def logs(self, name: str, max_bytes: int = DEFAULT_LOG_BYTES) -> str:
        """Return the tail (at most ``max_bytes`` UTF-8 bytes) of the launch's output."""
        ...

    def stop(self, name: str) -> None:
        """Stop the launch (idempotent; a finished or unknown launch is left as it is)."""
        ...

    def capacity(self) -> Resources:
        """Return the total resources of the cluster the backend runs on."""
        ...

    def close(self) -> None:
        """Release everything this backend started (clients, local clusters)."""
        ...


def tail_bytes(text: str, max_bytes: int) -> str:
    """Return the last ``max_bytes`` bytes of ``text`` as UTF-8 (never splitting a character)."""
    if max_bytes <= 0:
        return ""
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    return raw[-max_bytes:].decode("utf-8", errors="ignore")
