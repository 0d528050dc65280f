"""The embedded default (backend kind ``ray-local``): a private Ray head started by the broker.

:class:`LocalRayBackend` runs ``ray start --head --block`` as a child process with

* its own short temp dir ``/tmp/ray-sbx-*`` (Ray's socket paths must stay under 108 bytes, so a deep state
  dir cannot hold it); the state dir keeps ``ray-local.json`` with the head's pid, temp dir and port;
* free ports picked at start for every Ray listener, the dashboard on 127.0.0.1, usage stats off;
* token auth on: a fresh random token in ``<temp dir>/auth_token`` (mode 0600), given to the head as
  ``RAY_AUTH_MODE=token`` + ``RAY_AUTH_TOKEN_PATH`` (never the token itself in any environment); the broker
  sends it as a header through :class:`~broker.compute.ray_jobs.RayJobsBackend`;
* **every job in the sandbox**: a launch's Ray entrypoint is the sandbox launcher
  (``python -I -m broker.compute.sandbox.launch <job dir>/spec.json``), never the SME's command. The launcher
  runs the command in bubblewrap under an unprivileged uid with an allow-list of mounts (the job's own
  ``work/`` and ``output/``, a fresh ``/tmp``, the system and the interpreter read-only), no network, no
  Ray connection and an explicit environment, inside a cgroup that enforces the admitted memory, CPU and
  process count (rlimits where no cgroup can be made). Ray's ``working_dir`` cache is never used: the broker
  unpacked the code itself. A harness run gets its staged ``input/`` read-only at ``/input`` and the
  project's own packages read-only. See ``docs/security.md``.

If the state dir names a head that is still alive (a broker restart), it is adopted, so running jobs stay
findable by name. :meth:`LocalRayBackend.close` stops the head (SIGTERM to ``ray start``, which stops the
GCS, raylet, dashboard and workers; SIGKILL to its process group after a grace period), kills any stray
process still naming the temp dir, and removes the temp dir.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from common.resources import Resources

from .base import DEFAULT_LOG_BYTES, BackendError, BackendState, BackendStatus, JobLaunch
from .ray_jobs import RayJobsBackend

if TYPE_CHECKING:
    from .sandbox import SandboxResult, SandboxSpec

#: The packages the broker's own harness imports inside its sandbox (bound read-only under
#: :data:`HARNESS_LIB` when they are not already inside the mounted environment, as with an editable install).
HARNESS_PACKAGES = ("common", "quotas", "datasets", "privacy")
HARNESS_LIB = "/opt/sbx/lib"


def harness_entrypoint(module: str, *args: str) -> str:
    """The sandboxed command that runs the harness module ``module`` with ``args``: the packages bound at
    :data:`HARNESS_LIB` come first on its path (never ``broker``, which is not mounted)."""
    boot = f"import runpy, sys; sys.path.insert(0, {HARNESS_LIB!r}); runpy.run_module({module!r}, run_name='__main__')"
    return shlex.join(["python", "-I", "-c", boot, *args])


_LAUNCHES = "launches"


@dataclass(frozen=True, slots=True)
class SandboxDefaults:
    """Physical limits of the embedded sandbox not given by a job's admitted resources (settings)."""

    disk_mib: int = 1024
    tmp_mib: int = 256
    max_pids: int = 256
    log_bytes: int = 1 << 20
    default_memory_mib: int = 2048
    unsafe_no_sandbox: bool = False  # TESTS ONLY: the attack suite's negative control


_STATE_FILE = "ray-local.json"
_PORT_FLAGS = (
    "--port",
    "--dashboard-port",
    "--ray-client-server-port",
    "--node-manager-port",
    "--object-manager-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
)


@dataclass(frozen=True, slots=True)
class HeadInfo:
    """Where a running local head lives (persisted in the state dir to adopt it after a restart)."""

    pid: int
    temp_dir: str
    dashboard_port: int

    @property
    def address(self) -> str:
        """The dashboard URL."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def token_path(self) -> Path:
        """The file that holds the head's auth token."""
        return Path(self.temp_dir) / "auth_token"


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct TCP ports that were free on 127.0.0.1 a moment ago."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def pids_mentioning(text: str) -> list[int]:
    """Return the pids whose command line or environment contains ``text``, excluding this process.

    The command line catches Ray's own processes (they name the temp dir); the environment catches job
    entrypoints, which inherit ``RAY_AUTH_TOKEN_PATH=<temp dir>/auth_token`` from the raylet but whose
    command lines are the user's.
    """
    needle = text.encode()
    found: set[int] = set()
    for proc in Path("/proc").glob("[0-9]*"):
        for part in ("cmdline", "environ"):
            try:
                if needle in (proc / part).read_bytes():
                    found.add(int(proc.name))
            except OSError:  # gone, or not ours to read
                continue
    if not Path("/proc/self").exists():  # not Linux: fall back to the command line only
        out = subprocess.run(["pgrep", "-f", text], capture_output=True, text=True, check=False).stdout
        found.update(int(p) for p in out.split())
    found.discard(os.getpid())
    return sorted(found)


