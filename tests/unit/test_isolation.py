"""The isolation rules of the backends, without a cluster: a shared Ray cluster never gets SME code."""

from __future__ import annotations

import pytest

from broker.compute import FakeBackend, JobLaunch, SandboxUnavailable, launch_name
from broker.compute.isolation import code_job_refusal, isolation_status, stages_locally
from broker.compute.ray_jobs import RayJobsBackend
from common.clock import FakeClock
from common.resources import Resources

ONE_CPU = Resources(milli_cpu=1000, gpus=0, memory_mib=1024)


def test_the_shared_cluster_backend_refuses_sme_launches_itself_but_not_the_harness() -> None:
    """The second guard: a launch that is not the broker's harness never reaches a shared cluster."""
    backend = RayJobsBackend("http://127.0.0.1:9", None)
    launch = JobLaunch(launch_name("job_x"), "job_x", "org", "python main.py", None, (), ONE_CPU, 60)
    with pytest.raises(SandboxUnavailable):
        backend.create(launch)
    with pytest.raises(SandboxUnavailable):
        backend.start(launch)
    backend.create(
        JobLaunch(launch_name("job_h"), "job_h", "org", "python -m x", None, (), ONE_CPU, 60, harness=True)
    )
    # Negative control: a caller that sandboxes entrypoints itself (the local backend) is let through.
    RayJobsBackend("http://127.0.0.1:9", None, sandboxed_entrypoints=True).create(launch)


def test_isolation_status_per_backend() -> None:
    shared = RayJobsBackend("http://127.0.0.1:9", None)
    assert isinstance(code_job_refusal(shared, has_requirements=False), SandboxUnavailable)
    assert not isolation_status(shared).sme_code and not stages_locally(shared)
    fake = FakeBackend(FakeClock())
    assert code_job_refusal(fake, has_requirements=True) is None
    assert isolation_status(fake).sme_code and not stages_locally(fake)
