"""Submit → RUNNING latency on a local Ray head: through the broker versus Ray's own client.

The broker path is the whole service: an SME's ``JobService.submit`` (quota check, pricing, the job row and
its audit entry), the admission loop woken by the submission (snapshot, fair decision, the hold written
durably, the backend create + start), and the job's status read through the service until it says running.
The direct path is ``JobSubmissionClient.submit_job`` then ``get_job_status``. Both run side by side on the
same cluster (alternating, after warm-up) and poll at the same interval; the ratio of the medians is the
broker's overhead.

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

from broker.compute import BackendStatus, JobLaunch, LocalRayBackend, launch_name
from broker.compute.ray_jobs import build_runtime_env, entrypoint_resources
from common.resources import Resources

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


def service_path(
    state_dir: Path, backend: LocalRayBackend
) -> tuple[Callable[[str], float], Callable[[], None]]:
    """A broker over SQLite with ``backend`` and running loops; returns (submit-to-running, close)."""
    from broker.bootstrap import initialise
    from broker.container import build_container
    from broker.loops import BackgroundLoops
    from broker.services.jobs import JobRequest
    from broker.services.registry import build_services
    from broker.settings import Settings

    settings = Settings(state_dir=state_dir / "broker", compute="ray-local")
    token = initialise(settings.state_dir, settings=settings)["token"]
    container = build_container(settings)
    container.use_compute(backend)
    services = build_services(container)
    op = services.orgs.authenticate(token)
    assert op is not None
    issuer_org = services.orgs.create(op, name="issuer", role="issuer", year_budget=10**12, sme_cap=10**12)
    issuer = services.orgs.authenticate(services.orgs.create_token(op, org_id=issuer_org["id"])["token"])
    sme_org = services.orgs.create(op, name="sme", role="sme")
    sme = services.orgs.authenticate(services.orgs.create_token(op, org_id=sme_org["id"])["token"])
    assert issuer is not None and sme is not None
    services.vouchers.create_key(issuer)
    now = int(time.time())
    voucher = services.vouchers.issue(
        issuer,
        sme_org=sme.org_id,
        credits=10**11,
        coverage_bps=10_000,
        resources=("cpu", "memory"),
        valid_from_s=None,
        valid_until_s=now + 3600,
        credit_expires_s=now + 86_400,
    )
    services.vouchers.redeem(sme, token=voucher["token"], idempotency_key=None)
    loops = BackgroundLoops(services, interval_ms=500)
    loops.start()

    def submit_to_running(_name: str) -> float:
        t0 = time.perf_counter()
        request = JobRequest(ENTRYPOINT, RESOURCES, 60)
        job = services.jobs.submit(sme, request, idempotency_key=None)
        _wait(lambda: services.jobs.get(sme, job_id=job["id"])["state"].upper())
        return (time.perf_counter() - t0) * 1000

    def close() -> None:
        loops.stop()
        container.close()

    return submit_to_running, close


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
        through_service, close_service = service_path(state_dir, backend)
        broker_ms: list[float] = []
        direct_ms: list[float] = []
        for i in range(args.warmup + args.jobs):
            b = through_service(f"bench-b-{i}")
            d = direct(client, make_launch(f"bench-d-{i}"), runtime_env)
            if i >= args.warmup:
                broker_ms.append(b)
                direct_ms.append(d)
            print(f"job {i}: broker {b:.0f} ms, direct {d:.0f} ms", flush=True)
        close_service()
    finally:
        backend.close()
    b_med, d_med = statistics.median(broker_ms), statistics.median(direct_ms)
    print(
        f"BENCH submit broker_ms={b_med:.1f} direct_ms={d_med:.1f} ratio={b_med / d_med:.3f} jobs={args.jobs}"
    )


if __name__ == "__main__":
    main()