class LocalRayBackend:
    """A :class:`~broker.compute.base.ComputeBackend` on a Ray head this object starts and stops."""

    kind = "ray-local"

    def __init__(
        self,
        state_dir: Path,
        num_cpus: int | None = None,
        *,
        num_gpus: int | None = None,
        object_store_mib: int = 256,
        start_timeout_s: float = 90.0,
        ray_bin: Path | None = None,
        sandbox: SandboxDefaults | None = None,
    ) -> None:
        """Start (or adopt) the local head; blocks until its dashboard answers (a few seconds)."""
        self._state_dir = Path(state_dir)
        self._state_dir.mkdir(parents=True, exist_ok=True)
        self._sandbox = sandbox or SandboxDefaults()
        self._ray_bin = ray_bin or Path(sys.executable).with_name("ray")
        self._num_cpus = num_cpus
        self._num_gpus = num_gpus
        self._object_store_mib = object_store_mib
        self._head: HeadInfo | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._restart_lock = threading.Lock()
        self._head = self._adopt() or self._start_head(start_timeout_s)
        self._jobs = self._client()
        self._wait_ready(start_timeout_s)

    def _client(self) -> RayJobsBackend:
        """The Job Submission client of the current head (its address and token change with a restart)."""
        return RayJobsBackend(
            self.head.address,
            self.head.token_path.read_text().strip(),
            interpreter_dir=Path(sys.executable).parent,
            sandboxed_entrypoints=True,
        )

    @property
    def head(self) -> HeadInfo:
        """The running head (raises once closed)."""
        if self._head is None:
            raise BackendError("the local Ray head is stopped")
        return self._head

    @property
    def state_dir(self) -> Path:
        """Where this backend keeps the head's record and its launches' records."""
        return self._state_dir

    @property
    def address(self) -> str:
        """The head's dashboard URL."""
        return self.head.address

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran (the head is stopped)."""
        return self._head is None

    def head_alive(self) -> bool:
        """True while the head process this backend started (or adopted) is running: a cheap local check."""
        head = self._head
        if head is None:
            return False
        if self._proc is not None:
            return self._proc.poll() is None
        try:
            os.kill(head.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def restart(self, timeout_s: float = 90.0) -> bool:
        """Start a fresh head if the current one died; True when it restarted one.

        The dead head's jobs died with it (their sandboxes die with their launchers); whatever of it is
        left is swept first. The broker then finds those jobs ``NOT_FOUND`` and settles them as lost, billed
        up to when it last saw them running.
        """
        with self._restart_lock:
            old = self._head
            if old is None or self.head_alive():
                return False
            self._stop_head(old, signal_head=False)
            self._jobs.close()
            self._head = self._start_head(timeout_s)
            self._jobs = self._client()
            self._wait_ready(timeout_s)
            return True

    # --- the sandbox --------------------------------------------------------------------------------
    def sandbox_refusal(self) -> str | None:
        """Why SME code cannot run here (no working sandbox on this machine), or ``None`` when it can."""
        if self._sandbox.unsafe_no_sandbox:
            return None
        from .sandbox import probe

        report = probe()
        return None if report.available else f"no sandbox can be started on this machine: {report.summary}"

    def sandbox_spec(self, launch: JobLaunch, job_dir: Path) -> SandboxSpec:
        """The launcher's instructions for ``launch`` (pure apart from locating the harness packages)."""
        from .sandbox import SandboxLimits, SandboxSpec

        res, d = launch.resources, self._sandbox
        limits = SandboxLimits(
            memory_mib=res.memory_mib or d.default_memory_mib,
            milli_cpu=res.milli_cpu or 1000,
            max_pids=d.max_pids,
            disk_mib=d.disk_mib,
            log_bytes=d.log_bytes,
            tmp_mib=d.tmp_mib,
        )
        binds: list[tuple[str, str]] = []
        if launch.harness:
            if (job_dir / "input").is_dir():
                binds.append((str(job_dir / "input"), "/input"))
            binds += [(path, f"{HARNESS_LIB}/{Path(path).name}") for path in _harness_package_dirs()]
        return SandboxSpec(
            job_id=launch.job_id,
            job_dir=str(job_dir),
            command=launch.entrypoint,
            limits=limits,
            env=dict(launch.env),
            gpu_devices=gpu_device_nodes(res.gpus),
            readonly_binds=tuple(binds),
            mode="off" if d.unsafe_no_sandbox else "auto",
        )

    def _job_dir(self, launch: JobLaunch) -> Path:
        """The broker's directory of the launch, created with ``work/`` and ``output/`` if needed."""
        if launch.job_dir is not None:
            job_dir = Path(launch.job_dir)
        else:  # a launch built outside the job service (contract tests): copy its working dir
            job_dir = self._state_dir / "jobs" / launch.job_id
        for sub in ("work", "output"):
            (job_dir / sub).mkdir(parents=True, exist_ok=True)
        job_dir.chmod(0o700)
        work = job_dir / "work"
        if launch.job_dir is None and launch.working_dir is not None and not any(work.iterdir()):
            shutil.copytree(launch.working_dir, work, dirs_exist_ok=True, symlinks=True)
        return job_dir

    def _sandboxed(self, launch: JobLaunch) -> JobLaunch:
        """Write the sandbox spec and return the launch Ray runs: the launcher, nothing of the job's own."""
        if launch.secret_env:
            raise BackendError("a sandboxed launch gets no credentials: stage its input into the job dir")
        from .sandbox import SandboxSpecError

        job_dir = self._job_dir(launch)
        try:
            spec = self.sandbox_spec(launch, job_dir)
        except SandboxSpecError as exc:
            raise BackendError(f"the sandbox refused launch {launch.name}: {exc}") from exc
        _write_atomic(job_dir / "spec.json", spec.to_json().encode())
        (self._state_dir / _LAUNCHES).mkdir(exist_ok=True)
        _write_atomic(self._state_dir / _LAUNCHES / launch.name, str(job_dir).encode())
        from .sandbox import UNSAFE_ENV, launcher_argv

        entrypoint = shlex.join(launcher_argv(str(job_dir / "spec.json")))
        env = {UNSAFE_ENV: "1"} if self._sandbox.unsafe_no_sandbox else {}
        return replace(launch, entrypoint=entrypoint, working_dir=None, env=env, requirements=())

    def sandbox_result(self, name: str) -> SandboxResult | None:
        """What the launcher recorded for launch ``name`` (``None`` before it ended, or if it never ran)."""
        from .sandbox import SandboxResult

        record = self._state_dir / _LAUNCHES / name
        try:
            result = Path(record.read_text()) / "result.json"
            return SandboxResult.from_json(result.read_text())
        except (OSError, ValueError):
            return None

    # --- ComputeBackend: the Job Submission API, every entrypoint through the sandbox ----------------
    def create(self, launch: JobLaunch) -> None:
        """Validate the launch (see :meth:`RayJobsBackend.create`) and its sandbox spec."""
        refusal = None if launch.harness else self.sandbox_refusal()
        if refusal is not None:
            raise BackendError(refusal)
        self._jobs.create(replace(launch, working_dir=None, requirements=()))

    def start(self, launch: JobLaunch) -> None:
        """Submit the sandboxed launch to the local head (idempotent)."""
        self._jobs.start(self._sandboxed(launch))

    def status(self, name: str) -> BackendStatus:
        """Return the job's state on the local head, with the sandbox's kill reason once it ended."""
        status = self._jobs.status(name)
        if not status.state.is_terminal:
            return status
        result = self.sandbox_result(name)
        if result is None or result.reason is None:
            return status
        state = BackendState.STOPPED if result.reason == "stopped" else BackendState.FAILED
        reason = None if result.reason in ("stopped", "sandbox_error") else result.reason
        message = f"{result.reason}: {result.detail}" if result.detail else result.reason
        return replace(status, state=state, message=message, reason=reason)

    def logs(self, name: str, max_bytes: int = DEFAULT_LOG_BYTES) -> str:
        """Return the tail of the job's output."""
        return self._jobs.logs(name, max_bytes)

    def stop(self, name: str) -> None:
        """Stop the job (idempotent)."""
        self._jobs.stop(name)

    def capacity(self) -> Resources:
        """Return the local head's resources."""
        return self._jobs.capacity()

    def close(self) -> None:
        """Stop the jobs, then the head and everything it runs, and remove its temp dir (idempotent)."""
        head, self._head = self._head, None
        if head is None:
            return
        with contextlib.suppress(BackendError):  # best effort: the sweep below kills what remains
            self._jobs.stop_all()
        self._jobs.close()
        self._stop_head(head)
        (self._state_dir / _STATE_FILE).unlink(missing_ok=True)

    def __enter__(self) -> LocalRayBackend:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- the head process --------------------------------------------------------------------------
    def _adopt(self) -> HeadInfo | None:
        """Return the head recorded in the state dir if it is still alive; clean up a dead one."""
        state = self._state_dir / _STATE_FILE
        if not state.exists():
            return None
        try:
            head = HeadInfo(**json.loads(state.read_text()))
        except (ValueError, TypeError):
            state.unlink(missing_ok=True)
            return None
        if head.pid in pids_mentioning(head.temp_dir) and head.token_path.exists():
            return head
        self._stop_head(head, signal_head=False)  # the pid may have been reused: only sweep by temp dir
        state.unlink(missing_ok=True)
        return None

    def _start_head(self, timeout_s: float) -> HeadInfo:
        temp_dir = Path(tempfile.mkdtemp(prefix="ray-sbx-", dir="/tmp"))
        token_path = temp_dir / "auth_token"
        token_path.touch(mode=0o600)
        token_path.write_text(secrets.token_hex(32))
        ports = free_ports(len(_PORT_FLAGS))
        cmd = [str(self._ray_bin), "start", "--head", "--block", "--disable-usage-stats"]
        cmd += ["--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}"]
        cmd += [f"{flag}={port}" for flag, port in zip(_PORT_FLAGS, ports, strict=True)]
        cmd += [f"--object-store-memory={self._object_store_mib * 1024 * 1024}"]
        if self._num_cpus is not None:
            cmd.append(f"--num-cpus={self._num_cpus}")
        if self._num_gpus is not None:
            cmd.append(f"--num-gpus={self._num_gpus}")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
        env |= {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token_path),
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        with open(temp_dir / "head.log", "wb") as log:
            try:
                proc = subprocess.Popen(
                    cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            except OSError as exc:
                shutil.rmtree(temp_dir, ignore_errors=True)
                raise BackendError(f"cannot run {self._ray_bin}: {exc}") from exc
        self._proc = proc
        head = HeadInfo(pid=proc.pid, temp_dir=str(temp_dir), dashboard_port=ports[1])
        (self._state_dir / _STATE_FILE).write_text(json.dumps(asdict(head)))
        return head

    def _wait_ready(self, timeout_s: float) -> None:
        """Poll until the dashboard answers and the head node is registered; else stop the head, raise."""
        deadline = time.monotonic() + timeout_s
        last: BackendError | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                break
            try:  # the dashboard answers before the node registers: wait for both
                self._jobs.status("sbx-readiness-probe")
                if not self._jobs.capacity().is_zero:
                    return
                time.sleep(0.25)
            except BackendError as exc:
                last = exc
                time.sleep(0.25)
        log = Path(self.head.temp_dir, "head.log")
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        self.close()
        raise BackendError(f"the local Ray head did not come up in {timeout_s:.0f}s: {last}\n{tail}")

    def _stop_head(self, head: HeadInfo, *, signal_head: bool = True) -> None:
        """Stop ``ray start`` gracefully, then kill whatever still names its temp dir."""
        proc, self._proc = self._proc, None
        if signal_head:
            with contextlib.suppress(ProcessLookupError):
                os.kill(head.pid, signal.SIGTERM)
        if proc is not None:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(head.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        elif signal_head:
            _wait_gone(head.pid, 30)
        deadline = time.monotonic() + 10
        while (left := pids_mentioning(head.temp_dir)) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for _ in range(3):  # a process dying a moment late may still write its port files: sweep again
            shutil.rmtree(head.temp_dir, ignore_errors=True)
            time.sleep(0.3)
            if not Path(head.temp_dir).exists():
                break


def gpu_device_nodes(gpus: int, dev: Path = Path("/dev")) -> tuple[str, ...]:
    """The device nodes of ``gpus`` admitted NVIDIA GPUs (the control nodes plus ``nvidia0..N-1``).

    The embedded head is one machine: its GPUs are handed out in device order, so a job admitted with N
    GPUs gets the first N nodes that exist (never all of them); without GPUs, none. A job asking for more
    GPUs than exist gets only those that exist (admission never admits more than the head's capacity).
    """
    if gpus <= 0:
        return ()
    control = [dev / n for n in ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools") if (dev / n).exists()]
    cards = sorted(
        (p for p in dev.glob("nvidia[0-9]*") if p.name[6:].isdigit()), key=lambda p: int(p.name[6:])
    )
    return tuple(str(p) for p in [*control, *cards[:gpus]])


def _harness_package_dirs() -> list[str]:
    """Directories of the harness's packages that the mounted environment does not already contain."""
    import importlib

    prefix = Path(sys.prefix).resolve()
    dirs = []
    for name in HARNESS_PACKAGES:
        module = importlib.import_module(name)
        path = Path(str(module.__file__)).resolve().parent
        if not path.is_relative_to(prefix):
            dirs.append(str(path))
    return dirs


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _wait_gone(pid: int, timeout_s: float) -> None:
    """Wait until ``pid`` (not our child) has exited, SIGKILL it after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
