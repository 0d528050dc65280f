"""The pure parts of the Ray Jobs adapter (runtime env, resources, status mapping) and its error edge."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from broker.compute import BackendError, BackendState, JobLaunch, RayJobsBackend, launch_name
from broker.compute.ray_jobs import (
    build_runtime_env,
    entrypoint_resources,
    http_status_of,
    map_ray_status,
    resources_from_ray,
)
from common.errors import InvalidInput
from common.resources import Resources


def _launch(**overrides: object) -> JobLaunch:
    fields: dict[str, object] = {
        "name": launch_name("j"),
        "job_id": "j",
        "org_id": "o",
        "entrypoint": "python main.py",
        "working_dir": Path("/srv/job"),
        "requirements": ("numpy==2.3.0", "polars"),
        "resources": Resources(milli_cpu=1500, gpus=1, memory_mib=512),
        "max_runtime_s": 60,
        "env": {"SEED": "1"},
    }
    fields.update(overrides)
    return JobLaunch(**fields)  # type: ignore[arg-type]


def test_runtime_env_uploads_the_working_dir_and_installs_requirements() -> None:
    env = build_runtime_env(_launch())
    assert env == {"working_dir": "/srv/job", "pip": ["numpy==2.3.0", "polars"], "env_vars": {"SEED": "1"}}


def test_runtime_env_pins_the_interpreter_on_path() -> None:
    env = build_runtime_env(_launch(), Path("/venv/bin"))
    assert env["env_vars"]["PATH"] == "/venv/bin:${PATH}"


def test_an_empty_launch_has_an_empty_runtime_env() -> None:
    assert build_runtime_env(_launch(working_dir=None, requirements=(), env={})) == {}


@pytest.mark.parametrize("key", ["RAY_AUTH_TOKEN", "ray_auth_mode", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"])
def test_jobs_cannot_set_cluster_credentials(key: str) -> None:
    with pytest.raises(InvalidInput, match="must not set"):
        build_runtime_env(_launch(env={key: "x"}))


def test_jobs_cannot_override_the_pinned_path() -> None:
    with pytest.raises(InvalidInput, match="PATH"):
        build_runtime_env(_launch(env={"PATH": "/evil"}), Path("/venv/bin"))


def test_entrypoint_resources_in_ray_units() -> None:
    assert entrypoint_resources(Resources(milli_cpu=1500, gpus=1, memory_mib=512)) == {
        "entrypoint_num_cpus": 1.5,
        "entrypoint_num_gpus": 1,
        "entrypoint_memory": 512 * 1024 * 1024,
    }
    assert entrypoint_resources(Resources()) == {}


@pytest.mark.parametrize(
    ("ray", "state", "start", "end"),
    [
        ("PENDING", BackendState.PENDING, None, None),
        ("RUNNING", BackendState.RUNNING, 10, None),
        ("SUCCEEDED", BackendState.SUCCEEDED, 10, 20),
        ("FAILED", BackendState.FAILED, 10, 20),
        ("STOPPED", BackendState.STOPPED, 10, 20),
    ],
)
def test_ray_status_mapping(ray: str, state: BackendState, start: int | None, end: int | None) -> None:
    status = map_ray_status(ray, 10, 20, "msg")
    assert (status.state, status.start_ms, status.end_ms, status.message) == (state, start, end, "msg")


def test_an_unknown_ray_status_is_an_error() -> None:
    with pytest.raises(BackendError, match="unknown job status"):
        map_ray_status("EXPLODED", None, None, "")


def test_ray_resources_round_down_to_integers() -> None:
    totals = {"CPU": 2.5, "GPU": 1.5, "memory": 1.5 * 1024**3, "object_store_memory": 1e9}
    assert resources_from_ray(totals) == Resources(milli_cpu=2500, gpus=1, memory_mib=1536)
    assert resources_from_ray({}) == Resources()


def test_http_status_is_read_from_ray_sdk_errors() -> None:
    assert http_status_of(RuntimeError("Request failed with status code 404: Job x does not exist.")) == 404
    assert http_status_of(RuntimeError("connection refused")) is None


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_cluster_is_a_backend_error_with_its_cause() -> None:
    backend = RayJobsBackend(f"http://127.0.0.1:{_closed_port()}", "token")
    with pytest.raises(BackendError) as caught:
        backend.status("sbx-x")
    assert caught.value.__cause__ is not None
    assert caught.value.code == "backend_unavailable"


def test_a_closed_backend_refuses_calls() -> None:
    backend = RayJobsBackend("http://127.0.0.1:1", "token")
    backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend.status("sbx-x")
