"""Errors of the DP-SGD training harness.

Exception tree (all subclass :class:`common.errors.DomainError`)::

    SpecError                 invalid_training_spec   the spec breaks a rule (decided before any data is read)
      SpecOverGrant           budget_exceeded         the spec asks for more ε (or δ) than the grant/policy allow
    SecureModeUnavailable     secure_rng_unavailable  production mode asked, but no cryptographic RNG for Opacus
    TrainingFailed            training_failed         something failed after data was read; details withheld

Messages of ``SpecError`` and ``SecureModeUnavailable`` depend only on the spec and public metadata.
``TrainingFailed`` never carries a data value: it names the stage and the exception class only, and is
raised ``from None`` on purpose (a chained third-party message could quote a data value into a log).
"""

from __future__ import annotations

from common.errors import DomainError


class SpecError(DomainError):
    """The training spec breaks a rule; decided from the spec and public metadata only."""

    code = "invalid_training_spec"


class SpecOverGrant(SpecError):
    """The spec's privacy cost is larger than what the grant or the dataset policy allows."""

    code = "budget_exceeded"


class SecureModeUnavailable(DomainError):
    """Secure (cryptographic-RNG) training was asked for but cannot run here; nothing was read."""

    code = "secure_rng_unavailable"


class TrainingFailed(DomainError):
    """Training failed after the data was read. The message names the stage only, never data."""

    code = "training_failed"

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(
            f"training failed at stage '{stage}' ({reason}); details are withheld because they could "
            "reveal protected data. The reserved privacy budget is spent."
        )
        self.stage = stage
        self.reason = reason
