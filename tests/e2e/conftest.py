"""A real local Ray head per test module, shared by the end-to-end suites that run jobs on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from broker.compute.ray_local import LocalRayBackend


@pytest.fixture(scope="module")
def ray_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRayBackend]:
    """Start a 2-CPU local Ray head for the module; stop it (and everything it ran) afterwards."""
    backend = LocalRayBackend(tmp_path_factory.mktemp("ray-state"), num_cpus=2)
    try:
        yield backend
    finally:
        backend.close()
