import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import Conflict
from quotas.jobs import (
    TERMINAL_STATES,
    IllegalTransition,
    JobState,
    allowed_targets,
    is_terminal,
    transition,
)

HAPPY_PATHS = [
    [JobState.QUEUED, JobState.ADMITTED, JobState.RUNNING, JobState.SUCCEEDED],
    [JobState.QUEUED, JobState.ADMITTED, JobState.RUNNING, JobState.FAILED],
    [JobState.QUEUED, JobState.ADMITTED, JobState.RUNNING, JobState.STOPPED],
    [JobState.QUEUED, JobState.ADMITTED, JobState.RUNNING, JobState.TIMED_OUT],
    [JobState.QUEUED, JobState.REJECTED],
    [JobState.QUEUED, JobState.STOPPED],
    [JobState.QUEUED, JobState.ADMITTED, JobState.STOPPED],
    [JobState.QUEUED, JobState.ADMITTED, JobState.FAILED],
    [JobState.QUEUED, JobState.ADMITTED, JobState.QUEUED, JobState.ADMITTED, JobState.RUNNING],
]


@pytest.mark.parametrize("path", HAPPY_PATHS, ids=lambda p: "-".join(s.value for s in p))
def test_documented_paths_are_allowed(path: list[JobState]) -> None:
    state = path[0]
    for target in path[1:]:
        state = transition(state, target)
    assert state is path[-1]


def test_terminal_states() -> None:
    assert {s for s in JobState if s.is_terminal()} == {
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.STOPPED,
        JobState.TIMED_OUT,
        JobState.LOST,
        JobState.REJECTED,
    }
    assert all(is_terminal(s) == s.is_terminal() for s in JobState)


@given(st.sampled_from(sorted(TERMINAL_STATES)), st.sampled_from(list(JobState)))
def test_terminal_states_are_never_left(current: JobState, target: JobState) -> None:
    with pytest.raises(IllegalTransition) as info:
        transition(current, target)
    assert "final state" in info.value.detail
    assert allowed_targets(current) == frozenset()


@given(st.sampled_from(list(JobState)), st.sampled_from(list(JobState)))
def test_transition_agrees_with_allowed_targets(current: JobState, target: JobState) -> None:
    if target in allowed_targets(current):
        assert transition(current, target) is target
    else:
        with pytest.raises(IllegalTransition):
            transition(current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (JobState.QUEUED, JobState.RUNNING),
        (JobState.QUEUED, JobState.SUCCEEDED),
        (JobState.RUNNING, JobState.QUEUED),
        (JobState.RUNNING, JobState.REJECTED),
        (JobState.ADMITTED, JobState.REJECTED),
        (JobState.RUNNING, JobState.RUNNING),
    ],
)
def test_illegal_moves_raise_a_conflict_with_a_clear_message(current: JobState, target: JobState) -> None:
    with pytest.raises(Conflict) as info:
        transition(current, target)
    error = info.value
    assert isinstance(error, IllegalTransition)
    assert error.code == "illegal_transition"
    assert current.value in error.detail and target.value in error.detail
    assert "may become" in error.detail


def test_state_values_are_stable_strings() -> None:
    assert JobState("timed_out") is JobState.TIMED_OUT
    assert [s.value for s in JobState] == [
        "queued",
        "admitted",
        "running",
        "succeeded",
        "failed",
        "stopped",
        "timed_out",
        "lost",
        "rejected",
    ]
