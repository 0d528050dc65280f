"""DP-SGD trusted training harness: a declarative spec in, DP weights and noisy metrics out.

Public names: :func:`validate_spec` and :func:`planned_cost` (pure rules, decided before any data is read),
:func:`train_dp` (the harness), :class:`TrainingSpec`, :class:`TrainingResult` and the errors.
"""

from privacy.training.errors import SecureModeUnavailable, SpecError, SpecOverGrant, TrainingFailed
from privacy.training.harness import TrainingResult, train_dp
from privacy.training.spec import ModelSpec, TrainingSpec, planned_cost, validate_spec

__all__ = [
    "ModelSpec",
    "SecureModeUnavailable",
    "SpecError",
    "SpecOverGrant",
    "TrainingFailed",
    "TrainingResult",
    "TrainingSpec",
    "planned_cost",
    "train_dp",
    "validate_spec",
]
