"""The local Ray head killed mid-job (issue 14): noticed by the watch, restarted, the job settled once as
``lost`` and billed up to when it was last seen running — never for the outage — and new jobs run again."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.cli.jobs import zip_dir
from broker.compute.ray_local import LocalRayBackend
from broker.services.jobs import JobRequest
from broker.services.registry import Services
from common.clock import SystemClock
from common.resources import Resources
from tests.conftest import World

pytestmark = pytest.mark.ray
JOB = Resources(milli_cpu=500, gpus=0, memory_mib=256)


@pytest.fixture
def clock() -> SystemClock:  # type: ignore[override]
    return SystemClock()


@pytest.fixture
def ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRayBackend]:
    backend = LocalRayBackend(tmp_path_factory.mktemp("ray-head-loss"), num_cpus=2)
    try:
        yield backend
    finally:
        backend.close()


def _code(tmp: Path) -> str:
    (tmp / "code").mkdir()
    (tmp / "code" / "main.py").write_text(
        "import sys, time\nprint('working', flush=True)\ntime.sleep(float(sys.argv[1]))\n"
    )
    return zip_dir(tmp / "code")


def _until(services: Services, done: Callable[[], bool], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "timed out"
        services.jobs.watch_backend()
        services.jobs.reconcile_pass()
        services.jobs.admission_pass()
        time.sleep(0.25)


def _job(services: Services, world: World, job_id: str) -> dict[str, Any]:
    return services.jobs.get(world.operator, job_id=job_id)


def test_a_killed_head_is_restarted_and_its_job_billed_to_last_seen(
    services: Services, world: World, ray: LocalRayBackend, tmp_path: Path
) -> None:
    services.container.use_compute(ray)
    world.credit(50_000_000)
    code = _code(tmp_path)
    submit = services.jobs.submit
    job = submit(
        world.sme, JobRequest("python main.py 120", JOB, 300, working_dir_zip_b64=code), idempotency_key=None
    )
    _until(services, lambda: _job(services, world, job["id"])["state"] == "running")
    time.sleep(2)
    services.jobs.reconcile_pass()  # a reconcile sees it running: its last-seen time
    seen = services.container.db.read(lambda conn: _last_seen(conn, job["id"]))
    assert seen is not None
    old_pid = ray.head.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(old_pid, signal.SIGKILL)
    killed_at = time.time() * 1000
    time.sleep(8)  # an outage the job must not be billed for
    noticed = time.monotonic()
    assert services.jobs.watch_backend() is False  # the watch notices the dead head and restarts it
    assert time.monotonic() - noticed < 60
    assert services.container.metrics.backend_up._value.get() == 0
    assert ray.head.pid != old_pid and ray.head_alive()
    _until(services, lambda: _job(services, world, job["id"])["settled_ms"] is not None)
    lost = _job(services, world, job["id"])
    assert lost["state"] == "lost" and "last saw it running" in lost["message"]
    assert lost["ended_ms"] <= killed_at  # billed up to the last sighting, not the outage
    billed_ms = lost["ended_ms"] - lost["started_ms"]
    assert billed_ms <= seen - lost["started_ms"] + 1
    assert services.jobs.watch_backend() is True
    assert services.container.metrics.backend_up._value.get() == 1
    after = submit(
        world.sme, JobRequest("python main.py 0", JOB, 60, working_dir_zip_b64=code), idempotency_key=None
    )
    _until(services, lambda: _job(services, world, after["id"])["settled_ms"] is not None)
    assert _job(services, world, after["id"])["state"] == "succeeded"
    assert services.ledger.invariants() == []


def _last_seen(conn: Any, job_id: str) -> int | None:
    from broker.db import jobs as jobs_db

    return jobs_db.get_job(conn, job_id).last_seen_ms
