"""Build the configured compute backend (called once by the composition root, ``broker/container.py``)."""

from __future__ import annotations

from pathlib import Path

from common.clock import Clock, SystemClock
from common.errors import InvalidInput
from common.resources import Resources

from .base import ComputeBackend
from .fake import FakeBackend
from .kuberay import (
    ArchiveUploader,
    KubeRayBackend,
    PodHardening,
    WorkingDirUploader,
    parse_secret_env,
)
from .ray_jobs import RayJobsBackend
from .ray_local import LocalRayBackend, SandboxDefaults

KINDS = ("ray-local", "ray", "kuberay", "fake")


def build_backend(
    kind: str,
    *,
    state_dir: Path,
    ray_address: str | None = None,
    ray_token: str | None = None,
    kube_namespace: str | None = None,
    kube_image: str | None = None,
    kube_capacity: Resources | None = None,
    kube_upload_working_dir: WorkingDirUploader | None = None,
    kube_secret_env: str = "",
    kube_archive_uploader: ArchiveUploader | None = None,
    kube_hardening: PodHardening | None = None,
    local_num_cpus: int | None = None,
    local_sandbox: SandboxDefaults | None = None,
    clock: Clock | None = None,
) -> ComputeBackend:
    """Return a backend of ``kind`` (``ray-local``, ``ray``, ``kuberay`` or ``fake``).

    ``ray-local`` starts a private Ray head under ``state_dir`` (seconds); ``ray`` needs ``ray_address``
    (dashboard URL) and normally ``ray_token``; ``kuberay`` needs ``kube_namespace``, ``kube_image`` and
    ``kube_capacity`` and loads the in-cluster Kubernetes config (or ``~/.kube/config`` outside a pod), its
    pods locked down by ``kube_hardening`` and its code archives published by ``kube_archive_uploader``;
    ``fake`` is the scriptable in-memory backend. The caller owns the result and must ``close()`` it.
    """
    if kind == "ray-local":
        return LocalRayBackend(state_dir / "ray", num_cpus=local_num_cpus, sandbox=local_sandbox)
    if kind == "ray":
        if not ray_address:
            raise InvalidInput("compute backend 'ray' needs a Ray dashboard address (e.g. http://head:8265)")
        return RayJobsBackend(ray_address, ray_token)
    if kind == "kuberay":
        if not (kube_namespace and kube_image and kube_capacity):
            raise InvalidInput("compute backend 'kuberay' needs a namespace, an image and a capacity")
        custom, core, networking = _kube_apis()
        return KubeRayBackend(
            custom,
            kube_namespace,
            kube_image,
            capacity=kube_capacity,
            core_api=core,
            upload_working_dir=kube_upload_working_dir,
            clock=clock,
            secret_refs=parse_secret_env(kube_secret_env),
            archive_uploader=kube_archive_uploader,
            networking_api=networking,
            hardening=kube_hardening,
        )
    if kind == "fake":
        return FakeBackend(clock or SystemClock())
    raise InvalidInput(f"unknown compute backend {kind!r}; choose one of {', '.join(KINDS)}")


def _kube_apis() -> tuple[object, object, object]:
    """Load the Kubernetes config (in-cluster first); return (CustomObjectsApi, CoreV1Api, NetworkingV1Api)."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    api = client.ApiClient()
    return client.CustomObjectsApi(api), client.CoreV1Api(api), client.NetworkingV1Api(api)
