"""KubeRay code archives end to end: a job with code, admitted on KubeRay (the in-process Kubernetes API, RayJobs
validated against KubeRay's CRD), gets a capability URL in its RayJob; the broker serves the zip there over
real HTTP, counts every fetch, and refuses (404) after the limit, after the deadline, after the job ends,
and for a wrong token. The RayJob carries no credential. SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import io
import json
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from broker.compute import JobLaunch, KubeRayBackend, launch_name
from broker.compute.kube_fake import FakeKubeApiServer, FakeRayOperator, crd_validator
from broker.compute.kuberay import PodHardening, parse_secret_env
from broker.db import archives as archives_db
from broker.services.archives import ROUTE, zip_working_dir
from broker.services.jobs import JobRequest
from broker.services.registry import Services
from broker.settings import Settings
from common.resources import Resources
from tests.api.conftest import Live
from tests.conftest import BACKENDS, World
from tests.pss_restricted import restricted_violations

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)

REPO_ROOT = Path(__file__).resolve().parents[2]
RAYJOB_CRD = REPO_ROOT.parent / "shared/kuberay/ray.io_rayjobs.yaml"
NAMESPACE = "sbx-jobs"
PUBLIC_URL = "http://sbx-sandbox-broker.sandbox-broker.svc.cluster.local:80"
MAX_FETCHES = 3
GRACE_S = 60
RUNTIME_S = 600
S3_SECRET = "s3-canary-secret-7f1e2d"
S3_ACCESS = "s3-canary-access-91ab"
CODE = {"train.py": "print('hello from the archive')\n", "pkg/util.py": "X = 1\n"}


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """Fake-free settings for KubeRay: the public URL, a small fetch limit, and canary S3 credentials."""
    return Settings(
        state_dir=tmp_path / "state",
        database_url=database_url,
        compute="fake",
        background_loops=False,
        public_url=PUBLIC_URL,
        archive_max_fetches=MAX_FETCHES,
        archive_grace_s=GRACE_S,
        s3_access_key=S3_ACCESS,
        s3_secret_key=S3_SECRET,
    )


@dataclass
class Kube:
    """The fake API server, its toy operator and the backend the broker uses."""

    server: FakeKubeApiServer
    operator: FakeRayOperator
    backend: KubeRayBackend
    launches: dict[str, JobLaunch]

    def rayjob(self, job_id: str) -> dict[str, Any]:
        """The stored RayJob of a broker job."""
        obj: dict[str, Any] = self.server.store.get(("ray.io", NAMESPACE, "rayjobs"), launch_name(job_id))
        return obj


@pytest.fixture
def kube(services: Services, clock: Any) -> Iterator[Kube]:
    """KubeRay over the in-process API server (CRD-validated), with the broker's archive uploader."""
    validator = crd_validator(RAYJOB_CRD) if RAYJOB_CRD.exists() else None
    server = FakeKubeApiServer(clock=clock, validator=validator)
    launches: dict[str, JobLaunch] = {}

    def publish(launch: JobLaunch) -> str:
        launches[launch.job_id] = launch
        return services.container.archives.publish(launch)

    backend = KubeRayBackend(
        server.custom_objects_api(),
        NAMESPACE,
        "rayproject/ray:2.60.0",
        capacity=Resources(milli_cpu=8000, gpus=0, memory_mib=32_768),
        core_api=server.core_v1_api(),
        archive_uploader=publish,
        hardening=PodHardening(runtime_class="gvisor"),
        secret_refs=parse_secret_env("SBX_S3_ACCESS_KEY=sbx-s3:accessKey,SBX_S3_SECRET_KEY=sbx-s3:secretKey"),
    )
    services.container.use_compute(backend)
    try:
        yield Kube(server, FakeRayOperator(server, NAMESPACE), backend, launches)
    finally:
        backend.close()
        server.close()


def _code_zip() -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in CODE.items():
            archive.writestr(name, text)
    return base64.b64encode(buffer.getvalue()).decode()


def _admitted_job(world: World) -> dict[str, Any]:
    job = _admitted_job_or_failed(world)
    assert world.services.jobs.get(world.sme, job_id=job["id"])["state"] in ("admitted", "running")
    return job


def _admitted_job_or_failed(world: World) -> dict[str, Any]:
    """Submit a job with code and run one admission pass (the backend's create may refuse it)."""
    world.credit(10_000_000)
    request = JobRequest(
        "python train.py",
        Resources(milli_cpu=1000, gpus=0, memory_mib=1024),
        RUNTIME_S,
        working_dir_zip_b64=_code_zip(),
    )
    job = world.services.jobs.submit(world.sme, request, idempotency_key=None)
    world.services.jobs.admission_pass()
    return job


