"""One contract for every ComputeBackend: the fake, KubeRay on the in-process Kubernetes API fake, and a real
local Ray head (marker ``ray``; one head per module).

Each backend comes with a small harness that makes the three kinds of job the contract needs (one that
prints a line and succeeds, one that exits 1, one that runs until stopped) and drives time forward: the fake
by its clock, KubeRay by its toy operator, Ray by waiting for the real job.
"""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from broker.compute import (
    BackendState,
    BackendStatus,
    ComputeBackend,
    FakeBackend,
    FakeScript,
    JobLaunch,
    KubeRayBackend,
    LocalRayBackend,
    launch_name,
)
from broker.compute.kube_fake import FakeKubeApiServer, FakeRayOperator, crd_validator
from broker.compute.ray_local import pids_mentioning
from common.clock import FakeClock
from common.resources import Resources

REPO_ROOT = Path(__file__).resolve().parents[2]
RAYJOB_CRD = REPO_ROOT.parent / "shared/kuberay/ray.io_rayjobs.yaml"
TERMINAL = {BackendState.SUCCEEDED, BackendState.FAILED, BackendState.STOPPED}
JOB_RESOURCES = Resources(milli_cpu=250, memory_mib=64)

SCRIPTS = {
    "ok": "print('hello from {job_id}', flush=True)\n",
    "fail": "import sys\nprint('about to fail', flush=True)\nsys.exit(1)\n",
    "long": "import time\nprint('working', flush=True)\ntime.sleep(600)\n",
}
PRELUDE = (  # every run leaves a line in its own output dir (the sandbox lets it write nowhere else)
    "import os, pathlib\n"
    "out = os.environ.get('SBX_OUTPUT')\n"
    "if out:\n"
    "    with open(pathlib.Path(out) / 'runs', 'a') as f:\n"
    "        f.write(str(os.getpid()) + '\\n')\n"
)


class Harness(Protocol):
    backend: ComputeBackend

    def make(self, job_id: str, behaviour: str) -> JobLaunch: ...

    def until(self, name: str, states: set[BackendState]) -> BackendStatus: ...

    def runs(self, name: str) -> int: ...

    def leftovers(self) -> list[str]: ...


def _working_dir(root: Path, job_id: str, behaviour: str) -> Path:
    wd = root / f"wd-{job_id}"
    wd.mkdir(parents=True, exist_ok=True)
    (wd / "main.py").write_text(PRELUDE + SCRIPTS[behaviour].format(job_id=job_id))
    return wd


def _launch(job_id: str, wd: Path, env: dict[str, str]) -> JobLaunch:
    return JobLaunch(
        name=launch_name(job_id),
        job_id=job_id,
        org_id="org-contract",
        entrypoint=f"python main.py {job_id}",  # the job id names its processes on the host
        working_dir=wd,
        requirements=(),
        resources=JOB_RESOURCES,
        max_runtime_s=600,
        env=env,
        labels={"suite": "contract"},
    )


# --- fake -------------------------------------------------------------------------------------------
class FakeHarness:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.clock = FakeClock()
        self.fake = FakeBackend(self.clock)
        self.backend: ComputeBackend = self.fake

    def make(self, job_id: str, behaviour: str) -> JobLaunch:
        launch = _launch(job_id, _working_dir(self.root, job_id, behaviour), {})
        script = {
            "ok": FakeScript(pending_ms=100, run_ms=500, output=f"hello from {job_id}\n"),
            "fail": FakeScript(run_ms=200, exit_code=1, output="about to fail\n"),
            "long": FakeScript(run_ms=None, output="working\n"),
        }[behaviour]
        self.fake.script(launch.name, script)
        return launch

    def until(self, name: str, states: set[BackendState]) -> BackendStatus:
        for _ in range(1_000):
            status = self.backend.status(name)
            if status.state in states:
                return status
            self.clock.advance(50)
        raise AssertionError(f"{name} never reached {states}; last {status}")

    def runs(self, name: str) -> int:
        return self.fake.start_count(name)

    def leftovers(self) -> list[str]:
        return self.fake.active()


# --- KubeRay on the fake API server ------------------------------------------------------------------
def _zip_to_file_uri(root: Path) -> Callable[[Path], str]:
    def upload(wd: Path) -> str:
        target = root / f"{wd.name}.zip"
        with zipfile.ZipFile(target, "w") as zf:
            for path in sorted(wd.rglob("*")):
                zf.write(path, path.relative_to(wd))
        return target.as_uri()

    return upload


