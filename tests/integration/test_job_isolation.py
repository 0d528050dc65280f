"""Where SME code may run, and what a submission leaves on disk (issues 11 and 13), on SQLite and PostgreSQL.

* A shared Ray cluster (``SBX_RAY_ADDRESS``) refuses SME code at submission (``sandbox_unavailable``) and the
  backend refuses it again if a code path forgot to ask; the broker's harness still runs there.
* Every refusal happens before the archive is unpacked, or removes what was unpacked: a refused submission
  leaves no job row and no files; the per-SME disk quota counts kept code; retention removes code dirs.
"""

from __future__ import annotations

import base64
import io
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest

from broker.compute import BackendState, FakeBackend, SandboxUnavailable, launch_name
from broker.compute.fake import FakeScript
from broker.compute.jobfiles import code_key
from broker.compute.ray_jobs import RayJobsBackend
from broker.db.jobs import DEFAULT_RATE_CARD
from broker.services.jobs import JobRequest
from broker.services.registry import Services
from common.errors import Conflict, DomainError
from common.resources import Resources
from quotas.pricing import price
from quotas.quota import QuotaExceeded
from tests.conftest import BACKENDS, World

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
ONE_CPU = Resources(milli_cpu=1000, gpus=0, memory_mib=1024)


def _archive(files: dict[str, bytes]) -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return base64.b64encode(buffer.getvalue()).decode()


def _submit(world: World, code: str | None = None, **extra: Any) -> dict[str, Any]:
    request = JobRequest("python main.py", ONE_CPU, 60, working_dir_zip_b64=code, **extra)
    return world.services.jobs.submit(world.sme, request, idempotency_key=None)


def _cpu_quota(world: World, milli_cpu: int) -> None:
    """Give SME A a quota of ``milli_cpu`` (everything else roomy)."""
    values = {"max_milli_cpu": milli_cpu, "max_gpus": 0, "max_memory_mib": 4096}
    world.services.jobs.set_quota(
        world.operator,
        org_id=world.sme.org_id,
        values={**values, "max_running_jobs": 4, "max_queued_jobs": 10},
    )


def _jobs_dir(services: Services) -> Path:
    return services.container.settings.state_dir / "jobs"


def _left_on_disk(services: Services) -> list[str]:
    root = _jobs_dir(services)
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


@pytest.fixture
def fake(services: Services, clock: Any) -> FakeBackend:
    backend = FakeBackend(clock, capacity=Resources(milli_cpu=4000, gpus=0, memory_mib=16_384))
    services.container.use_compute(backend)
    return backend


@pytest.fixture
def shared_ray(services: Services) -> RayJobsBackend:
    """A shared Ray cluster's backend; nothing listens at the address, and nothing here needs it to."""
    backend = RayJobsBackend("http://127.0.0.1:9", None, capacity_override=Resources(8000, 0, 32_768))
    services.container.use_compute(backend)
    return backend


def test_a_shared_ray_cluster_refuses_sme_code_and_stores_nothing(
    world: World, shared_ray: RayJobsBackend
) -> None:
    world.credit(1_000_000)
    with pytest.raises(SandboxUnavailable, match="KubeRay") as exc:
        _submit(world, _archive({"main.py": b"print('hi')\n"}))
    assert exc.value.code == "sandbox_unavailable"
    assert world.services.jobs.list_jobs(world.sme) == []
    assert _left_on_disk(world.services) == []
    status = world.services.jobs.isolation()
    assert status.backend == "ray" and not status.sme_code
    assert world.services.container.metrics.sandbox_available._value.get() == 0


def test_a_refused_submission_leaves_no_files(world: World, fake: FakeBackend) -> None:
    world.credit(1_000_000)
    _cpu_quota(world, 500)
    with pytest.raises(QuotaExceeded):
        _submit(world, _archive({"main.py": b"x" * 1000}))
    assert _left_on_disk(world.services) == []
    # Negative control: an admissible submission does unpack its code.
    _cpu_quota(world, 4000)
    job = _submit(world, _archive({"main.py": b"x" * 1000}))
    assert _left_on_disk(world.services) == [job["id"]]
    assert (_jobs_dir(world.services) / job["id"] / "work" / "main.py").stat().st_size == 1000


