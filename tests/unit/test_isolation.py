"""The isolation rules of the backends, without a cluster: a shared Ray cluster never gets SME code."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.compute import FakeBackend, JobLaunch, SandboxUnavailable, launch_name
from broker.compute.isolation import code_job_refusal, isolation_status, stages_locally
from broker.compute.ray_jobs import RayJobsBackend
from broker.compute.ray_local import gpu_device_nodes
from broker.compute.sandbox import probe
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


def test_admitted_gpus_are_bound_as_their_device_nodes_only(tmp_path: Path) -> None:
    """The sandbox gets the control nodes and the first N cards, never every GPU (no GPU here: a fake /dev)."""
    for name in ("nvidiactl", "nvidia-uvm", "nvidia0", "nvidia1", "nvidia10", "nvidia-modeset", "null"):
        (tmp_path / name).touch()
    assert gpu_device_nodes(0, tmp_path) == ()
    one = gpu_device_nodes(1, tmp_path)
    assert [Path(p).name for p in one] == ["nvidiactl", "nvidia-uvm", "nvidia0"]
    two = gpu_device_nodes(2, tmp_path)
    assert [Path(p).name for p in two][-2:] == ["nvidia0", "nvidia1"] and "nvidia10" not in str(two)


def test_sbx_doctor_says_which_isolation_the_settings_give(monkeypatch: pytest.MonkeyPatch) -> None:
    """`sbx doctor` reads only settings and this machine: a shared Ray cluster is refused with exit 1."""
    from typer.testing import CliRunner

    from broker.cli.main import app

    runner = CliRunner()
    monkeypatch.setenv("SBX_COMPUTE", "ray-local")
    monkeypatch.setenv("SBX_RAY_ADDRESS", "http://127.0.0.1:9")
    refused = runner.invoke(app, ["doctor", "--json"])
    assert refused.exit_code == 1 and '"sme_code": false' in refused.output and "KubeRay" in refused.output
    monkeypatch.delenv("SBX_RAY_ADDRESS")
    local = runner.invoke(app, ["doctor"])
    if probe().available:  # bubblewrap works on this machine (it does in CI): the sandbox is reported
        assert local.exit_code == 0 and "bubblewrap" in local.output and "cgroup" in local.output
    else:
        print(f"no sandbox on this machine: {probe().summary}")
        assert local.exit_code == 1
