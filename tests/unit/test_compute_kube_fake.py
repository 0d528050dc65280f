"""The in-process Kubernetes API fake, spoken to by the official client, and KubeRayBackend's retries."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from broker.compute import BackendState, JobLaunch, KubeRayBackend, launch_name
from broker.compute.kube_fake import FakeKubeApiServer, FakeRayOperator, merge_patch
from broker.compute.kuberay import STOPPED_AT
from common.resources import Resources

G, V, NS, P = "ray.io", "v1", "sbx", "rayjobs"


@pytest.fixture
def kube() -> Iterator[FakeKubeApiServer]:
    with FakeKubeApiServer() as server:
        yield server


@pytest.fixture
def api(kube: FakeKubeApiServer) -> Iterator[client.CustomObjectsApi]:
    custom = kube.custom_objects_api()
    yield custom
    custom.api_client.close()


def _body(name: str = "sbx-a") -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": name, "labels": {"a": "1"}},
        "spec": {"suspend": True, "entrypoint": "echo"},
        "status": {"jobStatus": "SUCCEEDED"},
    }


def _rv(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


def test_merge_patch_follows_rfc7386() -> None:
    assert merge_patch({"a": 1, "b": {"c": 2, "d": 3}}, {"b": {"c": None, "e": 4}, "f": [1]}) == {
        "a": 1,
        "b": {"d": 3, "e": 4},
        "f": [1],
    }


def test_create_ignores_status_and_duplicates_conflict(api: client.CustomObjectsApi) -> None:
    created = api.create_namespaced_custom_object(G, V, NS, P, _body())
    assert "status" not in created
    assert created["metadata"]["generation"] == 1
    with pytest.raises(ApiException) as caught:
        api.create_namespaced_custom_object(G, V, NS, P, _body())
    assert caught.value.status == 409
    assert "AlreadyExists" in str(caught.value.body)


def test_patch_merges_bumps_versions_and_ignores_status(api: client.CustomObjectsApi) -> None:
    created = api.create_namespaced_custom_object(G, V, NS, P, _body())
    patched = api.patch_namespaced_custom_object(
        G, V, NS, P, "sbx-a", {"spec": {"suspend": False}, "status": {"jobStatus": "FAILED"}}
    )
    assert patched["spec"] == {"suspend": False, "entrypoint": "echo"}
    assert "status" not in patched
    assert _rv(patched) > _rv(created)
    assert patched["metadata"]["generation"] == 2


def test_status_subresource_touches_only_status(api: client.CustomObjectsApi) -> None:
    api.create_namespaced_custom_object(G, V, NS, P, _body())
    out = api.patch_namespaced_custom_object_status(
        G, V, NS, P, "sbx-a", {"spec": {"suspend": False}, "status": {"jobDeploymentStatus": "Running"}}
    )
    assert out["spec"]["suspend"] is True
    assert out["status"] == {"jobDeploymentStatus": "Running"}
    assert out["metadata"]["generation"] == 1


def test_a_stale_resource_version_conflicts(api: client.CustomObjectsApi) -> None:
    created = api.create_namespaced_custom_object(G, V, NS, P, _body())
    api.patch_namespaced_custom_object(G, V, NS, P, "sbx-a", {"metadata": {"labels": {"b": "2"}}})
    stale = dict(created, spec={"suspend": False, "entrypoint": "echo"})
    with pytest.raises(ApiException) as caught:
        api.replace_namespaced_custom_object(G, V, NS, P, "sbx-a", stale)
    assert caught.value.status == 409
    fresh = api.get_namespaced_custom_object(G, V, NS, P, "sbx-a")
    fresh["spec"]["suspend"] = False
    replaced = api.replace_namespaced_custom_object(G, V, NS, P, "sbx-a", fresh)
    assert replaced["spec"]["suspend"] is False
    assert replaced["metadata"]["labels"] == {"a": "1", "b": "2"}


def test_delete_then_not_found(api: client.CustomObjectsApi) -> None:
    api.create_namespaced_custom_object(G, V, NS, P, _body())
    api.delete_namespaced_custom_object(G, V, NS, P, "sbx-a")
    for call in (
        lambda: api.get_namespaced_custom_object(G, V, NS, P, "sbx-a"),
        lambda: api.delete_namespaced_custom_object(G, V, NS, P, "sbx-a"),
    ):
        with pytest.raises(ApiException) as caught:
            call()
        assert caught.value.status == 404


def test_a_validator_refuses_invalid_objects() -> None:
    def no_echo(obj: dict[str, Any]) -> None:
        if obj["spec"].get("entrypoint") == "echo":
            raise ValueError("echo is not allowed")

    with FakeKubeApiServer(validator=no_echo) as server:
        custom = server.custom_objects_api()
        with pytest.raises(ApiException) as caught:
            custom.create_namespaced_custom_object(G, V, NS, P, _body())
        assert caught.value.status == 422
        assert "echo is not allowed" in str(caught.value.body)
        custom.api_client.close()


class _RacingApi(client.CustomObjectsApi):
    """The real client, but another writer changes the object just before each of our first patches."""

    def __init__(self, kube: FakeKubeApiServer, races: int) -> None:
        super().__init__(kube.api_client())
        self._kube = kube
        self.races = races
        self.conflicts = 0

    def patch_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, body: Any, **kw: Any
    ) -> Any:
        if self.races:
            self.races -= 1
            self._kube.store.write(
                (group, namespace, plural),
                name,
                {"metadata": {"labels": {"other": str(self.races)}}},
                patch=True,
                status=False,
            )
        try:
            return super().patch_namespaced_custom_object(group, version, namespace, plural, name, body, **kw)
        except ApiException as exc:
            self.conflicts += exc.status == 409
            raise


def _launch(job_id: str = "race") -> JobLaunch:
    return JobLaunch(
        name=launch_name(job_id),
        job_id=job_id,
        org_id="o",
        entrypoint="python -c 'print(1)'",
        working_dir=None,
        requirements=(),
        resources=Resources(milli_cpu=500),
        max_runtime_s=60,
    )


def test_start_retries_after_resource_version_conflicts(kube: FakeKubeApiServer) -> None:
    racing = _RacingApi(kube, races=2)
    backend = KubeRayBackend(racing, NS, "img", capacity=Resources(milli_cpu=1000))
    launch = _launch()
    backend.start(launch)
    obj = kube.store.get((G, NS, P), launch.name)
    assert racing.conflicts == 2
    assert obj["spec"]["suspend"] is False
    assert obj["metadata"]["labels"]["other"] == "0"  # the other writer's change survived
    backend.close()


def test_stop_suspends_marks_and_is_never_resumed(kube: FakeKubeApiServer) -> None:
    backend = KubeRayBackend(kube.custom_objects_api(), NS, "img", capacity=Resources(milli_cpu=1000))
    operator = FakeRayOperator(kube, NS)
    launch = _launch("stop")
    backend.start(launch)
    operator.run_until_running(launch.name)
    backend.stop(launch.name)
    backend.stop(launch.name)
    obj = kube.store.get((G, NS, P), launch.name)
    assert obj["spec"]["suspend"] is True
    assert STOPPED_AT in obj["metadata"]["annotations"]
    assert operator.reconcile(launch.name) == "Suspended"
    backend.start(launch)
    assert kube.store.get((G, NS, P), launch.name)["spec"]["suspend"] is True
    assert backend.status(launch.name).state is BackendState.STOPPED
    backend.close()


def test_unknown_jobs_are_not_found_and_stop_ignores_them(kube: FakeKubeApiServer) -> None:
    backend = KubeRayBackend(kube.custom_objects_api(), NS, "img", capacity=Resources(milli_cpu=1000))
    assert backend.status("sbx-none").state is BackendState.NOT_FOUND
    backend.stop("sbx-none")
    assert backend.logs("sbx-none") == ""
    backend.close()
