"""Physical limits of a sandbox: a cgroup (v1 or v2) when the launcher can create one, else rlimits.

Ray's resources are logical; these make admission physical. With a cgroup the limits cover every process
of the sandbox together: memory (``memory.max`` / ``memory.limit_in_bytes``, swap off), CPU quota
(``cpu.max`` / ``cpu.cfs_quota_us``) and a process count (``pids.max``); a kill reaches every process in
the group, and the reason (``oom_kill``, ``pids.events max``) is read from the group before it is removed.
Without a cgroup (an unprivileged launcher, or ``mode="rlimit"``) the fallback is per process:
``RLIMIT_AS`` (memory), ``RLIMIT_NPROC`` (processes of the job's own host uid), CPU affinity to
ceil(milli_cpu/1000) cores. ``RLIMIT_FSIZE`` (= the disk cap, per file) and ``RLIMIT_CORE=0`` always apply.

Errors: :class:`CgroupError` when a group cannot be created or configured (callers fall back or refuse).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import resource
import signal
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .spec import SandboxLimits

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "cpu", "pids")
CPU_PERIOD_US = 100_000
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class CgroupError(OSError):
    """A cgroup could not be created, configured, joined or emptied."""


def cgroup_version(root: Path = CGROUP_ROOT) -> int | None:
    """2 for a unified hierarchy, 1 for v1 controllers mounted per directory, ``None`` without cgroups."""
    if (root / "cgroup.controllers").exists():
        return 2
    if all((root / c / "cgroup.procs").exists() for c in V1_CONTROLLERS):
        return 1
    return None


def _own_cgroups(text: str) -> dict[str, str]:
    """``/proc/self/cgroup`` parsed: controller name (``""`` for v2) → path of this process's group."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for name in parts[1].split(","):
                out[name] = parts[2]
    return out


def _read(path: Path) -> str:
    """A cgroup file's content ('' when it does not exist)."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _counter(text: str, key: str) -> int:
    """The value of ``key`` in a flat-keyed cgroup file (``oom_kill 3``), 0 when absent."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key and parts[1].isdigit():
            return int(parts[1])
    return 0


def group_name(job_id: str) -> str:
    """The cgroup directory name of a job: ``sbx-<job id, sanitised>-<launcher pid>``."""
    return f"sbx-{_NAME_UNSAFE.sub('_', job_id)[:64]}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class Cgroup:
    """One sandbox's cgroup: a directory per controller (v1) or one directory (v2, key ``""``)."""

    version: int
    dirs: Mapping[str, Path]

    @property
    def enforced(self) -> tuple[str, ...]:
        """The mechanisms this group enforces, e.g. ``cgroup-v1:memory``."""
        return tuple(f"cgroup-v{self.version}:{c}" for c in V1_CONTROLLERS)

    def _dir(self, controller: str) -> Path:
        return self.dirs[controller if self.version == 1 else ""]

    def procs_files(self) -> tuple[Path, ...]:
        """Every ``cgroup.procs`` a joining process writes its pid to."""
        return tuple(sorted({d / "cgroup.procs" for d in self.dirs.values()}))

    def join(self, pid: int = 0) -> None:
        """Move ``pid`` (0: the calling process) into the group, in every hierarchy."""
        for procs in self.procs_files():
            procs.write_text(str(pid))

    def pids(self) -> set[int]:
        """The processes in the group now (host PID namespace)."""
        found: set[int] = set()
        for procs in self.procs_files():
            found |= {int(p) for p in _read(procs).split()}
        return found

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer killed in the group."""
        if self.version == 2:
            return _counter(_read(self._dir("memory") / "memory.events"), "oom_kill")
        memory = self._dir("memory")
        control = _read(memory / "memory.oom_control")
        if re.search(r"^oom_kill ", control, re.MULTILINE):
            return _counter(control, "oom_kill")
        # kernels before 4.13 have no oom_kill line: a refused charge is the nearest signal
        failcnt = _read(memory / "memory.failcnt").strip()
        return int(failcnt) if failcnt.isdigit() else 0

    def pids_refusals(self) -> int:
        """How many forks the pids limit refused (``pids.events`` ``max``)."""
        return _counter(_read(self._dir("pids") / "pids.events"), "max")

    def kill_all(self, timeout_s: float = 5.0) -> bool:
        """SIGKILL every process in the group until it is empty (v2: ``cgroup.kill`` first)."""
        if self.version == 2:
            with contextlib.suppress(OSError):  # kernels before 5.14: the signal loop below does it
                (self._dir("pids") / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pids = self.pids()
            if not pids:
                return True
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)
        return not self.pids()

    def remove(self, timeout_s: float = 5.0) -> None:
        """Remove the group's directories (after :meth:`kill_all`; retried while exiting tasks linger)."""
        deadline = time.monotonic() + timeout_s
        for d in sorted(set(self.dirs.values())):
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if time.monotonic() > deadline:
                        raise CgroupError(f"cannot remove cgroup {d}: {exc}") from exc
                    time.sleep(0.02)


