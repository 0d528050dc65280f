"""Jobs on an existing Ray cluster through Ray's Job Submission API (backend kind ``ray``).

Decisions recorded here:

* **Auth.** Ray 2.60 clusters enforce token auth. The broker holds the token and sends it explicitly as an
  ``Authorization: Bearer`` header on every dashboard request; it never relies on ``RAY_AUTH_*`` variables
  of its own process, and never puts the token into a job's entrypoint, ``runtime_env`` or metadata (a
  launch whose ``env`` names a ``RAY_AUTH*`` variable is refused).
* **Idempotency.** The submission id is the launch name. ``start`` first asks whether the job exists and a
  lost race ("already exists") is treated as success, so two calls never run two jobs.
* **Interpreter.** When ``interpreter_dir`` is given (the local embedded cluster runs the broker's venv),
  ``runtime_env.env_vars.PATH`` puts it first (``<dir>:${PATH}``; Ray expands ``${PATH}`` on the worker), so
  a ``python …`` entrypoint runs the intended interpreter. A ``pip`` runtime env still wins: Ray activates
  its virtualenv after applying ``env_vars``, and that virtualenv sees the same site-packages.
* **Times.** ``start_ms``/``end_ms`` are Ray's ``JobDetails.start_time``/``end_time`` (ms). Ray sets
  ``start_time`` when the job is accepted, so metering includes runtime-env setup; ``start_ms`` is only
  reported once the job is RUNNING or finished.
* **Capacity.** Summed ``resources_total`` of ALIVE nodes from the dashboard's state API
  (``/api/v0/nodes`` via :class:`ray.util.state.StateApiClient`): plain HTTP with the same token, no
  ``ray.init()`` and no joining the cluster.
* **Max runtime.** Not enforced here (the broker stops jobs at their deadline); :meth:`stop` always works.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

from common.errors import InvalidInput
from common.resources import Resources

from .base import (
    DEFAULT_LOG_BYTES,
    NOT_FOUND_STATUS,
    BackendError,
    BackendState,
    BackendStatus,
    JobLaunch,
    SandboxUnavailable,
    tail_bytes,
)

#: Why a shared Ray cluster runs no SME code (docs/security.md, "Remote Ray").
REMOTE_RAY_REFUSAL = (
    "this broker runs jobs on a shared Ray cluster (SBX_RAY_ADDRESS), which has no isolation between "
    "tenants' jobs, so it runs no SME code there; code jobs need the embedded sandbox (SBX_COMPUTE=ray-local "
    "without SBX_RAY_ADDRESS) or KubeRay (SBX_COMPUTE=kuberay: a RayCluster per job)"
)

T = TypeVar("T")
_MIB = 1024 * 1024
_HTTP_STATUS = re.compile(r"status code (\d{3})")
_RAY_STATES = {
    "PENDING": BackendState.PENDING,
    "RUNNING": BackendState.RUNNING,
    "SUCCEEDED": BackendState.SUCCEEDED,
    "FAILED": BackendState.FAILED,
    "STOPPED": BackendState.STOPPED,
}
_FORBIDDEN_ENV = re.compile(r"^(RAY_AUTH|RAY_ADDRESS$|RAY_JOB_ID$)", re.IGNORECASE)


def build_runtime_env(
    launch: JobLaunch, interpreter_dir: Path | None = None, *, with_secrets: bool = True
) -> dict[str, Any]:
    """Return the Ray ``runtime_env`` of ``launch``: working dir upload, pip requirements, job env.

    Pure: no I/O. Refuses env variables that would carry or override cluster credentials. ``secret_env`` joins
    the env unless ``with_secrets`` is false (a Ray cluster shows a job's runtime env only to holders of the
    broker's token; KubeRay would write it into the RayJob object, so it passes Secret references instead).
    """
    env = {**launch.env, **launch.secret_env} if with_secrets else dict(launch.env)
    bad = sorted(k for k in env if _FORBIDDEN_ENV.match(k))
    if bad:
        raise InvalidInput(f"job env must not set {', '.join(bad)}: the broker manages cluster access")
    if interpreter_dir is not None:
        if "PATH" in env:
            raise InvalidInput("job env must not set PATH on this cluster: the broker pins the interpreter")
        env["PATH"] = f"{interpreter_dir}:${{PATH}}"
    runtime_env: dict[str, Any] = {}
    if launch.working_dir is not None:
        runtime_env["working_dir"] = str(launch.working_dir)
    if launch.requirements:
        runtime_env["pip"] = list(launch.requirements)
    if env:
        runtime_env["env_vars"] = env
    return runtime_env


def entrypoint_resources(resources: Resources) -> dict[str, Any]:
    """Return the ``entrypoint_num_cpus/gpus/memory`` keyword arguments for ``submit_job`` (pure)."""
    kwargs: dict[str, Any] = {}
    if resources.milli_cpu:
        kwargs["entrypoint_num_cpus"] = resources.milli_cpu / 1000
    if resources.gpus:
        kwargs["entrypoint_num_gpus"] = resources.gpus
    if resources.memory_mib:
        kwargs["entrypoint_memory"] = resources.memory_mib * _MIB
    return kwargs


def map_ray_status(status: str, start_ms: int | None, end_ms: int | None, message: str) -> BackendStatus:
    """Translate a Ray job status and its times into a :class:`BackendStatus` (pure)."""
    state = _RAY_STATES.get(str(status).upper())
    if state is None:
        raise BackendError(f"Ray reported an unknown job status {status!r}")
    start = start_ms if state is not BackendState.PENDING else None
    end = end_ms if state.is_terminal else None
    return BackendStatus(state, start, end, message or "")


def resources_from_ray(totals: dict[str, float]) -> Resources:
    """Convert Ray resource totals (CPU count, GPU count, memory bytes) to integer :class:`Resources`.

    Fractions are rounded down: capacity is never over-stated.
    """
    cpu = Fraction(str(totals.get("CPU", 0)))
    gpu = Fraction(str(totals.get("GPU", 0)))
    mem = Fraction(str(totals.get("memory", 0)))
    return Resources(milli_cpu=int(cpu * 1000), gpus=int(gpu), memory_mib=int(mem / _MIB))


def http_status_of(exc: BaseException) -> int | None:
    """Return the HTTP status Ray's SDK wrote into its error message (it raises bare RuntimeErrors)."""
    found = _HTTP_STATUS.search(str(exc))
    return int(found.group(1)) if found else None


class RayJobsBackend:
    """A :class:`~broker.compute.base.ComputeBackend` over ``ray.job_submission.JobSubmissionClient``."""

    kind = "ray"

    def __init__(
        self,
        address: str,
        auth_token: str | None,
        *,
        interpreter_dir: Path | None = None,
        capacity_override: Resources | None = None,
        sandboxed_entrypoints: bool = False,
    ) -> None:
        """Talk to the Ray dashboard at ``address`` (``http://host:8265``) with ``auth_token``.

        Nothing is contacted until the first call. ``auth_token`` may be ``None`` only for a cluster
        started with auth disabled. ``capacity_override`` replaces the capacity read from the cluster.
        A shared Ray cluster has no isolation between jobs, so SME code (a launch that is not the broker's
        harness) is refused unless ``sandboxed_entrypoints`` says the caller wraps every entrypoint in
        the sandbox launcher itself (the local embedded backend does).
        """
        self._sandboxed = sandboxed_entrypoints
        self._address = address
        self._headers = {"Authorization": f"Bearer {auth_token}"} if auth_token else {}
        self._interpreter_dir = interpreter_dir
        self._capacity_override = capacity_override
        self._client: Any = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def address(self) -> str:
        """The dashboard address this backend talks to."""
        return self._address

    # --- ComputeBackend ----------------------------------------------------------------------------
    def create(self, launch: JobLaunch) -> None:
        """Validate the launch; Ray has no "created but not started" job, so nothing is sent."""
        self._check_isolation(launch)
        build_runtime_env(launch, self._interpreter_dir)

    def start(self, launch: JobLaunch) -> None:
        """Submit the job with ``submission_id = launch.name`` unless Ray already has it."""
        self._check_isolation(launch)
        runtime_env = build_runtime_env(launch, self._interpreter_dir)
        client = self._connect()
        if self._exists(client, launch.name):
            return
        metadata = {**launch.labels, "sbx_job_id": launch.job_id, "sbx_org_id": launch.org_id}
        try:
            client.submit_job(
                entrypoint=launch.entrypoint,
                submission_id=launch.name,
                runtime_env=runtime_env,
                metadata={str(k): str(v) for k, v in metadata.items()},
                **entrypoint_resources(launch.resources),
            )
        except Exception:
            if self._exists(client, launch.name):  # lost a race with a concurrent start: same job
                return
            with self._translated(f"Ray refused job {launch.name}"):
                raise

    def status(self, name: str) -> BackendStatus:
        """Return Ray's view of job ``name`` (``NOT_FOUND`` when Ray does not know it)."""
        client = self._connect()
        info = self._call(f"cannot read Ray job {name}", lambda: client.get_job_info(name), missing=None)
        if info is None:
            return NOT_FOUND_STATUS
        return map_ray_status(str(info.status), info.start_time, info.end_time, info.message or "")

    def logs(self, name: str, max_bytes: int = DEFAULT_LOG_BYTES) -> str:
        """Return the tail of the job's driver output (empty for an unknown job)."""
        client = self._connect()
        text = self._call(
            f"cannot read logs of Ray job {name}", lambda: client.get_job_logs(name), missing=""
        )
        return tail_bytes(str(text), max_bytes)

    def stop(self, name: str) -> None:
        """Ask Ray to stop job ``name``; finished or unknown jobs are left alone."""
        client = self._connect()
        self._call(f"cannot stop Ray job {name}", lambda: client.stop_job(name), missing=None)

    def capacity(self) -> Resources:
        """Return the summed resources of the cluster's ALIVE nodes (or the configured override)."""
        if self._capacity_override is not None:
            return self._capacity_override
        self._check_open()
        from ray.util.state import StateApiClient
        from ray.util.state.common import ListApiOptions, StateResource

        with self._translated("cannot read the nodes of the Ray cluster"):
            client = StateApiClient(address=self._address, headers=dict(self._headers))
            nodes = client.list(
                StateResource.NODES, options=ListApiOptions(limit=10_000), raise_on_missing_output=False
            )
        total = Resources()
        for node in nodes:
            if str(_field(node, "state")) == "ALIVE":
                total = total + resources_from_ray(dict(_field(node, "resources_total") or {}))
        return total

    def stop_all(self, timeout_s: float = 15.0) -> list[str]:
        """Stop every unfinished job on the cluster and wait (up to ``timeout_s``) until all are terminal.

        Used before tearing down a cluster this broker owns, so entrypoints get Ray's graceful stop
        (SIGTERM, then SIGKILL). Returns the names still unfinished at the deadline.
        """
        client = self._connect()
        with self._translated("cannot list the jobs of the Ray cluster"):
            active = [j.submission_id for j in client.list_jobs() if not j.status.is_terminal()]
        for name in active:
            self.stop(name)
        deadline = time.monotonic() + timeout_s
        while active and time.monotonic() < deadline:
            active = [n for n in active if not self.status(n).state.is_terminal]
            if active:
                time.sleep(0.2)
        return active

    def close(self) -> None:
        """Drop the client; jobs on the (external) cluster keep running and stay findable by name."""
        with self._lock:
            self._client = None
            self._closed = True

    # --- internals ---------------------------------------------------------------------------------
    def _check_isolation(self, launch: JobLaunch) -> None:
        if not (launch.harness or self._sandboxed):
            raise SandboxUnavailable(REMOTE_RAY_REFUSAL)

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError(f"the Ray backend for {self._address} is closed")

    def _connect(self) -> Any:
        with self._lock:
            self._check_open()
            if self._client is None:
                from ray.job_submission import JobSubmissionClient

                with self._translated("cannot reach the Ray dashboard"):
                    self._client = JobSubmissionClient(self._address, headers=dict(self._headers))
            return self._client

    def _exists(self, client: Any, name: str) -> bool:
        found = self._call(f"cannot read Ray job {name}", lambda: client.get_job_info(name), missing=None)
        return found is not None

    @contextlib.contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        """The one place Ray's SDK errors (bare ``RuntimeError``s and transport errors) become
        :class:`BackendError`, with the third-party error chained."""
        try:
            yield
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"{what} at {self._address}: {exc}") from exc

    def _call(self, what: str, fn: Callable[[], T], *, missing: T) -> T:
        """``fn()``, or ``missing`` when Ray answers 404 (it does not know the job); other errors translated."""
        try:
            return fn()
        except Exception as exc:
            if http_status_of(exc) == 404:
                return missing
            with self._translated(what):
                raise


def _field(record: Any, name: str) -> Any:
    """Read ``name`` from a state-API record (a dataclass, or a dict in older Ray versions)."""
    return record.get(name) if isinstance(record, dict) else getattr(record, name, None)
