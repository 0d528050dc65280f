"""An in-memory backend whose jobs follow a script and an injected clock (unit/API tests, benchmarks).

Nothing runs: a started launch is PENDING for ``pending_ms``, RUNNING for ``run_ms`` (forever when ``None``),
then SUCCEEDED (``exit_code == 0``) or FAILED — all read off the injected :class:`~common.clock.Clock`, so a
test moves a job along by advancing a ``FakeClock``. Tests can also inject submit failures and change the
capacity. All methods are thread-safe.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from common.clock import Clock
from common.resources import Resources

from .base import (
    DEFAULT_LOG_BYTES,
    NOT_FOUND_STATUS,
    BackendError,
    BackendState,
    BackendStatus,
    JobLaunch,
    tail_bytes,
)


@dataclass(frozen=True, slots=True)
class FakeScript:
    """How a fake launch behaves once started."""

    pending_ms: int = 0
    run_ms: int | None = 1_000
    exit_code: int = 0
    output: str = ""


DEFAULT_CAPACITY = Resources(milli_cpu=8_000, gpus=0, memory_mib=16_384)
DEFAULT_SCRIPT = FakeScript()


@dataclass(slots=True)
class _Run:
    launch: JobLaunch
    script: FakeScript
    started_at: int | None = None
    stopped_at: int | None = None


class FakeBackend:
    """A scriptable, thread-safe :class:`~broker.compute.base.ComputeBackend` driven by a clock."""

    kind = "fake"

    def __init__(
        self,
        clock: Clock,
        capacity: Resources = DEFAULT_CAPACITY,
        default_script: FakeScript = DEFAULT_SCRIPT,
    ) -> None:
        self._clock = clock
        self._capacity = capacity
        self._default = default_script
        self._scripts: dict[str, FakeScript] = {}
        self._runs: dict[str, _Run] = {}
        self._submit_failures: list[BackendError] = []
        self._start_calls: dict[str, int] = {}
        self._closed = False
        self._down = False
        self._lock = threading.Lock()

    # --- scripting (tests) -------------------------------------------------------------------------
    def script(self, name: str, script: FakeScript) -> None:
        """Set how launch ``name`` behaves when it starts (before or after ``create``)."""
        with self._lock:
            self._scripts[name] = script
            run = self._runs.get(name)
            if run is not None and run.started_at is None:
                run.script = script

    def fail_next_starts(self, count: int = 1, detail: str = "injected submit failure") -> None:
        """Make the next ``count`` calls to :meth:`start` raise :class:`BackendError`."""
        with self._lock:
            self._submit_failures.extend(BackendError(detail) for _ in range(count))

    def set_down(self, down: bool = True) -> None:
        """While down, every call raises :class:`BackendError`, as an unreachable cluster does."""
        with self._lock:
            self._down = down

    def lose(self, name: str) -> None:
        """Forget launch ``name``, as a restarted cluster does: it is ``NOT_FOUND`` from now on."""
        with self._lock:
            self._runs.pop(name, None)

    def set_capacity(self, capacity: Resources) -> None:
        """Change what :meth:`capacity` reports."""
        with self._lock:
            self._capacity = capacity

    def start_count(self, name: str) -> int:
        """How many runs launch ``name`` has had: 0 before start, then 1 however often start is called."""
        with self._lock:
            return self._start_calls.get(name, 0)

    def active(self) -> list[str]:
        """Names of started launches that have not reached a terminal state (works after close)."""
        with self._lock:
            return sorted(
                n for n, r in self._runs.items() if r.started_at is not None and not self._is_done(r)
            )

    # --- ComputeBackend ----------------------------------------------------------------------------
    def create(self, launch: JobLaunch) -> None:
        """Register ``launch`` (idempotent)."""
        with self._lock:
            self._check_open()
            if launch.name not in self._runs:
                self._runs[launch.name] = _Run(launch, self._scripts.get(launch.name, self._default))

    def start(self, launch: JobLaunch) -> None:
        """Start ``launch`` at the clock's now, creating it if needed (idempotent)."""
        with self._lock:
            self._check_open()
            if self._submit_failures:
                raise self._submit_failures.pop(0)
            run = self._runs.setdefault(
                launch.name, _Run(launch, self._scripts.get(launch.name, self._default))
            )
            if run.started_at is None and run.stopped_at is None:
                run.started_at = self._clock.now_ms()
                self._start_calls[launch.name] = self._start_calls.get(launch.name, 0) + 1

    def status(self, name: str) -> BackendStatus:
        """Return the launch's state as of the clock's now."""
        with self._lock:
            self._check_open()
            run = self._runs.get(name)
            return NOT_FOUND_STATUS if run is None else self._status(run, self._clock.now_ms())

    def logs(self, name: str, max_bytes: int = DEFAULT_LOG_BYTES) -> str:
        """Return the scripted output once the launch has started running."""
        with self._lock:
            self._check_open()
            run = self._runs.get(name)
            if run is None or self._status(run, self._clock.now_ms()).start_ms is None:
                return ""
            return tail_bytes(run.script.output, max_bytes)

    def stop(self, name: str) -> None:
        """Stop the launch now unless it already finished (idempotent; unknown names are ignored)."""
        with self._lock:
            self._check_open()
            run = self._runs.get(name)
            if run is not None and run.stopped_at is None and not self._is_done(run):
                run.stopped_at = self._clock.now_ms()

    def capacity(self) -> Resources:
        """Return the configured capacity."""
        with self._lock:
            self._check_open()
            return self._capacity

    def close(self) -> None:
        """Stop every active launch (as the embedded Ray backend does) and refuse further calls."""
        with self._lock:
            now = self._clock.now_ms()
            for run in self._runs.values():
                if run.started_at is not None and run.stopped_at is None and not self._is_done(run):
                    run.stopped_at = now
            self._closed = True

    # --- internals ---------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise BackendError("the fake backend is closed")
        if self._down:
            raise BackendError("the fake backend is down (scripted)")

    def _is_done(self, run: _Run) -> bool:
        return self._status(run, self._clock.now_ms()).state.is_terminal

    @staticmethod
    def _status(run: _Run, now: int) -> BackendStatus:
        script = run.script
        if run.started_at is None:
            if run.stopped_at is not None:
                return BackendStatus(BackendState.STOPPED, None, None, "stopped before start")
            return BackendStatus(BackendState.PENDING, message="created")
        begin = run.started_at + script.pending_ms
        finish = None if script.run_ms is None else begin + script.run_ms
        stop = run.stopped_at
        if stop is not None and stop < begin:
            return BackendStatus(BackendState.STOPPED, None, None, "stopped while pending")
        if stop is not None and (finish is None or stop < finish):
            return BackendStatus(BackendState.STOPPED, begin, stop, "stopped")
        if now < begin:
            return BackendStatus(BackendState.PENDING, message="waiting for resources")
        if finish is None or now < finish:
            return BackendStatus(BackendState.RUNNING, begin)
        if script.exit_code == 0:
            return BackendStatus(BackendState.SUCCEEDED, begin, finish)
        return BackendStatus(BackendState.FAILED, begin, finish, f"exit code {script.exit_code}")
