"""Submit → RUNNING latency on a local Ray head: through the broker's backend versus Ray's own client.

Both paths run side by side on the same cluster (alternating, after warm-up) and poll status at the same
interval; the ratio of the medians is the broker layer's overhead. ``through_broker`` takes the submit and
status callables, so the lead can swap in the full service (HTTP API) later.

Usage: ``.venv/bin/python bench/submit.py [--jobs 20] [--state-dir DIR]``
Last line: ``BENCH submit broker_ms=… direct_ms=… ratio=… jobs=…``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker.compute import BackendState, BackendStatus, JobLaunch, LocalRayBackend, launch_name
from broker.compute.ray_jobs import build_runtime_env, entrypoint_resources
from quotas.resources import Resources

POLL_S = 0.02
TIMEOUT_S = 120.0
RESOURCES = Resources(milli_cpu=100, memory_mib=32)
ENTRYPOINT = "sleep 1"
REACHED = {"RUNNING", "SUCCEEDED", "FAILED", "STOPPED"}


def make_launch(job_id: str) -> JobLaunch:
    """A tiny launch: no working dir, no requirements, a shell entrypoint."""
    return JobLaunch(
        name=launch_name(job_id),
        job_id=job_id,
        org_id="bench",
        entrypoint=ENTRYPOINT,
        working_dir=None,
        requirements=(),
        resources=RESOURCES,
        max_runtime_s=60,
    )


def _wait(read_state: Callable[[], str]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        state = read_state()
        if state in REACHED:
            if state == "FAILED":
                raise RuntimeError("benchmark job failed")
            return
        time.sleep(POLL_S)
    raise TimeoutError("job never reached RUNNING")


def through_broker(
    submit: Callable[[JobLaunch], None], status: Callable[[str], BackendStatus], launch: JobLaunch
) -> float:
    """Milliseconds from ``submit(launch)`` until ``status(name)`` says RUNNING (or later)."""
    t0 = time.perf_counter()
    submit(launch)
    _wait(lambda: str(status(launch.name).state))
    return (time.perf_counter() - t0) * 1000


def direct(client: Any, launch: JobLaunch, runtime_env: dict[str, Any]) -> float:
    """Milliseconds from ``JobSubmissionClient.submit_job`` until Ray says RUNNING (or later)."""
    t0 = time.perf_counter()
    client.submit_job(
        entrypoint=launch.entrypoint,
        submission_id=launch.name,
        runtime_env=runtime_env,
        **entrypoint_resources(launch.resources),
    )
    _wait(lambda: str(client.get_job_status(launch.name)))
    return (time.perf_counter() - t0) * 1000


def broker_submit(backend: LocalRayBackend) -> Callable[[JobLaunch], None]:
    """What the broker does on admission: create, then start."""

    def submit(launch: JobLaunch) -> None:
        backend.create(launch)
        backend.start(launch)

    return submit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--state-dir", type=Path, default=None)
    args = parser.parse_args()
    from ray.job_submission import JobSubmissionClient

    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="sbx-bench-submit-"))
    backend = LocalRayBackend(state_dir, num_cpus=2)
    try:
        token = backend.head.token_path.read_text().strip()
        client = JobSubmissionClient(backend.address, headers={"Authorization": f"Bearer {token}"})
        runtime_env = build_runtime_env(make_launch("x"), Path(sys.executable).parent)
        submit, status = broker_submit(backend), backend.status
        broker_ms: list[float] = []
        direct_ms: list[float] = []
        for i in range(args.warmup + args.jobs):
            b = through_broker(submit, status, make_launch(f"bench-b-{i}"))
            d = direct(client, make_launch(f"bench-d-{i}"), runtime_env)
            if i >= args.warmup:
                broker_ms.append(b)
                direct_ms.append(d)
            print(f"job {i}: broker {b:.0f} ms, direct {d:.0f} ms", flush=True)
        assert all(
            status(make_launch(f"bench-b-{i}").name).state is not BackendState.NOT_FOUND for i in range(3)
        )
    finally:
        backend.close()
    b_med, d_med = statistics.median(broker_ms), statistics.median(direct_ms)
    print(
        f"BENCH submit broker_ms={b_med:.1f} direct_ms={d_med:.1f} ratio={b_med / d_med:.3f} jobs={args.jobs}"
    )


if __name__ == "__main__":
    main()