def _archive_url(kube: Kube, job_id: str) -> str:
    env = yaml.safe_load(kube.rayjob(job_id)["spec"]["runtimeEnvYAML"])
    url: str = env["working_dir"]
    return url


def _local(live: Live, url: str) -> str:
    """The capability URL as the test reaches the broker (same path, the live server's address)."""
    assert url.startswith(PUBLIC_URL + ROUTE + "/")
    return live.url + urlsplit(url).path


def _get(live: Live, url: str) -> httpx.Response:
    with live.client(None) as client:  # no bearer token: the path is the capability
        return client.get(_local(live, url))


def _token_hash(url: str) -> str:
    return archives_db.hash_token(urlsplit(url).path.rsplit("/", 1)[1].removesuffix(".zip"))


def _fetches(services: Services, url: str) -> int | None:
    return services.container.db.read(lambda conn: archives_db.fetches(conn, _token_hash(url)))


def test_the_rayjob_points_at_a_capability_url_that_serves_the_code(
    live: Live, world: World, kube: Kube
) -> None:
    job = _admitted_job(world)
    url = _archive_url(kube, job["id"])
    token = urlsplit(url).path.rsplit("/", 1)[1].removesuffix(".zip")
    assert len(base64.urlsafe_b64decode(token + "=")) * 8 >= 128
    response = _get(live, url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        names = archive.namelist()
        tops = {name.split("/", 1)[0] for name in names}
        assert len(tops) == 1  # Ray strips exactly one top-level directory from remote zips
        top = tops.pop()
        assert {n.removeprefix(top + "/") for n in names if not n.endswith("/")} == set(CODE)
        assert archive.read(f"{top}/train.py").decode() == CODE["train.py"]
    assert _fetches(world.services, url) == 1


def test_fetches_are_counted_and_refused_after_the_limit(live: Live, world: World, kube: Kube) -> None:
    job = _admitted_job(world)
    url = _archive_url(kube, job["id"])
    for n in range(1, MAX_FETCHES + 1):
        assert _get(live, url).status_code == 200
        assert _fetches(world.services, url) == n
    refused = _get(live, url)
    assert refused.status_code == 404
    assert refused.json() == {"error": "not_found", "detail": "no such archive"}
    assert _fetches(world.services, url) == MAX_FETCHES


def test_concurrent_fetches_never_pass_the_limit(live: Live, world: World, kube: Kube) -> None:
    job = _admitted_job(world)
    url = _archive_url(kube, job["id"])
    statuses: list[int] = []
    lock = threading.Lock()

    def fetch() -> None:
        status = _get(live, url).status_code
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=fetch) for _ in range(MAX_FETCHES * 4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] * MAX_FETCHES + [404] * (MAX_FETCHES * 3)
    assert _fetches(world.services, url) == MAX_FETCHES


def test_the_url_expires_at_the_jobs_deadline_plus_grace(live: Live, world: World, kube: Kube) -> None:
    job = _admitted_job(world)
    url = _archive_url(kube, job["id"])
    world.clock.advance((RUNTIME_S + GRACE_S) * 1000 - 1)
    assert _get(live, url).status_code == 200
    world.clock.advance(1)
    assert _get(live, url).status_code == 404


def test_the_url_is_refused_once_the_job_has_ended(live: Live, world: World, kube: Kube) -> None:
    job = _admitted_job(world)
    url = _archive_url(kube, job["id"])
    name = launch_name(job["id"])
    kube.operator.run_until_running(name)
    assert _get(live, url).status_code == 200
    kube.operator.finish(name, succeeded=True)
    world.clock.advance(1000)
    assert world.services.jobs.reconcile_pass() == 1
    assert world.services.jobs.get(world.sme, job_id=job["id"])["state"] == "succeeded"
    assert _get(live, url).status_code == 404
    assert _fetches(world.services, url) == 1  # the refusal was not counted


def test_wrong_tokens_are_refused_like_unknown_ones(live: Live, world: World, kube: Kube) -> None:
    job = _admitted_job(world)
    url = _archive_url(kube, job["id"])
    token = urlsplit(url).path.rsplit("/", 1)[1].removesuffix(".zip")
    flipped = ("A" if token[0] != "A" else "B") + token[1:]
    with live.client(None) as client:
        for path in (f"{ROUTE}/{flipped}.zip", f"{ROUTE}/short.zip", f"{ROUTE}/{token}.tar"):
            response = client.get(path)
            assert response.status_code == 404, path
            assert response.json()["error"] == "not_found"
    assert _fetches(world.services, url) == 0


