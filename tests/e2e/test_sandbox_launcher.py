"""The real sandbox launcher, run as a subprocess on this machine (no Ray, no mocks).

Each test writes a job dir and a spec, runs ``python -I -m broker.compute.sandbox.launch`` with canaries
planted in the launcher's environment, and looks at the job log and ``result.json``. The probes inside the
sandbox are small Python scripts; the same probes run with ``mode="off"`` (the negative control) DO see
the canaries and the network, so these tests can fail.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker.compute.sandbox import SandboxLimits, SandboxResult, SandboxSpec, job_host_ids, probe
from broker.compute.sandbox.bwrap import ETC_ENTRIES, GENERATED_ETC, SYSTEM_DIRS
from broker.compute.sandbox.launch import LAUNCHER_MODULE, disk_usage
from broker.compute.sandbox.limits import CGROUP_ROOT, processes_of_uid
from broker.compute.sandbox.seccomp import DENIED, denylist_program

RAY_CANARY = "canary-ray-5f0b2d"
SBX_CANARY = "canary-sbx-91c7e4"
RUN_TIMEOUT_S = 40
LIMITS = SandboxLimits(
    memory_mib=256, milli_cpu=1000, max_pids=64, disk_mib=32, log_bytes=256 * 1024, tmp_mib=16
)

REPORT = probe()
pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not REPORT.available, reason=f"bwrap cannot run a sandbox here: {REPORT.summary}"),
]
needs_cgroup = pytest.mark.skipif(
    not any(e.startswith("cgroup-") for e in REPORT.enforced),
    reason=f"no cgroup can be created here (the rlimit fallback is tested instead): {REPORT.summary}",
)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs a root launcher (per-job host uid)")


@dataclass
class Launched:
    """One launcher run: its exit status, the job log (its stdout+stderr) and its result."""

    rc: int
    log: str
    result: SandboxResult
    job_dir: Path


def make_job(tmp_path: Path, script: str, **spec_args: object) -> Path:
    """A 0700 job dir whose work/ holds ``probe.py`` (= ``script``), and a spec running it."""
    job_dir = tmp_path / "job"
    (job_dir / "work").mkdir(parents=True)
    (job_dir / "output").mkdir()
    job_dir.chmod(0o700)
    (job_dir / "work" / "probe.py").write_text(textwrap.dedent(script))
    args: dict[str, object] = {
        "job_id": f"t-{tmp_path.name}",
        "command": "exec python probe.py",
        "limits": LIMITS,
    }
    args.update(spec_args)
    spec = SandboxSpec(job_dir=str(job_dir), **args)  # type: ignore[arg-type]
    (job_dir / "spec.json").write_text(spec.to_json())
    return job_dir


def launcher_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The launcher's environment: this process's, plus Ray/broker canaries, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "SBX_TEST_UNSAFE_NO_SANDBOX"}
    env.update({"RAY_FOO": RAY_CANARY, "SBX_SECRET": SBX_CANARY, "AWS_SECRET_ACCESS_KEY": RAY_CANARY})
    env.update(extra or {})
    return env


def start(job_dir: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start the launcher on ``job_dir`` as Ray would."""
    return subprocess.Popen(
        [sys.executable, "-I", "-m", LAUNCHER_MODULE, str(job_dir / "spec.json")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=launcher_env(extra_env),
    )


def finish(proc: subprocess.Popen[bytes], job_dir: Path) -> Launched:
    """Wait for the launcher (bounded) and read what it left."""
    out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    result = SandboxResult.from_json((job_dir / "result.json").read_text())
    return Launched(proc.returncode, out.decode(errors="replace"), result, job_dir)


def run(job_dir: Path, extra_env: dict[str, str] | None = None) -> Launched:
    """Run the launcher on ``job_dir`` to the end."""
    return finish(start(job_dir, extra_env), job_dir)


def last_json(log: str) -> dict[str, object]:
    """The last line of the log that is a JSON object (what a probe printed)."""
    for line in reversed(log.splitlines()):
        if line.startswith("{"):
            data: dict[str, object] = json.loads(line)
            return data
    raise AssertionError(f"no JSON line in the log:\n{log}")


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP listener on the host's 127.0.0.1; yields its port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


# --- the filesystem view is the allow-list ------------------------------------------------------------

VIEW_PROBE = """
import json, os, sys
mounts = [line.split()[4] for line in open("/proc/self/mountinfo")]
absent = sys.argv[1:]
try:
    import broker  # the editable install points at a path that is not mounted
    broker_importable = True
except ImportError:
    broker_importable = False
listing = {d: sorted(os.listdir(d)) for d in ("/", "/etc") + tuple(json.loads(os.environ["PARENTS"]))}
print(json.dumps({"mounts": mounts, "present": [p for p in absent if os.path.lexists(p)],
                  "broker": broker_importable, "listing": listing}))
"""


def expected_mounts(binds: tuple[tuple[str, str], ...]) -> set[str]:
    """The allow-list, written from the host's facts independently of the command line builder."""
    points = {"/", "/dev", "/dev/pts", "/dev/shm", "/proc", "/tmp", "/job", "/output"}
    points |= {f"/dev/{n}" for n in ("null", "zero", "full", "random", "urandom", "tty")}
    points |= {d for d in SYSTEM_DIRS if os.path.isdir(d) and not os.path.islink(d)}
    points |= {e for e in ETC_ENTRIES if os.path.exists(e)} | set(GENERATED_ETC)
    for prefix in (sys.base_prefix, sys.prefix):
        if not any(prefix == d or prefix.startswith(d + "/") for d in points - {"/"}):
            points.add(prefix)
    return points | {dest for _, dest in binds}


def venv_parents() -> list[str]:
    """The directories above the interpreter's prefix and the venv (each must show only the next step)."""
    parents: set[str] = set()
    for prefix in (sys.base_prefix, sys.prefix):
        parents |= {str(p) for p in Path(prefix).parents if str(p) != "/"}
    return sorted(parents)


def test_mountinfo_is_exactly_the_allow_list(tmp_path: Path) -> None:
    data_dir = tmp_path / "dataset"
    data_dir.mkdir()
    (data_dir / "rows.csv").write_text("a,b\n")
    binds = ((str(data_dir), "/data"),)
    absent = ["/etc/shadow", "/var", "/sys", "/home", "/root/.ssh", "/run", "/tmp/ray", "/mnt", "/opt"]
    absent += [str(tmp_path / "job"), str(tmp_path), str(Path.cwd() / "broker"), str(Path.cwd() / ".git")]
    job_dir = make_job(
        tmp_path,
        VIEW_PROBE,
        readonly_binds=binds,
        env={"PARENTS": json.dumps(venv_parents())},
        command="exec python probe.py " + " ".join(absent),
    )
    launched = run(job_dir)
    assert launched.rc == 0, launched.log
    view = last_json(launched.log)
    assert set(view["mounts"]) == expected_mounts(binds)  # type: ignore[arg-type]
    assert view["present"] == []
    assert view["broker"] is False
    listing: dict[str, list[str]] = view["listing"]  # type: ignore[assignment]
    for parent in venv_parents():  # e.g. /work holds only main, /work/main only .venv
        children = {
            Path(p).relative_to(parent).parts[0]
            for p in (sys.base_prefix, sys.prefix)
            if p.startswith(parent + "/")
        }
        assert set(listing[parent]) == children, parent
    assert set(listing["/etc"]) <= {Path(e).parts[2] for e in (*ETC_ENTRIES, *GENERATED_ETC)}
    assert "shadow" not in listing["/etc"]


# --- environment, identity, namespaces ----------------------------------------------------------------

ENV_PROBE = """
import json, os
seen = []
for pid in os.listdir("/proc"):
    if pid.isdigit():
        for name in ("environ", "cmdline"):
            try:
                text = open(f"/proc/{pid}/{name}", "rb").read().decode(errors="replace")
            except OSError:
                continue
            seen += [item for item in text.split("\\0") if "canary-" in item]
print(json.dumps({"env": dict(os.environ), "proc_hits": seen}))
"""
EXPLICIT = {"PATH", "HOME", "TMPDIR", "LANG", "SBX_OUTPUT", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"}


def test_environment_is_exactly_the_explicit_one(tmp_path: Path) -> None:
    launched = run(make_job(tmp_path, ENV_PROBE, env={"JOB_SETTING": "42"}))
    assert launched.rc == 0, launched.log
    probe_out = last_json(launched.log)
    env: dict[str, str] = probe_out["env"]  # type: ignore[assignment]
    assert set(env) == EXPLICIT | {"JOB_SETTING", "PWD"}  # PWD: set by /bin/sh
    assert env["SBX_OUTPUT"] == "/output" and env["HOME"] == "/job" and env["JOB_SETTING"] == "42"
    assert probe_out["proc_hits"] == []  # no process it can see has the canaries in its environ/cmdline
    for canary in (RAY_CANARY, SBX_CANARY):
        assert canary not in launched.log


IDENTITY_PROBE = """
import json, os, socket, sys
port = int(sys.argv[1])
out = {"uid": os.getuid(), "gid": os.getgid()}
open("/output/owned", "w").write("x")
try:
    open("/data/secret.txt").read()
    out["secret"] = "read"
except OSError as exc:
    out["secret"] = type(exc).__name__
out["public"] = open("/data/public.txt").read()
try:
    open("/data/new.txt", "w")
    out["ro"] = "written"
except OSError as exc:
    out["ro"] = exc.errno
out["fds"] = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))  # listdir's own fd is the last
out["procs"] = {p: open(f"/proc/{p}/comm").read().strip() for p in os.listdir("/proc") if p.isdigit()}
out["interfaces"] = [name for _, name in socket.if_nameindex()]
try:
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    out["connect"] = "connected"
except OSError as exc:
    out["connect"] = type(exc).__name__
try:
    open("/dev/tty")
    out["tty"] = "opened"
except OSError:
    out["tty"] = "none"
out["sid_is_ours"] = os.getsid(0) in (os.getpid(), os.getppid())
print(json.dumps(out))
"""


@needs_root
def test_identity_namespaces_and_network(tmp_path: Path, listener: int) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "secret.txt").write_text(SBX_CANARY)
    (data / "secret.txt").chmod(0o600)  # root's, not the job uid's: unreadable even though bound
    (data / "public.txt").write_text("public")
    job_dir = make_job(
        tmp_path,
        IDENTITY_PROBE,
        readonly_binds=((str(data), "/data"),),
        command=f"exec python probe.py {listener}",
    )
    launched = run(job_dir)
    assert launched.rc == 0, launched.log
    out = last_json(launched.log)
    host_uid, _ = job_host_ids(f"t-{tmp_path.name}")
    assert (out["uid"], out["gid"]) == (1000, 1000)
    owned = (job_dir / "output" / "owned").stat()
    assert (owned.st_uid, owned.st_gid) == (host_uid, host_uid)  # unprivileged on the host: the job's uid
    assert out["secret"] == "PermissionError" and out["public"] == "public"
    assert out["ro"] == 30  # EROFS: read-only binds are read-only
    assert out["fds"] == [0, 1, 2, 3]  # no descriptor of the launcher or of bwrap leaks in
    assert SBX_CANARY not in launched.log
    procs: dict[str, str] = out["procs"]  # type: ignore[assignment]
    assert procs["1"] == "bwrap" and set(procs.values()) <= {"bwrap", "python", "python3"}, procs
    assert out["interfaces"] == ["lo"]
    assert out["connect"] == "ConnectionRefusedError"  # its own loopback: the host's listener is absent
    assert out["tty"] == "none" and out["sid_is_ours"] is True


# --- limits -------------------------------------------------------------------------------------------

MEMORY_BOMB = """
chunks = []
while True:
    chunks.append(bytearray(16 << 20))  # touched: bytearray zero-fills
"""


def cgroup_dirs_of(job_id: str) -> list[Path]:
    """Every cgroup directory left for ``job_id`` (there must be none after a run)."""
    return [p for p in CGROUP_ROOT.glob("*/**/sbx-*") if job_id.replace(":", "_") in p.name]


@needs_cgroup
def test_memory_bomb_is_out_of_memory(tmp_path: Path) -> None:
    launched = run(make_job(tmp_path, MEMORY_BOMB, limits=_limits(memory_mib=128)))
    assert launched.result.reason == "out_of_memory", launched.log
    assert launched.rc == 1
    assert any(e.endswith(":memory") for e in launched.result.enforced)
    assert cgroup_dirs_of(f"t-{tmp_path.name}") == []


FORK_BOMB = """
import os, time
while True:  # a bomb does not give up when a fork is refused
    try:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
    except OSError:
        time.sleep(0.001)
"""


@needs_cgroup
@needs_root
def test_fork_bomb_is_too_many_processes_and_the_host_is_fine(tmp_path: Path) -> None:
    launched = run(make_job(tmp_path, FORK_BOMB, limits=_limits(max_pids=32)))
    assert launched.result.reason == "too_many_processes", launched.log
    assert launched.rc == 1
    assert processes_of_uid(job_host_ids(f"t-{tmp_path.name}")[0]) == 0
    assert subprocess.run(["true"], timeout=10, check=False).returncode == 0  # the host still forks
    assert cgroup_dirs_of(f"t-{tmp_path.name}") == []


DISK_FILL = """
import os
n = 0
while True:  # many files, each below the per-file cap: only the watchdog can stop this
    with open(f"/output/fill-{n}", "wb") as fh:
        for _ in range(4):
            fh.write(bytes(1 << 20))
    n += 1
"""


def test_disk_fill_is_disk_quota_and_bounded(tmp_path: Path) -> None:
    launched = run(make_job(tmp_path, DISK_FILL, limits=_limits(disk_mib=32)))
    assert launched.result.reason == "disk_quota", launched.log
    assert launched.rc == 1
    used = disk_usage((str(launched.job_dir / "work"), str(launched.job_dir / "output")))
    assert used <= (32 << 20) + (64 << 20), used  # the cap plus what one scan interval lets through


TMP_FILL = """
import json
written = 0
try:
    with open("/tmp/fill", "wb") as fh:
        while True:
            fh.write(b"x" * (1 << 20))
            fh.flush()
            written += 1 << 20
except OSError as exc:
    print(json.dumps({"written": written, "errno": exc.errno}))
"""


def test_tmp_fill_stops_at_its_size(tmp_path: Path) -> None:
    launched = run(make_job(tmp_path, TMP_FILL, limits=_limits(tmp_mib=8)))
    out = last_json(launched.log)
    assert out["errno"] == 28  # ENOSPC
    assert out["written"] <= 8 << 20  # type: ignore[operator]
    assert launched.result.reason is None


RLIMIT_PROBE = """
import json, os
out = {}
try:
    hog = bytearray(512 << 20)
    out["memory"] = "allocated"
except MemoryError:
    out["memory"] = "MemoryError"
try:  # in /tmp, which the disk watchdog does not scan: only RLIMIT_FSIZE (= the disk cap) stops this
    with open("/tmp/big", "wb") as fh:
        fh.write(b"x" * (20 << 20))
    out["file"] = "written"
except OSError as exc:
    out["file"] = exc.errno
out["size"] = os.path.getsize("/tmp/big")
print(json.dumps(out))
"""


def test_rlimit_fallback_enforces_memory_and_file_size(tmp_path: Path) -> None:
    launched = run(
        make_job(
            tmp_path, RLIMIT_PROBE, mode="rlimit", limits=_limits(memory_mib=256, disk_mib=16, tmp_mib=64)
        )
    )
    out = last_json(launched.log)
    assert out["memory"] == "MemoryError"
    assert out["file"] == 27  # EFBIG: RLIMIT_FSIZE is the disk cap
    assert out["size"] <= 16 << 20  # type: ignore[operator]
    assert {"rlimit:as", "rlimit:fsize", "rlimit:nproc"} <= set(launched.result.enforced)
    assert not any(e.startswith("cgroup") for e in launched.result.enforced)


@needs_root
def test_rlimit_fallback_stops_a_fork_bomb(tmp_path: Path) -> None:
    launched = run(make_job(tmp_path, FORK_BOMB, mode="rlimit", limits=_limits(max_pids=24)))
    assert launched.result.reason == "too_many_processes", launched.log
    assert processes_of_uid(job_host_ids(f"t-{tmp_path.name}")[0]) == 0


STOP_PROBE = """
import subprocess, time
children = [subprocess.Popen(["sleep", "300"]) for _ in range(3)]
print("ready", flush=True)
time.sleep(300)
"""


def test_sigterm_stops_the_whole_sandbox(tmp_path: Path) -> None:
    job_dir = make_job(tmp_path, STOP_PROBE)
    proc = start(job_dir)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # bounded by the pytest timeout
    assert b"ready" in line
    proc.send_signal(signal.SIGTERM)
    launched = finish(proc, job_dir)
    assert launched.result.reason == "stopped"
    assert launched.rc == 128 + signal.SIGTERM
    if os.geteuid() == 0:
        assert processes_of_uid(job_host_ids(f"t-{tmp_path.name}")[0]) == 0
        assert cgroup_dirs_of(f"t-{tmp_path.name}") == []
    assert not _sleepers_of(job_dir)


def _sleepers_of(job_dir: Path) -> list[int]:
    """Host pids of ``sleep 300`` processes still alive (any would be a leaked sandbox process)."""
    time.sleep(0.1)
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes() == b"sleep\x00300\x00":
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_log_is_capped(tmp_path: Path) -> None:
    script = "import sys\nfor i in range(20000):\n    print('line', i)\n"
    launched = run(make_job(tmp_path, script, limits=_limits(log_bytes=1000)))
    assert launched.rc == 0
    body, notice = launched.log.rsplit("[sbx] log truncated at 1000 bytes", 1)
    assert len(body.encode()) <= 1001 and notice == "\n"
    assert launched.result.log_truncated is True


# --- negative controls --------------------------------------------------------------------------------


def test_negative_control_without_sandbox_sees_canaries_and_network(tmp_path: Path, listener: int) -> None:
    script = ENV_PROBE.replace(
        "print(", "import socket\nsocket.create_connection(('127.0.0.1', PORT)).close()\nprint("
    )
    job_dir = make_job(tmp_path, script.replace("PORT", str(listener)), mode="off")
    launched = run(job_dir, {"SBX_TEST_UNSAFE_NO_SANDBOX": "1"})
    assert launched.rc == 0, launched.log
    env: dict[str, str] = last_json(launched.log)["env"]  # type: ignore[assignment]
    out = last_json(launched.log)
    assert env["RAY_FOO"] == RAY_CANARY and env["SBX_SECRET"] == SBX_CANARY  # the probes can fail
    assert f"RAY_FOO={RAY_CANARY}" in out["proc_hits"]  # type: ignore[operator]
    assert os.path.exists("/etc/shadow")
    assert launched.result.enforced == ()


def test_mode_off_is_refused_without_the_test_variable(tmp_path: Path) -> None:
    job_dir = make_job(tmp_path, "open('/output/ran', 'w').write('yes')\n", mode="off")
    launched = run(job_dir)
    assert launched.rc == 1
    assert launched.result.reason == "sandbox_error"
    assert not (job_dir / "output" / "ran").exists()


SECCOMP_PROBE = """
import ctypes, json, sys
libc = ctypes.CDLL(None, use_errno=True)
out = {}
for name, nr in zip(("keyctl", "io_uring_setup", "bpf"), map(int, sys.argv[1:])):
    ctypes.set_errno(0)
    libc.syscall(nr, 0, 0, 0, 0, 0)
    out[name] = ctypes.get_errno()
print(json.dumps(out))
"""


@pytest.mark.skipif(denylist_program(os.uname().machine) is None, reason="no seccomp table for this machine")
@pytest.mark.parametrize("mode", ["auto", "off"])
def test_seccomp_refuses_the_denied_calls(tmp_path: Path, mode: str) -> None:
    column = 0 if os.uname().machine == "x86_64" else 1
    numbers = " ".join(str(DENIED[n][column]) for n in ("keyctl", "io_uring_setup", "bpf"))
    job_dir = make_job(tmp_path, SECCOMP_PROBE, mode=mode, command=f"exec python probe.py {numbers}")
    launched = run(job_dir, {"SBX_TEST_UNSAFE_NO_SANDBOX": "1"} if mode == "off" else None)
    out = last_json(launched.log)
    if mode == "auto":
        assert out == {"keyctl": errno.EPERM, "io_uring_setup": errno.EPERM, "bpf": errno.EPERM}
        assert "seccomp" in launched.result.enforced
    else:  # the negative control: without the sandbox the kernel answers these calls itself
        assert all(e != errno.EPERM for e in out.values()), out


def test_a_sandbox_that_cannot_start_is_a_sandbox_error(tmp_path: Path) -> None:
    job_dir = make_job(
        tmp_path, "open('/output/ran', 'w')\n", readonly_binds=((str(tmp_path / "missing"), "/in"),)
    )
    launched = run(job_dir)
    assert launched.rc == 1
    assert launched.result.reason == "sandbox_error" and launched.result.exit_code is None
    assert not (job_dir / "output" / "ran").exists()
    assert RAY_CANARY not in launched.log and SBX_CANARY not in launched.log


def test_probe_reports_the_isolation() -> None:
    assert REPORT.available and REPORT.bwrap_version
    assert "disk-watchdog" in REPORT.enforced and "rlimit:fsize" in REPORT.enforced
    assert REPORT.summary.startswith("bubblewrap ")


def _limits(**changes: int) -> SandboxLimits:
    """:data:`LIMITS` with ``changes``."""
    return SandboxLimits(**{**LIMITS.to_dict(), **changes})
