"""Compute backends: one small interface (:class:`ComputeBackend`) over Ray, KubeRay and a fake.

Public names: the interface and its values (``ComputeBackend``, ``JobLaunch``, ``BackendStatus``,
``BackendState``, ``BackendError``, ``SandboxUnavailable``, ``launch_name``), the implementations
(``FakeBackend``, ``RayJobsBackend``, ``LocalRayBackend``, ``KubeRayBackend``) and ``build_backend`` for the
composition root. The implementations load on first use (PEP 562): the sandbox launcher, which every
local job starts as a fresh process, imports this package and must not pay for the KubeRay adapter.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .base import (
    BackendError,
    BackendState,
    BackendStatus,
    ComputeBackend,
    JobLaunch,
    SandboxUnavailable,
    launch_name,
)

if TYPE_CHECKING:
    from .factory import KINDS, build_backend
    from .fake import FakeBackend, FakeScript
    from .kuberay import KubeRayBackend, rayjob_manifest
    from .ray_jobs import RayJobsBackend
    from .ray_local import LocalRayBackend

_LAZY = {
    "KINDS": ".factory",
    "build_backend": ".factory",
    "FakeBackend": ".fake",
    "FakeScript": ".fake",
    "KubeRayBackend": ".kuberay",
    "rayjob_manifest": ".kuberay",
    "RayJobsBackend": ".ray_jobs",
    "LocalRayBackend": ".ray_local",
}


def __getattr__(name: str) -> Any:
    """Load an implementation on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


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
