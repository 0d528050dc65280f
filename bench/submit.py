"""Submit → the first line the job's own code prints, on a local Ray head: the broker with its sandbox,
the broker without it, and Ray's own client.

Ray reports RUNNING before the sandbox starts, so RUNNING cannot show the sandbox's cost: every path here
waits until the job's log holds the line its code prints first. The broker path is the whole service: an
SME's ``JobService.submit`` (quota check, pricing, the job row and its audit entry), the admission loop woken
by the submission (snapshot, fair decision, the hold written durably, the backend create + start: the
sandbox spec, the launcher, cgroup, bubblewrap), then the job's log read through the service. The same
service runs with the sandbox switched off (the test-only setting, on the same head) for the sandbox's own
share, and the direct path is ``JobSubmissionClient.submit_job`` then ``get_job_logs``. The three alternate
after warm-up and poll at the same interval; ratios are of medians.

Usage: ``.venv/bin/python bench/submit.py [--jobs 20] [--state-dir DIR]``
Last line: ``BENCH submit broker_ms=… direct_ms=… ratio=… jobs=… sandbox=1 sandbox_overhead=…
nosandbox_ms=…``
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

from broker.compute import JobLaunch, LocalRayBackend, launch_name
from broker.compute.ray_jobs import build_runtime_env, entrypoint_resources
from broker.compute.ray_local import SandboxDefaults
from common.resources import Resources

POLL_S = 0.02
TIMEOUT_S = 120.0
RESOURCES = Resources(
    milli_cpu=1000, memory_mib=512
)  # a whole CPU: the cgroup quota never throttles the start
FIRST_LINE = "sbx-bench-first-line"
ENTRYPOINT = f"python -c \"print('{FIRST_LINE}', flush=True)\""


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


def _wait_for_line(read_logs: Callable[[], str]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if FIRST_LINE in read_logs():
            return
        time.sleep(POLL_S)
    raise TimeoutError("the job never printed its first line")


def _wait_until(done: Callable[[], bool]) -> None:
    """Wait (untimed) until the measured job has ended, so the next measurement starts on a free cluster."""
    deadline = time.monotonic() + TIMEOUT_S
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError("the job never ended")
        time.sleep(POLL_S)


def direct(client: Any, launch: JobLaunch, runtime_env: dict[str, Any]) -> float:
    """Milliseconds from ``JobSubmissionClient.submit_job`` until the job's log has its first line."""
    t0 = time.perf_counter()
    client.submit_job(
        entrypoint=launch.entrypoint,
        submission_id=launch.name,
        runtime_env=runtime_env,
        **entrypoint_resources(launch.resources),
    )
    _wait_for_line(lambda: str(client.get_job_logs(launch.name)))
    elapsed = (time.perf_counter() - t0) * 1000
    _wait_until(lambda: client.get_job_status(launch.name).is_terminal())  # untimed: a free cluster next
    return elapsed


def service_path(
    state_dir: Path, backend: LocalRayBackend
) -> tuple[Callable[[LocalRayBackend], float], Callable[[], None]]:
    """A broker over SQLite with running loops; returns (submit-to-first-line on a backend, close)."""
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

    def submit_to_first_line(on: LocalRayBackend) -> float:
        container.use_compute(on)
        t0 = time.perf_counter()
        request = JobRequest(ENTRYPOINT, RESOURCES, 60)
        job = services.jobs.submit(sme, request, idempotency_key=None)
        _wait_for_line(lambda: services.jobs.logs(sme, job_id=job["id"]))
        elapsed = (time.perf_counter() - t0) * 1000
        _wait_until(lambda: services.jobs.get(sme, job_id=job["id"])["settled_ms"] is not None)  # untimed
        return elapsed

    def close() -> None:
        loops.stop()
        container.close()

    return submit_to_first_line, close


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--state-dir", type=Path, default=None)
    args = parser.parse_args()
    from ray.job_submission import JobSubmissionClient

    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="sbx-bench-submit-"))
    backend = LocalRayBackend(state_dir, num_cpus=2)
    unsandboxed = LocalRayBackend(state_dir, num_cpus=2, sandbox=SandboxDefaults(unsafe_no_sandbox=True))
    times: dict[str, list[float]] = {"broker": [], "nosandbox": [], "direct": []}
    try:
        token = backend.head.token_path.read_text().strip()
        client = JobSubmissionClient(backend.address, headers={"Authorization": f"Bearer {token}"})
        runtime_env = build_runtime_env(make_launch("x"), Path(sys.executable).parent)
        through_service, close_service = service_path(state_dir, backend)
        for i in range(args.warmup + args.jobs):
            b = through_service(backend)
            n = through_service(unsandboxed)
            d = direct(client, make_launch(f"bench-d-{i}"), runtime_env)
            if i >= args.warmup:
                times["broker"].append(b)
                times["nosandbox"].append(n)
                times["direct"].append(d)
            print(f"job {i}: broker {b:.0f} ms, without sandbox {n:.0f} ms, direct {d:.0f} ms", flush=True)
        close_service()
    finally:
        backend.close()
    b_med, n_med, d_med = (statistics.median(times[k]) for k in ("broker", "nosandbox", "direct"))
    print(
        f"BENCH submit broker_ms={b_med:.1f} direct_ms={d_med:.1f} ratio={b_med / d_med:.3f} jobs={args.jobs}"
        f" sandbox=1 sandbox_overhead={b_med / n_med:.3f} nosandbox_ms={n_med:.1f}"
    )


if __name__ == "__main__":
    main()