def test_a_bad_archive_is_refused_before_anything_is_written(world: World, fake: FakeBackend) -> None:
    world.credit(1_000_000)
    for bad in (
        _archive({"../../escape.py": b"x"}),
        "not base64",
        _archive({f"f{i}": b"" for i in range(10_001)}),
    ):
        with pytest.raises(DomainError) as exc:
            _submit(world, bad)
        assert exc.value.code == "invalid_archive"
    assert _left_on_disk(world.services) == [] and world.services.jobs.list_jobs(world.sme) == []


def test_the_disk_quota_counts_kept_code_and_retention_frees_it(world: World, fake: FakeBackend) -> None:
    container = world.services.container
    container.settings = container.settings.model_copy(
        update={"job_disk_quota_mib": 1, "job_retention_s": 60}
    )
    world.credit(10_000_000)
    code = _archive({"blob.bin": b"\1" * 600_000})
    first = _submit(world, code)
    with pytest.raises(Conflict) as exc:
        _submit(world, code)  # 2 × 600 kB > 1 MiB
    assert exc.value.code == "disk_quota"
    assert _left_on_disk(world.services) == [first["id"]]
    fake.script(launch_name(first["id"]), FakeScript(run_ms=1_000))
    for _ in range(4):
        world.clock.advance(1_000)
        world.services.jobs.reconcile_pass()
        world.services.jobs.admission_pass()
    assert world.services.jobs.get(world.sme, job_id=first["id"])["state"] == "succeeded"
    assert world.services.jobs.expire_files_pass() == 0  # within its retention
    world.clock.advance(61_000)
    assert world.services.jobs.expire_files_pass() == 1
    assert not (_jobs_dir(world.services) / first["id"] / "work").exists()
    assert (_jobs_dir(world.services) / first["id"] / "output").exists()
    second = _submit(world, code)  # the quota is free again
    assert second["state"] == "queued"
    assert fake.status(launch_name(first["id"])).state is BackendState.SUCCEEDED


def test_output_is_downloadable_once_the_job_ended(world: World, fake: FakeBackend) -> None:
    world.credit(1_000_000)
    job = _submit(world, _archive({"main.py": b"x"}))
    with pytest.raises(Conflict) as exc:
        world.services.jobs.output(world.sme, job_id=job["id"])
    assert exc.value.code == "not_finished"
    (world.services.container.job_files.output_dir(job["id"]) / "model.txt").write_text("weights")
    fake.script(launch_name(job["id"]), FakeScript(run_ms=1_000, output="trained\n"))
    for _ in range(4):
        world.clock.advance(1_000)
        world.services.jobs.reconcile_pass()
        world.services.jobs.admission_pass()
    with zipfile.ZipFile(world.services.jobs.output(world.sme, job_id=job["id"])) as zf:
        assert zf.read(f"{job['id']}/model.txt") == b"weights"
    # The log is kept beside the output: it outlives the backend's copy.
    assert (_jobs_dir(world.services) / job["id"] / "log.txt").read_text() == "trained\n"
    world.services.container.use_compute(FakeBackend(world.clock))  # a restarted backend knows nothing
    assert world.services.jobs.logs(world.sme, job_id=job["id"]) == "trained\n"
    with pytest.raises(DomainError) as missing:
        world.services.jobs.output(world.sme_b, job_id=job["id"])  # another SME: the same 404 as missing
    assert missing.value.code == "not_found"


def _tick(world: World, ms: int = 0) -> None:
    world.clock.advance(ms)
    world.services.jobs.reconcile_pass()
    world.services.jobs.admission_pass()