class KubeRayHarness:
    NAMESPACE = "sbx-jobs"

    def __init__(self, root: Path) -> None:
        self.root = root
        validator = crd_validator(RAYJOB_CRD) if RAYJOB_CRD.exists() else None
        if validator is None:
            print(f"KubeRay CRD not found at {RAYJOB_CRD}: the fake API server will not validate RayJobs")
        self.kube = FakeKubeApiServer(validator=validator)
        self.operator = FakeRayOperator(self.kube, self.NAMESPACE)
        self.kuberay = KubeRayBackend(
            self.kube.custom_objects_api(),
            self.NAMESPACE,
            "rayproject/ray:2.60.0",
            capacity=Resources(milli_cpu=16_000, gpus=0, memory_mib=65_536),
            core_api=self.kube.core_v1_api(),
            upload_working_dir=_zip_to_file_uri(root),
        )
        self.backend: ComputeBackend = self.kuberay
        self.behaviour: dict[str, tuple[str, str]] = {}

    def make(self, job_id: str, behaviour: str) -> JobLaunch:
        launch = _launch(job_id, _working_dir(self.root, job_id, behaviour), {})
        self.behaviour[launch.name] = (job_id, behaviour)
        return launch

    def until(self, name: str, states: set[BackendState]) -> BackendStatus:
        for _ in range(20):
            status = self.backend.status(name)
            if status.state in states:
                return status
            self._step(name)
        raise AssertionError(f"{name} never reached {states}; last {status}")

    def _step(self, name: str) -> None:
        deployment = self.operator.reconcile(name)
        job_id, behaviour = self.behaviour[name]
        if deployment == "Running" and behaviour != "long":
            self.operator.write_log(
                name, "submitting\n" + SCRIPTS[behaviour].split("'")[1].format(job_id=job_id)
            )
            self.operator.finish(name, succeeded=behaviour == "ok")

    def runs(self, name: str) -> int:
        return self.operator.clusters_created.get(name, 0)

    def leftovers(self) -> list[str]:
        deadline = time.monotonic() + 10
        while self.kube.open_connections() and time.monotonic() < deadline:
            time.sleep(0.05)
        return [f"{n} open API connection(s)" for n in [self.kube.open_connections()] if n]

    def shutdown(self) -> None:
        self.kuberay.close()
        self.kube.close()


# --- real local Ray ----------------------------------------------------------------------------------
class RayPool:
    """The module's one local Ray head; restarted only if a test closed it (e.g. under xdist reordering)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.current: LocalRayBackend | None = None

    def get(self) -> LocalRayBackend:
        if self.current is None or self.current.closed:
            self.current = LocalRayBackend(self.state_dir, num_cpus=2)
        return self.current


class RayHarness:
    def __init__(self, root: Path, pool: RayPool) -> None:
        self.root = root
        self.ray = pool.get()
        self.backend: ComputeBackend = self.ray
        self.temp_dir = self.ray.head.temp_dir
        self.ids: dict[str, str] = {}

    def make(self, job_id: str, behaviour: str) -> JobLaunch:
        self.ids[launch_name(job_id)] = job_id
        return _launch(job_id, _working_dir(self.root, job_id, behaviour), {})

    def until(self, name: str, states: set[BackendState]) -> BackendStatus:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = self.backend.status(name)
            if status.state in states:
                return status
            if status.state.is_terminal:
                raise AssertionError(f"{name} ended {status} (wanted {states}):\n{self.backend.logs(name)}")
            time.sleep(0.2)
        raise AssertionError(f"{name} never reached {states}; last {status}")

    def runs(self, name: str) -> int:
        marker = self.ray.state_dir / "jobs" / self.ids[name] / "output" / "runs"
        return len(marker.read_text().split()) if marker.exists() else 0

    def leftovers(self) -> list[str]:
        """Ray's processes (they name the temp dir) and the jobs' sandboxed processes (their command lines
        name the job id; the host sees them whatever PID namespace they run in)."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            jobs = [p for job_id in self.ids.values() for p in pids_mentioning(job_id)]
            stray = pids_mentioning(self.temp_dir)
            if not jobs and not stray:
                break
            time.sleep(0.2)
        left = [f"job pid {p}" for p in jobs] + [f"ray pid {p}" for p in stray]
        return left + ([f"temp dir {self.temp_dir}"] if Path(self.temp_dir).exists() else [])


# --- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayPool]:
    pool = RayPool(tmp_path_factory.mktemp("ray-state"))
    yield pool
    if pool.current is not None:
        temp_dir = None if pool.current.closed else pool.current.head.temp_dir
        pool.current.close()
        if temp_dir:
            assert pids_mentioning(temp_dir) == []


