"""The job state machine: a status enum that knows its terminal states and refuses to leave them.

::

    QUEUED ──► ADMITTED ──► RUNNING ──► SUCCEEDED | FAILED | STOPPED | TIMED_OUT | LOST
      │  ▲        │
      │  └────────┤ (hold rolled back after a failed backend submit: back to the queue)
      │           ├──► STOPPED   (cancelled before it started)
      │           └──► FAILED    (the backend refused the job)
      ├──► REJECTED  (can never fit, refused by admission)
      └──► STOPPED   (cancelled while queued)

LOST: the backend no longer knows a running job (a cluster restart, a deleted RayJob); it is billed up to the
last time the broker saw it running, never for the outage, and its SME resubmits.

Terminal states (SUCCEEDED, FAILED, STOPPED, TIMED_OUT, LOST, REJECTED) are never left. A move to the same state is
also refused: callers that need idempotency compare before they transition.
"""

from __future__ import annotations

from enum import StrEnum

from common.errors import Conflict


class JobState(StrEnum):
    """Where a job is in its life. The string values are stable (stored, and shown in the API)."""

    QUEUED = "queued"
    ADMITTED = "admitted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    TIMED_OUT = "timed_out"
    LOST = "lost"
    REJECTED = "rejected"

    def is_terminal(self) -> bool:
        """True when the job is finished for good and no transition may leave this state."""
        return self in TERMINAL_STATES


TERMINAL_STATES: frozenset[JobState] = frozenset(
    {
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.STOPPED,
        JobState.TIMED_OUT,
        JobState.LOST,
        JobState.REJECTED,
    }
)

_ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.ADMITTED, JobState.REJECTED, JobState.STOPPED}),
    JobState.ADMITTED: frozenset({JobState.RUNNING, JobState.QUEUED, JobState.STOPPED, JobState.FAILED}),
    JobState.RUNNING: frozenset(
        {JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED, JobState.TIMED_OUT, JobState.LOST}
    ),
    **{state: frozenset() for state in TERMINAL_STATES},
}


class IllegalTransition(Conflict):
    """A job was asked to move between two states the state machine does not connect."""

    code = "illegal_transition"

    def __init__(self, current: JobState, target: JobState) -> None:
        if current.is_terminal():
            detail = f"job is {current.value}, a final state; it cannot become {target.value}"
        else:
            allowed = ", ".join(sorted(s.value for s in _ALLOWED[current])) or "nothing"
            detail = (
                f"a {current.value} job cannot become {target.value}; from {current.value} it may become: "
                f"{allowed}"
            )
        super().__init__(detail)
        self.current = current
        self.target = target


def is_terminal(state: JobState) -> bool:
    """True when ``state`` is final (see :data:`TERMINAL_STATES`)."""
    return state in TERMINAL_STATES


def allowed_targets(state: JobState) -> frozenset[JobState]:
    """The states a job in ``state`` may move to (empty for terminal states)."""
    return _ALLOWED[state]


def transition(current: JobState, target: JobState) -> JobState:
    """Check the move ``current → target`` and return ``target``; raise :class:`IllegalTransition` if not."""
    if target not in _ALLOWED[current]:
        raise IllegalTransition(current, target)
    return target
