"""The scriptable fake backend: clock-driven lifecycle, injected failures, idempotency, thread safety."""

from __future__ import annotations

import threading

import pytest

from broker.compute import BackendError, BackendState, FakeBackend, FakeScript, JobLaunch, launch_name
from common.clock import FakeClock
from common.resources import Resources


def _launch(job_id: str) -> JobLaunch:
    return JobLaunch(
        name=launch_name(job_id),
        job_id=job_id,
        org_id="org",
        entrypoint="python main.py",
        working_dir=None,
        requirements=(),
        resources=Resources(milli_cpu=1000),
        max_runtime_s=60,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start_ms=1_000_000)


@pytest.fixture
def fake(clock: FakeClock) -> FakeBackend:
    return FakeBackend(clock)


def test_a_scripted_job_goes_pending_running_succeeded_on_the_clock(
    fake: FakeBackend, clock: FakeClock
) -> None:
    job = _launch("a")
    fake.script(job.name, FakeScript(pending_ms=100, run_ms=1_000, output="done\n"))
    fake.create(job)
    assert fake.status(job.name).state is BackendState.PENDING
    fake.start(job)
    assert fake.status(job.name).state is BackendState.PENDING
    assert fake.logs(job.name) == ""
    clock.advance(100)
    assert fake.status(job.name).state is BackendState.RUNNING
    assert fake.status(job.name).start_ms == 1_000_100
    clock.advance(1_000)
    status = fake.status(job.name)
    assert (status.state, status.start_ms, status.end_ms) == (BackendState.SUCCEEDED, 1_000_100, 1_001_100)
    assert fake.logs(job.name) == "done\n"
    assert fake.logs(job.name, max_bytes=2) == "e\n"


def test_a_nonzero_exit_code_fails(fake: FakeBackend, clock: FakeClock) -> None:
    job = _launch("b")
    fake.script(job.name, FakeScript(run_ms=10, exit_code=3))
    fake.start(job)
    clock.advance(10)
    status = fake.status(job.name)
    assert status.state is BackendState.FAILED
    assert "3" in status.message


def test_stop_is_idempotent_and_keeps_the_stop_time(fake: FakeBackend, clock: FakeClock) -> None:
    job = _launch("c")
    fake.script(job.name, FakeScript(run_ms=None))
    fake.start(job)
    clock.advance(500)
    fake.stop(job.name)
    clock.advance(500)
    fake.stop(job.name)
    status = fake.status(job.name)
    assert (status.state, status.start_ms, status.end_ms) == (BackendState.STOPPED, 1_000_000, 1_000_500)


def test_stop_after_the_end_changes_nothing(fake: FakeBackend, clock: FakeClock) -> None:
    job = _launch("d")
    fake.start(job)
    clock.advance(5_000)
    fake.stop(job.name)
    assert fake.status(job.name).state is BackendState.SUCCEEDED


def test_a_stopped_launch_never_starts(fake: FakeBackend) -> None:
    job = _launch("e")
    fake.create(job)
    fake.stop(job.name)
    fake.start(job)
    assert fake.status(job.name).state is BackendState.STOPPED
    assert fake.start_count(job.name) == 0


def test_unknown_names_are_not_found(fake: FakeBackend) -> None:
    assert fake.status("sbx-nope").state is BackendState.NOT_FOUND
    assert fake.logs("sbx-nope") == ""
    fake.stop("sbx-nope")


def test_injected_submit_failures_then_recovery(fake: FakeBackend) -> None:
    job = _launch("f")
    fake.fail_next_starts(2, "cluster down")
    for _ in range(2):
        with pytest.raises(BackendError, match="cluster down"):
            fake.start(job)
    assert fake.start_count(job.name) == 0
    fake.start(job)
    assert fake.start_count(job.name) == 1


def test_capacity_is_settable(fake: FakeBackend) -> None:
    fake.set_capacity(Resources(milli_cpu=1, gpus=2, memory_mib=3))
    assert fake.capacity() == Resources(milli_cpu=1, gpus=2, memory_mib=3)


def test_concurrent_starts_run_one_job(fake: FakeBackend) -> None:
    job = _launch("g")
    barrier = threading.Barrier(8)

    def go() -> None:
        barrier.wait()
        fake.start(job)

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fake.start_count(job.name) == 1


def test_close_stops_active_jobs_and_refuses_calls(fake: FakeBackend, clock: FakeClock) -> None:
    job = _launch("h")
    fake.script(job.name, FakeScript(run_ms=None))
    fake.start(job)
    assert fake.active() == [job.name]
    fake.close()
    assert fake.active() == []
    with pytest.raises(BackendError):
        fake.status(job.name)
