"""Jobs end to end on a real local Ray: run, meter, settle; one-at-a-time under a 1-CPU quota; max-runtime
kill; non-zero exit; and a broker killed with SIGKILL mid-job, restarted, reconciling and settling once."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.cli.jobs import zip_dir
from broker.compute.ray_local import LocalRayBackend
from broker.server import free_port
from broker.services.jobs import JobRequest
from broker.services.registry import Services
from common.clock import SystemClock
from common.resources import Resources
from tests.conftest import World

pytestmark = pytest.mark.ray
ONE_CPU = Resources(milli_cpu=1000, gpus=0, memory_mib=256)

TRAIN = """
import random, sys, time
random.seed(0)
xs = [[random.gauss(0, 1) for _ in range(4)] for _ in range(400)]
ys = [1 if x[0] + 0.5 * x[1] > 0 else 0 for x in xs]
w = [0.0] * 4
for epoch in range(30):
    for x, y in zip(xs, ys):
        p = 1 / (1 + 2.718281828 ** (-sum(a * b for a, b in zip(w, x))))
        w = [wi + 0.1 * (y - p) * xi for wi, xi in zip(w, x)]
acc = sum((sum(a * b for a, b in zip(w, x)) > 0) == bool(y) for x, y in zip(xs, ys)) / len(xs)
print(f"trained: accuracy={acc:.2f}")
"""


@pytest.fixture
def clock() -> SystemClock:  # type: ignore[override]
    return SystemClock()


@pytest.fixture
def code(tmp_path: Path) -> str:
    work = tmp_path / "code"
    work.mkdir()
    (work / "train.py").write_text(TRAIN)
    (work / "sleep.py").write_text(
        "import sys, time\nprint('sleeping', flush=True)\ntime.sleep(float(sys.argv[1]))\n"
    )
    (work / "fail.py").write_text("print('about to fail', flush=True)\nraise SystemExit(3)\n")
    return zip_dir(work)


@pytest.fixture
def on_ray(services: Services, ray_backend: LocalRayBackend) -> Services:
    services.container.use_compute(ray_backend)
    return services


def _run_until(services: Services, done: Callable[[], bool], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "timed out waiting for the job"
        services.jobs.reconcile_pass()
        services.jobs.admission_pass()
        time.sleep(0.2)


def _job(world: World, code: str, entrypoint: str, runtime_s: int = 120, priority: int = 0) -> dict[str, Any]:
    request = JobRequest(entrypoint, ONE_CPU, runtime_s, priority, working_dir_zip_b64=code)
    return world.services.jobs.submit(world.sme, request, idempotency_key=None)


def _get(world: World, job: dict[str, Any]) -> dict[str, Any]:
    return world.services.jobs.get(world.operator, job_id=job["id"])


def _settled(world: World, job: dict[str, Any]) -> Callable[[], bool]:
    return lambda: _get(world, job)["settled_ms"] is not None


def test_real_job_runs_is_metered_and_settled(on_ray: Services, world: World, code: str) -> None:
    world.credit(10_000_000)
    job = _job(world, code, "python train.py")
    _run_until(on_ray, _settled(world, job))
    done = _get(world, job)
    assert done["state"] == "succeeded", done
    assert done["started_ms"] < done["ended_ms"]
    assert 0 < done["cost"] <= done["max_cost"] and done["voucher_paid"] == done["cost"]
    assert "trained: accuracy=" in on_ray.jobs.logs(world.sme, job_id=job["id"])
    assert on_ray.ledger.invariants() == []


def test_one_cpu_quota_runs_three_jobs_one_at_a_time_in_order(
    on_ray: Services, world: World, code: str
) -> None:
    world.credit(10_000_000)
    on_ray.jobs.set_quota(
        world.operator,
        org_id=world.sme.org_id,
        values={
            "max_milli_cpu": 1000,
            "max_gpus": 0,
            "max_memory_mib": 4096,
            "max_running_jobs": 4,
            "max_queued_jobs": 10,
        },
    )
    jobs = [_job(world, code, "python sleep.py 1") for _ in range(3)]
    _run_until(on_ray, lambda: all(_get(world, j)["settled_ms"] for j in jobs), timeout_s=120)
    done = [_get(world, j) for j in jobs]
    assert [d["state"] for d in done] == ["succeeded"] * 3
    admitted = sorted(done, key=lambda d: d["admitted_ms"])
    assert [d["id"] for d in admitted] == [j["id"] for j in jobs]  # FIFO
    for earlier, later in itertools.pairwise(admitted):
        assert earlier["ended_ms"] <= later["started_ms"]  # never two at once


def test_max_runtime_kill(on_ray: Services, world: World, code: str) -> None:
    world.credit(10_000_000)
    job = _job(world, code, "python sleep.py 120", runtime_s=3)
    _run_until(on_ray, _settled(world, job))
    done = _get(world, job)
    assert done["state"] == "timed_out"
    assert done["cost"] <= done["max_cost"]


def test_nonzero_exit_is_settled_for_what_it_used(on_ray: Services, world: World, code: str) -> None:
    world.credit(10_000_000)
    job = _job(world, code, "python fail.py")
    _run_until(on_ray, _settled(world, job))
    done = _get(world, job)
    assert done["state"] == "failed" and 0 < done["cost"] < done["max_cost"]
    assert on_ray.ledger.invariants() == []


def _serve(state: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker.cli.main", "serve", "--port", str(port)],
        env={**os.environ, **env, "SBX_STATE_DIR": str(state), "SBX_LOOP_INTERVAL_MS": "200"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the broker did not start")


def test_broker_killed_mid_job_is_reconciled_and_settled_once(tmp_path: Path, code: str) -> None:
    """A real `sbx serve` (its own local Ray) is SIGKILLed while a job runs, then restarted."""
    from tests.helpers import bootstrap_world

    state = tmp_path / "state"
    port = free_port()
    env = {"SBX_COMPUTE": "ray-local", "SBX_RAY_NUM_CPUS": "2"}
    proc, operator_token = _serve_initialised(state, port, env)
    url = f"http://127.0.0.1:{port}"
    tokens = bootstrap_world(url, operator_token)
    sme = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens['sme']}"}, timeout=60)
    op = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens['operator']}"}, timeout=60)
    try:
        body = {
            "entrypoint": "python sleep.py 6",
            "milli_cpu": 1000,
            "memory_mib": 256,
            "max_runtime_s": 120,
            "working_dir_zip_b64": code,
        }
        job = sme.post("/api/v1/jobs", json=body).json()
        deadline = time.monotonic() + 90
        while sme.get(f"/api/v1/jobs/{job['id']}").json()["state"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        head_temp_dir = json.loads((state / "ray" / "ray-local.json").read_text())["temp_dir"]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc = _serve(state, port, env)
        deadline = time.monotonic() + 90
        while (done := sme.get(f"/api/v1/jobs/{job['id']}").json())["settled_ms"] is None:
            assert time.monotonic() < deadline
            time.sleep(0.3)
        assert done["state"] == "succeeded" and done["cost"] > 0
        entries = op.get("/api/v1/ledger/entries", params={"limit": 1000}).json()
        settles = [e for e in entries if e["kind"] == "settle" and e["hold_id"] == done["hold_id"]]
        assert settles and sum(e["amount"] for e in settles) == 0  # one balanced settlement
        assert len({e["txn_id"] for e in settles}) == 1  # exactly once
    finally:
        sme.close()
        op.close()
        proc.terminate()
        proc.wait(timeout=60)
    assert head_temp_dir, "the broker never recorded its local Ray head"
    leftovers = subprocess.run(["pgrep", "-f", head_temp_dir], capture_output=True, text=True).stdout.split()
    assert leftovers == [], "Ray was left running after the broker stopped"


def _serve_initialised(state: Path, port: int, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """``sbx init`` (its --json output carries the operator token, shown once), then ``sbx serve``."""
    init = subprocess.run(
        [sys.executable, "-m", "broker.cli.main", "init", "--state-dir", str(state), "--json"],
        check=True,
        capture_output=True,
        env={**os.environ, **env},
    )
    return _serve(state, port, env), str(json.loads(init.stdout)["token"])