@pytest.fixture(scope="module", params=["fake", "kuberay", pytest.param("ray-local", marks=pytest.mark.ray)])
def harness(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    root = tmp_path_factory.mktemp(f"contract-{request.param}")
    if request.param == "fake":
        yield FakeHarness(root)
    elif request.param == "kuberay":
        kube = KubeRayHarness(root)
        yield kube
        kube.shutdown()
    else:
        yield RayHarness(root, request.getfixturevalue("ray_pool"))


# --- the contract --------------------------------------------------------------------------------------
def test_a_job_that_prints_and_exits_0_succeeds_with_its_times_and_logs(harness: Harness) -> None:
    launch = harness.make("ok-1", "ok")
    harness.backend.create(launch)
    assert harness.backend.status(launch.name).state in {BackendState.PENDING, BackendState.NOT_FOUND}
    harness.backend.start(launch)
    status = harness.until(launch.name, TERMINAL)
    assert status.state is BackendState.SUCCEEDED, status
    assert status.start_ms is not None and status.end_ms is not None
    assert status.start_ms <= status.end_ms
    assert "hello from ok-1" in harness.backend.logs(launch.name)


def test_a_job_that_exits_1_fails(harness: Harness) -> None:
    launch = harness.make("fail-1", "fail")
    harness.backend.create(launch)
    harness.backend.start(launch)
    status = harness.until(launch.name, TERMINAL)
    assert status.state is BackendState.FAILED, status
    assert "about to fail" in harness.backend.logs(launch.name)


def test_a_long_job_can_be_stopped_and_stop_is_idempotent(harness: Harness) -> None:
    launch = harness.make("long-1", "long")
    harness.backend.create(launch)
    harness.backend.start(launch)
    running = harness.until(launch.name, {BackendState.RUNNING})
    assert running.start_ms is not None
    harness.backend.stop(launch.name)
    harness.backend.stop(launch.name)
    status = harness.until(launch.name, TERMINAL)
    assert status.state is BackendState.STOPPED, status
    harness.backend.stop(launch.name)
    assert harness.backend.status(launch.name).state is BackendState.STOPPED


def test_an_unknown_name_is_not_found(harness: Harness) -> None:
    status = harness.backend.status(launch_name("never-submitted"))
    assert status.state is BackendState.NOT_FOUND
    harness.backend.stop(launch_name("never-submitted"))


def test_start_is_idempotent(harness: Harness) -> None:
    launch = harness.make("twice-1", "ok")
    harness.backend.create(launch)
    harness.backend.create(launch)
    harness.backend.start(launch)
    harness.backend.start(launch)
    assert harness.until(launch.name, TERMINAL).state is BackendState.SUCCEEDED
    harness.backend.start(launch)
    assert harness.until(launch.name, TERMINAL).state is BackendState.SUCCEEDED
    assert harness.runs(launch.name) == 1


def test_capacity_is_positive(harness: Harness) -> None:
    capacity = harness.backend.capacity()
    assert capacity.milli_cpu > 0
    assert capacity.memory_mib > 0


# --- Ray-only checks (token, interpreter, restart) on the same module head ------------------------------
# Parametrized onto the harness so pytest runs them inside the ray-local group, before the close test.
ONLY_RAY = pytest.mark.parametrize(
    "harness", [pytest.param("ray-local", marks=pytest.mark.ray)], indirect=True
)


@ONLY_RAY
def test_ray_jobs_never_see_the_token_and_unauthenticated_calls_are_refused(
    harness: Harness, ray_pool: RayPool, tmp_path: Path
) -> None:
    ray = ray_pool.get()
    token = ray.head.token_path.read_text().strip()
    wd = tmp_path / "env"
    wd.mkdir()
    (wd / "main.py").write_text("import os\nfor k, v in sorted(os.environ.items()):\n    print(k, '=', v)\n")
    launch = _launch("env-1", wd, {})
    ray.start(launch)
    status = RayHarness(tmp_path, ray_pool).until(launch.name, TERMINAL)
    assert status.state is BackendState.SUCCEEDED
    logs = ray.logs(launch.name)
    assert "PATH =" in logs
    assert token not in logs
    assert "RAY_AUTH_TOKEN =" not in logs
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{ray.address}/api/jobs/", timeout=10)
    assert caught.value.code == 401


@ONLY_RAY
def test_ray_python_entrypoints_run_the_brokers_interpreter(
    harness: Harness, ray_pool: RayPool, tmp_path: Path
) -> None:
    ray = ray_pool.get()
    wd = tmp_path / "interp"
    wd.mkdir()
    (wd / "main.py").write_text("import sys, ray\nprint('EXE', sys.executable)\n")
    launch = _launch("interp-1", wd, {})
    ray.start(launch)
    assert RayHarness(tmp_path, ray_pool).until(launch.name, TERMINAL).state is BackendState.SUCCEEDED
    line = next(x for x in ray.logs(launch.name).splitlines() if x.startswith("EXE "))
    assert Path(line.split(" ", 1)[1]).parent == Path(sys.executable).parent


@ONLY_RAY
def test_a_restarted_broker_adopts_the_running_head_and_finds_jobs_by_name(
    harness: Harness, ray_pool: RayPool, tmp_path: Path
) -> None:
    ray = ray_pool.get()
    launch = _launch("adopt-1", _working_dir(tmp_path, "adopt-1", "long"), {})
    ray.start(launch)
    adopted = LocalRayBackend(ray_pool.state_dir, num_cpus=2)  # same state dir: a broker restart
    assert adopted.head == ray.head
    assert adopted.status(launch.name).state in {BackendState.PENDING, BackendState.RUNNING}
    adopted.stop(launch.name)
    assert RayHarness(tmp_path, ray_pool).until(launch.name, TERMINAL).state is BackendState.STOPPED


# --- last: close releases everything -------------------------------------------------------------------
def test_close_leaves_nothing_running(harness: Harness) -> None:
    launch = harness.make("long-close", "long")
    harness.backend.start(launch)
    harness.until(launch.name, {BackendState.RUNNING})
    harness.backend.close()
    assert harness.leftovers() == []
