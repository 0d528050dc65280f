"""The embedded sandbox: SME code and the broker's harness run inside bubblewrap under physical limits.

Public names: the values (``SandboxSpec``, ``SandboxLimits``, ``SandboxResult``, ``SandboxSpecError``,
the reason codes and ``UNSAFE_ENV``), ``probe``/``IsolationReport`` (what isolation this machine gives),
``job_host_ids`` and ``find_bwrap``. The launcher itself runs as
``python -I -m broker.compute.sandbox.launch <job_dir>/spec.json`` (see :mod:`.launch`).
"""

from .host import LAUNCHER_MODULE, LaunchError, find_bwrap, job_host_ids, launcher_argv
from .probe import IsolationReport, probe
from .spec import (
    DISK_QUOTA,
    OUT_OF_MEMORY,
    REASONS,
    SANDBOX_ERROR,
    STOPPED,
    TOO_MANY_PROCESSES,
    UNSAFE_ENV,
    SandboxLimits,
    SandboxResult,
    SandboxSpec,
    SandboxSpecError,
)

__all__ = [
    "DISK_QUOTA",
    "LAUNCHER_MODULE",
    "OUT_OF_MEMORY",
    "REASONS",
    "SANDBOX_ERROR",
    "STOPPED",
    "TOO_MANY_PROCESSES",
    "UNSAFE_ENV",
    "IsolationReport",
    "LaunchError",
    "SandboxLimits",
    "SandboxResult",
    "SandboxSpec",
    "SandboxSpecError",
    "find_bwrap",
    "job_host_ids",
    "launcher_argv",
    "probe",
]