def test_a_bearer_token_is_neither_needed_nor_a_substitute(live: Live, world: World, kube: Kube) -> None:
    job = _admitted_job(world)
    url = _archive_url(kube, job["id"])
    with live.client("op2") as operator:
        assert operator.get(f"{ROUTE}/{'x' * 43}.zip").status_code == 404
        assert operator.get(_local(live, url)).status_code == 200


def test_the_rayjob_carries_no_credential_and_its_pods_are_restricted(
    live: Live, world: World, kube: Kube
) -> None:
    job = _admitted_job(world)
    rayjob = kube.rayjob(job["id"])
    text = json.dumps(rayjob) + yaml.safe_dump(rayjob)
    canaries = {
        *world.tokens.values(),
        S3_SECRET,
        S3_ACCESS,
        world.services.container.broker_key_pem.decode().splitlines()[1],
    }
    assert not [c for c in canaries if c in text]
    assert "Authorization" not in text and "Bearer" not in text
    spec = rayjob["spec"]
    pods = [spec["rayClusterSpec"]["headGroupSpec"]["template"], spec["submitterPodTemplate"]]
    pods += [group["template"] for group in spec["rayClusterSpec"]["workerGroupSpecs"]]
    for pod in pods:
        assert restricted_violations(pod["spec"]) == []
        assert pod["spec"]["runtimeClassName"] == "gvisor"
        assert pod["spec"]["automountServiceAccountToken"] is False


def test_a_job_stopped_before_its_pods_fetched_is_refused(live: Live, world: World, kube: Kube) -> None:
    job = _admitted_job(world)
    url = _archive_url(kube, job["id"])
    world.services.jobs.stop(world.sme, job_id=job["id"])
    kube.operator.reconcile(launch_name(job["id"]))
    world.clock.advance(1000)
    world.services.jobs.reconcile_pass()
    assert world.services.jobs.get(world.sme, job_id=job["id"])["state"] == "stopped"
    assert _get(live, url).status_code == 404


def test_the_openapi_document_describes_the_archive_route(live: Live, world: World) -> None:
    with live.client(None) as client:
        document = client.get("/openapi.json").json()
    operation = document["paths"][f"{ROUTE}/{{token}}.zip"]["get"]
    assert "application/zip" in operation["responses"]["200"]["content"]
    assert operation["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ErrorBody"
    )
    assert operation["x-sbx-policy"] == ["public"]


def test_zips_have_one_top_level_directory_and_skip_links(tmp_path: Path, database_url: str) -> None:
    source = tmp_path / "src"
    (source / "a" / "b").mkdir(parents=True)
    (source / "a" / "b" / "c.txt").write_text("c")
    (source / "top.txt").write_text("t")
    (source / "link").symlink_to("/etc/passwd")
    first, second = tmp_path / "1.zip", tmp_path / "2.zip"
    assert zip_working_dir(source, first, "sbx-job") == 2
    zip_working_dir(source, second, "sbx-job")
    assert first.read_bytes() == second.read_bytes()  # deterministic
    with zipfile.ZipFile(first) as archive:
        assert archive.namelist() == ["sbx-job/", "sbx-job/a/b/c.txt", "sbx-job/top.txt"]


def test_publishing_again_revokes_the_earlier_url(live: Live, world: World, kube: Kube) -> None:
    """A job has one live capability: a RayJob created again (after a lost one) gets a new URL, the old one
    is refused."""
    job = _admitted_job(world)
    first = _archive_url(kube, job["id"])
    second = world.services.container.archives.publish(kube.launches[job["id"]])
    assert second != first
    assert _get(live, first).status_code == 404
    assert _get(live, second).status_code == 200


def test_without_a_public_url_the_job_fails_with_the_reason_and_its_hold_is_released(
    world: World, services: Services, clock: Any
) -> None:
    from broker.services.archives import CodeArchives

    c = services.container
    unset = CodeArchives(c.db, c.storage, c.clock, c.settings.model_copy(update={"public_url": None}))
    with FakeKubeApiServer(clock=clock) as server:
        backend = KubeRayBackend(
            server.custom_objects_api(),
            NAMESPACE,
            "img",
            capacity=Resources(milli_cpu=8000, gpus=0, memory_mib=32_768),
            archive_uploader=unset.publish,
        )
        c.use_compute(backend)
        job = _admitted_job_or_failed(world)
        state = world.services.jobs.get(world.sme, job_id=job["id"])
        backend.close()
    assert state["state"] == "failed"
    assert "SBX_PUBLIC_URL" in state["message"]
    assert world.services.ledger.balance(world.sme)["held"] == 0