def sweep_stale(parent: Path) -> list[Path]:
    """Remove the empty groups that launchers killed with SIGKILL left in ``parent`` (their pid is gone).

    A group is ``sbx-<job>-<launcher pid>``; one whose launcher is alive is never touched, and one that
    still has processes is not empty (``rmdir`` would refuse it anyway). Returns what was removed.
    """
    removed = []
    for group in parent.glob("sbx-*-*"):
        pid = group.name.rsplit("-", 1)[1]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists() or _read(group / "cgroup.procs").strip():
            continue
        with contextlib.suppress(OSError):
            group.rmdir()
            removed.append(group)
    return removed


def _write_v1_limits(dirs: Mapping[str, Path], limits: SandboxLimits) -> None:
    """memory (+swap off), CPU quota and pids of a v1 group."""
    mem = dirs["memory"]
    (mem / "memory.limit_in_bytes").write_text(str(limits.memory_mib << 20))
    if (mem / "memory.memsw.limit_in_bytes").exists():  # swap accounting on: memory+swap = memory
        (mem / "memory.memsw.limit_in_bytes").write_text(str(limits.memory_mib << 20))
    if (mem / "memory.swappiness").exists():
        (mem / "memory.swappiness").write_text("0")
    (dirs["cpu"] / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
    (dirs["cpu"] / "cpu.cfs_quota_us").write_text(str(limits.milli_cpu * CPU_PERIOD_US // 1000))
    (dirs["pids"] / "pids.max").write_text(str(limits.max_pids))


def _write_v2_limits(group: Path, limits: SandboxLimits) -> None:
    """memory (swap off, OOM kills the whole group), CPU quota and pids of a v2 group."""
    (group / "memory.max").write_text(str(limits.memory_mib << 20))
    for knob, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
        if (group / knob).exists():
            (group / knob).write_text(value)
    (group / "cpu.max").write_text(f"{limits.milli_cpu * CPU_PERIOD_US // 1000} {CPU_PERIOD_US}")
    (group / "pids.max").write_text(str(limits.max_pids))


def _create_v1(root: Path, name: str, limits: SandboxLimits, own: Mapping[str, str]) -> Cgroup:
    """A v1 group under this process's own group in the memory, cpu and pids hierarchies."""
    dirs: dict[str, Path] = {}
    try:
        for c in V1_CONTROLLERS:
            parent = root / c / own.get(c, "/").lstrip("/")
            sweep_stale(parent)
            dirs[c] = parent / name
            dirs[c].mkdir()
        _write_v1_limits(dirs, limits)
    except OSError as exc:
        Cgroup(1, dirs).remove(timeout_s=0.5)
        raise CgroupError(f"cannot set up a cgroup v1 group: {exc}") from exc
    return Cgroup(1, dirs)


def _v2_parent(root: Path, own: str) -> Path:
    """The nearest ancestor of this process's group that can hand memory, cpu and pids to a child.

    A v2 group with processes of its own cannot enable controllers for children (no internal processes),
    so the walk goes up until ``cgroup.subtree_control`` accepts them (the root always can).
    """
    path = root / own.lstrip("/")
    while True:
        want = {"memory", "cpu", "pids"}
        try:
            enabled = set(_read(path / "cgroup.subtree_control").split())
            missing = want - enabled
            if missing:
                (path / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in sorted(missing)))
            return path
        except OSError:
            if path == root:
                raise
            path = path.parent


def _create_v2(root: Path, name: str, limits: SandboxLimits, own: Mapping[str, str]) -> Cgroup:
    """A v2 group with memory, cpu and pids enabled, under the nearest ancestor that allows it."""
    group: Path | None = None
    try:
        parent = _v2_parent(root, own.get("", "/"))
        sweep_stale(parent)
        group = parent / name
        group.mkdir()
        _write_v2_limits(group, limits)
    except OSError as exc:
        if group is not None:
            Cgroup(2, {"": group}).remove(timeout_s=0.5)
        raise CgroupError(f"cannot set up a cgroup v2 group: {exc}") from exc
    return Cgroup(2, {"": group})


def create_cgroup(
    name: str, limits: SandboxLimits, root: Path = CGROUP_ROOT, own: Mapping[str, str] | None = None
) -> Cgroup:
    """Create and configure the group ``name`` for ``limits``; :class:`CgroupError` when impossible.

    The group goes under this process's own group (``own``: controller → path, read from
    ``/proc/self/cgroup`` when not given), so a delegated or containerised hierarchy is respected.
    """
    version = cgroup_version(root)
    if version is None:
        raise CgroupError(f"no usable cgroup hierarchy under {root}")
    if own is None:
        own = _own_cgroups(_read(Path("/proc/self/cgroup")))
    if version == 2:
        return _create_v2(root, name, limits, own)
    return _create_v1(root, name, limits, own)


def usable_controllers(root: Path = CGROUP_ROOT) -> tuple[str, ...]:
    """The controllers this process could create a group with (a quick check: write access)."""
    version = cgroup_version(root)
    own = _own_cgroups(_read(Path("/proc/self/cgroup")))
    if version == 2:
        path = root / own.get("", "/").lstrip("/")
        available = set(_read(path / "cgroup.controllers").split())
        ok = os.access(path, os.W_OK) or os.access(root, os.W_OK)
        return tuple(c for c in V1_CONTROLLERS if c in available) if ok else ()
    if version == 1:
        return tuple(c for c in V1_CONTROLLERS if os.access(root / c / own.get(c, "/").lstrip("/"), os.W_OK))
    return ()


# --- rlimits and affinity: the fallback, and the always-on file size cap -------------------------------


def rlimits(limits: SandboxLimits, *, cgroup: bool) -> list[tuple[int, int]]:
    """The (resource, value) pairs a sandbox gets: file size and core always; AS and NPROC without cgroup."""
    pairs = [
        (resource.RLIMIT_FSIZE, limits.disk_mib << 20),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NOFILE, MAX_OPEN_FILES),  # bounds files held open (unlinked ones count as disk)
    ]
    if not cgroup:
        pairs += [(resource.RLIMIT_AS, limits.memory_mib << 20), (resource.RLIMIT_NPROC, limits.max_pids)]
    return pairs


def rlimit_names(limits: SandboxLimits, *, cgroup: bool) -> tuple[str, ...]:
    """The ``enforced`` labels of :func:`rlimits`."""
    names = {
        resource.RLIMIT_FSIZE: "rlimit:fsize",
        resource.RLIMIT_NOFILE: "rlimit:nofile",
        resource.RLIMIT_CORE: "rlimit:core",
        resource.RLIMIT_AS: "rlimit:as",
        resource.RLIMIT_NPROC: "rlimit:nproc",
    }
    return tuple(names[r] for r, _ in rlimits(limits, cgroup=cgroup))


def apply_rlimits(pairs: Iterable[tuple[int, int]]) -> None:
    """Set each limit (soft = hard) for the calling process; its children inherit them."""
    for res, value in pairs:
        resource.setrlimit(res, (value, value))


def cpu_set(milli_cpu: int, available: Iterable[int], key: int) -> set[int]:
    """ceil(milli_cpu/1000) cores out of ``available``, rotated by ``key`` so jobs spread over cores."""
    cores = sorted(available)
    want = min(len(cores), max(1, math.ceil(milli_cpu / 1000)))
    start = key % len(cores)
    return {cores[(start + i) % len(cores)] for i in range(want)}


#: Descriptors each sandboxed process may hold open: enough for ordinary programs (torch, multiprocessing),
#: few enough that the watchdog can look at every one of them each round.
MAX_OPEN_FILES = 1024


def pids_of_uid(uid: int, proc: Path = Path("/proc")) -> set[int]:
    """The processes running with uid ``uid`` (the rlimit fallback's view of a job's processes)."""
    found: set[int] = set()
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    found.add(int(entry.name))
            except FileNotFoundError:
                continue
    return found


def processes_of_uid(uid: int, proc: Path = Path("/proc")) -> int:
    """How many processes run with real uid ``uid`` (the rlimit fallback's process watchdog)."""
    return len(pids_of_uid(uid, proc))
