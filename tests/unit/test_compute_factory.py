"""The composition root's entry into compute: build_backend picks and checks the backend kind."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.compute import KINDS, BackendState, ComputeBackend, FakeBackend, RayJobsBackend, build_backend
from common.clock import FakeClock
from common.errors import InvalidInput


def test_kinds() -> None:
    assert set(KINDS) == {"ray-local", "ray", "kuberay", "fake"}


def test_fake_uses_the_given_clock(tmp_path: Path) -> None:
    backend = build_backend("fake", state_dir=tmp_path, clock=FakeClock())
    assert isinstance(backend, FakeBackend)
    assert isinstance(backend, ComputeBackend)
    assert backend.status("sbx-x").state is BackendState.NOT_FOUND
    backend.close()


def test_ray_needs_an_address_and_contacts_nothing_until_used(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="address"):
        build_backend("ray", state_dir=tmp_path)
    backend = build_backend("ray", state_dir=tmp_path, ray_address="http://127.0.0.1:1", ray_token="t")
    assert isinstance(backend, RayJobsBackend)
    assert backend.kind == "ray"
    backend.close()


def test_kuberay_needs_namespace_image_and_capacity(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="kuberay"):
        build_backend("kuberay", state_dir=tmp_path, kube_namespace="sbx", kube_image="img")


def test_unknown_kinds_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="unknown compute backend"):
        build_backend("slurm", state_dir=tmp_path)
