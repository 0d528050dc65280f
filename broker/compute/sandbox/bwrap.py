"""The bubblewrap command line of one sandbox: a pure function of the spec and a snapshot of the host.

The filesystem is an **allow-list**: bwrap starts from an empty tmpfs root and this module names every
mount. Read-only: the system directories that exist on the host (``/usr``, ``/bin``... kept as symlinks
where they are symlinks), a few ``/etc`` entries (never ``/etc/shadow``, never all of ``/etc``), generated
``/etc/passwd``/``group``/``hosts``, the interpreter's prefix and the broker's venv at their own paths (so
``python`` with numpy/torch works; the editable install of the broker points at a path that is not
mounted, so ``import broker`` fails inside). Fresh: ``/dev`` (bwrap's minimal one), ``/proc`` (of the new
PID namespace), size-capped tmpfs ``/tmp`` and ``/dev/shm``. Read-write: the job's ``work/`` at ``/job``
and ``output/`` at ``/output``, bound from file descriptors the launcher opened. Then ``/dev`` and ``/``
are remounted read-only, so nothing else is writable.

Every namespace bwrap offers is new (user, PID, IPC, UTS, network, cgroup where possible); nested user
namespaces are disabled; a seccomp denylist is loaded when the launcher passes one; the environment is
cleared and set explicitly.

The host facts (which system dirs exist, the prefixes, where the launcher staged a source) come in as a
:class:`HostLayout` read once by the launcher (:func:`broker.compute.sandbox.launch.read_host_layout`).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field

from .spec import SandboxSpec

#: Host system directories bound read-only (or re-created as symlinks) when they exist.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: The only host ``/etc`` entries bound read-only (when they exist).
ETC_ENTRIES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/alternatives",
    "/etc/ssl/certs",
    "/etc/ssl/openssl.cnf",
    "/etc/ca-certificates.conf",
)
#: Generated ``/etc`` files (content from :func:`generated_etc`).
GENERATED_ETC = ("/etc/passwd", "/etc/group", "/etc/hosts")
SANDBOX_UID = 1000
SANDBOX_GID = 1000
HOSTNAME = "sandbox"
JOB_MOUNT = "/job"
OUTPUT_MOUNT = "/output"
#: The sandbox's scratch mounts (paths inside the sandbox: fresh tmpfs, not the host's).
TMP_MOUNT = "/tmp"  # noqa: S108
SHM_MOUNT = "/dev/shm"  # noqa: S108


@dataclass(frozen=True, slots=True)
class HostLayout:
    """The facts about the host that the command line depends on (read by the launcher, pure here).

    ``system_dirs`` maps each existing entry of :data:`SYSTEM_DIRS` to its symlink target (``None`` for a
    real directory); ``etc_entries`` lists the existing entries of :data:`ETC_ENTRIES`; ``base_prefix`` and
    ``venv_prefix`` are ``sys.base_prefix`` and ``sys.prefix``; ``sources`` maps a host path to the path
    bwrap should read it from (a root launcher stages sources the sandbox uid cannot reach; see launch).
    """

    system_dirs: Mapping[str, str | None]
    etc_entries: tuple[str, ...]
    base_prefix: str
    venv_prefix: str
    sources: Mapping[str, str] = field(default_factory=dict)

    def source(self, path: str) -> str:
        """Where bwrap finds the host path ``path``: its staged copy when a staged root covers it."""
        for root in sorted(self.sources, key=len, reverse=True):
            if path == root or path.startswith(root.rstrip("/") + "/"):
                return self.sources[root] + path[len(root) :]
        return path


@dataclass(frozen=True, slots=True)
class SandboxFds:
    """File descriptors the launcher opened and passes to bwrap (all inherited, all closed by bwrap).

    ``work``/``output`` are ``O_PATH`` descriptors of the job's writable directories; ``passwd``,
    ``group`` and ``hosts`` hold the generated ``/etc`` files (memfds positioned at 0); ``seccomp``, when
    given, holds the seccomp filter (:mod:`.seccomp`).
    """

    work: int
    output: int
    passwd: int
    group: int
    hosts: int
    seccomp: int | None = None

    def all(self) -> tuple[int, ...]:
        """Every descriptor, for ``subprocess``'s ``pass_fds``."""
        fds = (self.work, self.output, self.passwd, self.group, self.hosts)
        return fds if self.seccomp is None else (*fds, self.seccomp)