def test_a_lost_job_is_billed_up_to_when_it_was_last_seen_running(world: World, fake: FakeBackend) -> None:
    world.credit(10_000_000)
    job = _submit(world)
    name = launch_name(job["id"])
    fake.script(name, FakeScript(run_ms=None))  # runs until stopped
    _tick(world)
    _tick(world, 1_000)
    running = world.services.jobs.get(world.sme, job_id=job["id"])
    assert running["state"] == "running"
    _tick(world, 10_000)  # the last reconcile that sees it running
    last_seen = world.clock.now_ms()
    fake.lose(name)
    fake.set_down()
    for _ in range(5):
        _tick(world, 60_000)  # a 5-minute outage: nothing is billed or settled meanwhile
    assert world.services.jobs.get(world.sme, job_id=job["id"])["state"] == "running"
    fake.set_down(False)
    _tick(world, 1_000)
    lost = world.services.jobs.get(world.sme, job_id=job["id"])
    assert lost["state"] == "lost" and "last saw it running" in lost["message"]
    assert lost["ended_ms"] == last_seen  # billed to the last sighting, not through the outage
    assert lost["cost"] == price(ONE_CPU, last_seen - lost["started_ms"], DEFAULT_RATE_CARD)
    assert world.services.ledger.invariants() == []


def test_a_stop_while_the_backend_is_down_is_recorded_and_applied_later(
    world: World, fake: FakeBackend
) -> None:
    world.credit(10_000_000)
    job = _submit(world)
    fake.script(launch_name(job["id"]), FakeScript(run_ms=None))
    _tick(world)
    _tick(world, 1_000)
    fake.set_down()
    outcome = world.services.jobs.request_stop(world.sme, job_id=job["id"])
    assert outcome.pending and outcome.job["stop_requested"] is True
    _tick(world, 5_000)
    assert world.services.jobs.get(world.sme, job_id=job["id"])["state"] == "running"  # still down
    fake.set_down(False)
    _tick(world, 1_000)  # the reconcile pass applies the recorded stop
    _tick(world, 1_000)
    assert world.services.jobs.get(world.sme, job_id=job["id"])["state"] == "stopped"


def test_a_remote_backend_gets_the_code_from_whichever_replica_admits_the_job(
    world: World, fake: FakeBackend
) -> None:
    """Code runs elsewhere (KubeRay): a copy goes to the shared store, and a replica that did not take the
    submission unpacks it again before the launch; a refused submission leaves no copy behind."""
    world.credit(1_000_000)
    storage = world.services.container.storage
    job = _submit(world, _archive({"main.py": b"print('hi')\n"}))
    assert storage.exists(code_key(job["id"]))
    shutil.rmtree(_jobs_dir(world.services) / job["id"])  # this replica never saw the submission
    world.services.jobs.admission_pass()
    assert (_jobs_dir(world.services) / job["id"] / "work" / "main.py").read_text() == "print('hi')\n"
    assert world.services.jobs.get(world.sme, job_id=job["id"])["state"] in ("admitted", "running")
    _cpu_quota(world, 500)
    with pytest.raises(QuotaExceeded):
        _submit(world, _archive({"main.py": b"x"}))
    assert [k for k in storage.list("jobs/") if k != code_key(job["id"])] == []


def test_a_submission_over_quota_is_kept_as_a_rejected_job_through_submit(
    world: World, fake: FakeBackend
) -> None:
    """The submit path itself keeps the refusal (issue 17.1): its id answers, with no files and no hold."""
    world.credit(1_000_000)
    _cpu_quota(world, 500)
    with pytest.raises(QuotaExceeded) as exc:
        _submit(world, _archive({"main.py": b"x"}))
    job_id = exc.value.detail.split("kept as rejected job ")[1].split(":")[0]
    kept = world.services.jobs.get(world.sme, job_id=job_id)
    assert kept["state"] == "rejected" and kept["hold_id"] is None
    assert _left_on_disk(world.services) == []
