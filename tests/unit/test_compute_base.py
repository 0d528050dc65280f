"""The backend interface's values: launch names, states, launches, log tails."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.compute import BackendError, BackendState, JobLaunch, launch_name
from broker.compute.base import tail_bytes
from common.errors import DomainError
from common.resources import Resources

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _launch(job_id: str = "job-1", **overrides: object) -> JobLaunch:
    fields: dict[str, object] = {
        "name": launch_name(job_id),
        "job_id": job_id,
        "org_id": "org-1",
        "entrypoint": "python main.py",
        "working_dir": Path("/tmp/x"),
        "requirements": (),
        "resources": Resources(milli_cpu=500),
        "max_runtime_s": 60,
    }
    fields.update(overrides)
    return JobLaunch(**fields)  # type: ignore[arg-type]


def test_launch_name_is_deterministic_and_prefixed() -> None:
    assert launch_name("01HZX3") == launch_name("01HZX3") == "sbx-01hzx3"


@given(st.tuples(st.text(max_size=100), st.sampled_from("a0Z"), st.text(max_size=100)).map("".join))
def test_launch_name_is_a_dns1123_label(job_id: str) -> None:
    name = launch_name(job_id)
    assert DNS1123_LABEL.match(name), name
    assert len(name) <= 63
    assert name.startswith("sbx-")


def test_launch_name_refuses_ids_without_usable_characters() -> None:
    with pytest.raises(ValueError, match="no usable characters"):
        launch_name("___")


def test_terminal_states() -> None:
    assert {s for s in BackendState if s.is_terminal} == {
        BackendState.SUCCEEDED,
        BackendState.FAILED,
        BackendState.STOPPED,
    }
    assert not BackendState.NOT_FOUND.is_terminal


def test_launch_name_must_derive_from_job_id() -> None:
    with pytest.raises(ValueError, match="launch_name"):
        _launch(name="sbx-other")


@pytest.mark.parametrize(("field", "value"), [("entrypoint", "  "), ("max_runtime_s", 0)])
def test_launch_refuses_empty_entrypoint_and_runtime(field: str, value: object) -> None:
    with pytest.raises(ValueError):
        _launch(**{field: value})


def test_launch_is_frozen() -> None:
    launch = _launch()
    with pytest.raises(AttributeError):
        launch.entrypoint = "rm -rf /"  # type: ignore[misc]


def test_backend_error_is_a_domain_error_with_a_stable_code() -> None:
    err = BackendError("down")
    assert isinstance(err, DomainError)
    assert err.code == "backend_unavailable"


def test_tail_bytes_keeps_the_end_and_never_splits_a_character() -> None:
    assert tail_bytes("abcdef", 3) == "def"
    assert tail_bytes("abc", 10) == "abc"
    assert tail_bytes("abc", 0) == ""
    assert tail_bytes("xé", 1) == ""  # "é" is 2 bytes: half of it is dropped, not garbled
    assert tail_bytes("xé", 2) == "é"
