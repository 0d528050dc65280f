"""Compute backends: one small interface (:class:`ComputeBackend`) over Ray, KubeRay and a fake.

Public names: the interface and its values (``ComputeBackend``, ``JobLaunch``, ``BackendStatus``,
``BackendState``, ``BackendError``, ``launch_name``), the implementations (``FakeBackend``,
``RayJobsBackend``, ``LocalRayBackend``, ``KubeRayBackend``) and ``build_backend`` for the composition root.
Ray and Kubernetes are imported lazily inside the adapters, so importing this package stays cheap.
"""

from .base import (
    BackendError,
    BackendState,
    BackendStatus,
    ComputeBackend,
    JobLaunch,
    SandboxUnavailable,
    launch_name,
)
from .factory import KINDS, build_backend
from .fake import FakeBackend, FakeScript
from .kuberay import KubeRayBackend, rayjob_manifest
from .ray_jobs import RayJobsBackend
from .ray_local import LocalRayBackend

__all__ = [
    "KINDS",
    "BackendError",
    "BackendState",
    "BackendStatus",
    "ComputeBackend",
    "FakeBackend",
    "FakeScript",
    "JobLaunch",
    "KubeRayBackend",
    "LocalRayBackend",
    "RayJobsBackend",
    "SandboxUnavailable",
    "build_backend",
    "launch_name",
    "rayjob_manifest",
]