def generated_etc() -> dict[str, str]:
    """Content of the generated ``/etc`` files: the sandbox user, root, nobody and localhost only."""
    return {
        "/etc/passwd": (
            "root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n"
            f"sandbox:x:{SANDBOX_UID}:{SANDBOX_GID}:sandbox:{JOB_MOUNT}:/bin/sh\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ),
        "/etc/group": f"root:x:0:\nsandbox:x:{SANDBOX_GID}:\nnogroup:x:65534:\n",
        "/etc/hosts": f"127.0.0.1\tlocalhost {HOSTNAME}\n::1\tlocalhost ip6-localhost\n",
    }


def _covered(path: str, roots: list[str]) -> bool:
    """True when ``path`` lies at or under one of ``roots``."""
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _prefixes(host: HostLayout) -> list[str]:
    """The interpreter prefix and the venv, minus those already inside a mounted system directory."""
    mounted = [d for d, target in host.system_dirs.items() if target is None]
    out: list[str] = []
    for prefix in (host.base_prefix, host.venv_prefix):
        if not _covered(prefix, mounted + out):
            out.append(prefix)
    return out


def sandbox_env(spec: SandboxSpec, host: HostLayout) -> dict[str, str]:
    """The complete environment of the command: fixed variables, then the spec's (validated) ones."""
    path: list[str] = []
    for entry in (posixpath.join(host.venv_prefix, "bin"), posixpath.join(host.base_prefix, "bin")):
        if entry not in path:
            path.append(entry)
    path += [p for p in ("/usr/local/bin", "/usr/bin", "/bin") if p not in path]
    env = {
        "PATH": ":".join(path),
        "HOME": JOB_MOUNT,
        "TMPDIR": TMP_MOUNT,
        "LANG": "C.UTF-8",
        "SBX_OUTPUT": OUTPUT_MOUNT,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    env.update(spec.env)
    return env


def _namespace_args() -> list[str]:
    """New namespaces, the uid/gid inside, and the process-lifetime options."""
    return [
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-net",
        "--unshare-cgroup-try",
        "--disable-userns",
        "--uid",
        str(SANDBOX_UID),
        "--gid",
        str(SANDBOX_GID),
        "--hostname",
        HOSTNAME,
        "--new-session",
        "--die-with-parent",
        "--cap-drop",
        "ALL",
    ]


def _env_args(spec: SandboxSpec, host: HostLayout) -> list[str]:
    """``--clearenv`` then one ``--setenv`` per variable."""
    args = ["--clearenv"]
    for key, value in sandbox_env(spec, host).items():
        args += ["--setenv", key, value]
    return args


def _system_args(host: HostLayout) -> list[str]:
    """System directories read-only (symlinks as symlinks), the allowed ``/etc`` entries, the prefixes."""
    args: list[str] = []
    for path in SYSTEM_DIRS:
        if path not in host.system_dirs:
            continue
        target = host.system_dirs[path]
        args += ["--symlink", target, path] if target is not None else ["--ro-bind", path, path]
    args += ["--perms", "0755", "--dir", "/etc"]
    for entry in host.etc_entries:
        args += ["--ro-bind", entry, entry]
    for prefix in _prefixes(host):
        args += ["--ro-bind", host.source(prefix), prefix]
    return args


def _generated_args(fds: SandboxFds) -> list[str]:
    """The generated ``/etc`` files, read-only, from the launcher's memfds."""
    args: list[str] = []
    for fd, dest in zip((fds.passwd, fds.group, fds.hosts), GENERATED_ETC, strict=True):
        args += ["--perms", "0644", "--ro-bind-data", str(fd), dest]
    return args


def _scratch_args(spec: SandboxSpec) -> list[str]:
    """Fresh ``/dev``, ``/proc`` and size-capped ``/tmp`` and ``/dev/shm`` (tmpfs, counted in memory)."""
    size = str(spec.limits.tmp_mib << 20)
    return [
        "--dev",
        "/dev",
        "--perms",
        "1777",
        "--size",
        size,
        "--tmpfs",
        SHM_MOUNT,
        "--proc",
        "/proc",
        "--perms",
        "1777",
        "--size",
        size,
        "--tmpfs",
        TMP_MOUNT,
    ]


def _job_args(spec: SandboxSpec, host: HostLayout, fds: SandboxFds) -> list[str]:
    """The job's writable dirs, the spec's read-only binds and the admitted GPU device nodes."""
    args = ["--bind-fd", str(fds.work), JOB_MOUNT, "--bind-fd", str(fds.output), OUTPUT_MOUNT]
    for src, dest in spec.readonly_binds:
        args += ["--ro-bind", host.source(src), dest]
    for dev in spec.gpu_devices:
        args += ["--dev-bind", dev, dev]
    return args


def build_argv(
    spec: SandboxSpec, *, bwrap: str, fds: SandboxFds, host: HostLayout, status_fd: int | None = None
) -> list[str]:
    """The full ``bwrap`` command line that runs ``spec.command`` with ``/bin/sh -c`` inside the sandbox.

    ``bwrap`` is the binary to run (see :func:`broker.compute.sandbox.launch.find_bwrap`), ``fds`` the
    descriptors the launcher passes, ``host`` the snapshot of the host; ``status_fd`` (optional) receives
    bwrap's JSON status (its ``child-pid`` document tells the launcher the sandbox started). Refuses
    ``mode="off"``: that mode has no sandbox and so no command line.
    """
    if spec.mode == "off":
        raise ValueError("mode 'off' runs without a sandbox: there is no bwrap command line for it")
    return [
        bwrap,
        *(["--json-status-fd", str(status_fd)] if status_fd is not None else []),
        *(["--seccomp", str(fds.seccomp)] if fds.seccomp is not None else []),
        *_namespace_args(),
        *_env_args(spec, host),
        *_scratch_args(spec),  # first: an interpreter or venv under /tmp is then bound on top of the tmpfs
        *_system_args(host),
        *_generated_args(fds),
        *_job_args(spec, host, fds),
        "--remount-ro",
        "/dev",
        "--remount-ro",
        "/",
        "--chdir",
        JOB_MOUNT,
        "--",
        "/bin/sh",
        "-c",
        spec.command,
    ]


def mount_points(spec: SandboxSpec, host: HostLayout) -> frozenset[str]:
    """Every mount point the command line creates (bwrap's own ``/dev`` nodes included): the allow-list."""
    points = {"/", "/dev", SHM_MOUNT, "/dev/pts", "/proc", TMP_MOUNT, JOB_MOUNT, OUTPUT_MOUNT}
    points |= {f"/dev/{n}" for n in ("null", "zero", "full", "random", "urandom", "tty")}
    points |= {d for d, target in host.system_dirs.items() if target is None}
    points |= set(host.etc_entries) | set(GENERATED_ETC) | set(_prefixes(host))
    points |= {dest for _, dest in spec.readonly_binds} | set(spec.gpu_devices)
    return frozenset(points)
