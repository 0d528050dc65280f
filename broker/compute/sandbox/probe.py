"""What isolation this machine gives SME code: bwrap, a trial sandbox, cgroups and the limits in force.

:func:`probe` runs the real launcher once on a trivial job (``true``) in a temporary job dir and reads the
``enforced`` list it records, so "available" means a sandbox really started here, not that a binary
exists. The answer is cached per process (the machine does not change under a running broker). Used by
``sbx doctor``, ``/readyz`` and the metric ``sbx_sandbox_available``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import limits as lim
from .host import LaunchError, find_bwrap, launcher_argv
from .spec import SandboxLimits, SandboxResult, SandboxSpec

PROBE_TIMEOUT_S = 30.0
_PROBE_LIMITS = SandboxLimits(
    memory_mib=256, milli_cpu=1000, max_pids=64, disk_mib=16, log_bytes=4096, tmp_mib=16
)


@dataclass(frozen=True, slots=True)
class IsolationReport:
    """The sandbox this machine gives: ``available`` is True only when a trial sandbox ran.

    ``enforced`` lists the mechanisms the trial had in force (``cgroup-v1:memory``, ``rlimit:as``...);
    ``cgroup_controllers`` those this process could create a group with; ``error`` says why not available.
    """

    available: bool
    bwrap_path: str | None
    bwrap_version: str | None
    cgroup_version: int | None
    cgroup_controllers: tuple[str, ...]
    enforced: tuple[str, ...]
    error: str | None
    summary: str


def _bwrap_version(path: str) -> str:
    """``bwrap --version``'s version number (e.g. ``0.11.0``)."""
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=True)
    return out.stdout.strip().removeprefix("bubblewrap").strip()


def _trial(bwrap: str) -> SandboxResult:
    """Run the launcher on ``true`` in a fresh 0700 job dir and return what it recorded."""
    job_dir = Path(tempfile.mkdtemp(prefix="sbx-probe-"))
    try:
        for sub in ("work", "output"):
            (job_dir / sub).mkdir()
        spec = SandboxSpec(job_id="probe", job_dir=str(job_dir), command="true", limits=_PROBE_LIMITS)
        (job_dir / "spec.json").write_text(spec.to_json())
        subprocess.run(
            launcher_argv(str(job_dir / "spec.json"), bwrap=bwrap),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
        return SandboxResult.from_json((job_dir / "result.json").read_bytes())
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)


def _summary(report: IsolationReport) -> str:
    """One human line: tool and version, cgroup version, limits in force (or why there is no sandbox)."""
    if not report.available:
        return f"no sandbox: {report.error}"
    cgroup = f"cgroup v{report.cgroup_version}" if report.cgroup_version else "no cgroups"
    return f"bubblewrap {report.bwrap_version} ({cgroup}); enforced: {', '.join(report.enforced)}"


@functools.lru_cache(maxsize=4)
def probe(bwrap: str | None = None) -> IsolationReport:
    """Probe this machine once (cached per ``bwrap`` override) and return its :class:`IsolationReport`."""
    path = version = error = None
    enforced: tuple[str, ...] = ()
    try:
        path = find_bwrap(bwrap)
        version = _bwrap_version(path)
        result = _trial(path)
        if result.reason is not None or result.exit_code != 0:
            error = f"a trial sandbox failed: {result.detail}"
        enforced = result.enforced
    except (LaunchError, OSError, ValueError, subprocess.SubprocessError) as exc:
        error = f"a trial sandbox could not run: {exc}"
    report = IsolationReport(
        available=error is None,
        bwrap_path=path,
        bwrap_version=version,
        cgroup_version=lim.cgroup_version(),
        cgroup_controllers=lim.usable_controllers(),
        enforced=enforced,
        error=error,
        summary="",
    )
    return dataclasses.replace(report, summary=_summary(report))
