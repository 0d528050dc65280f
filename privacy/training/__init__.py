"""DP-SGD trusted training harness: a declarative spec in, DP weights and noisy metrics out.

Public names here are the pure rules, cheap to import (no torch, Opacus or data): :func:`validate_spec`,
:func:`planned_cost` (and :func:`planned_privacy_cost`, a ``privacy.budget.PrivacyCost``), :class:`TrainingSpec`, :class:`ModelSpec` and the errors. The harness itself —
``privacy.training.harness.train_dp`` and ``TrainingResult`` — imports torch and Opacus: import it from
``privacy.training.harness`` where training runs (the Ray job), not in the API process.
"""

from privacy.training.errors import SecureModeUnavailable, SpecError, SpecOverGrant, TrainingFailed
from privacy.training.spec import ModelSpec, TrainingSpec, planned_cost, planned_privacy_cost, validate_spec

__all__ = [
    "ModelSpec",
    "SecureModeUnavailable",
    "SpecError",
    "SpecOverGrant",
    "TrainingFailed",
    "TrainingSpec",
    "planned_cost",
    "planned_privacy_cost",
    "validate_spec",
]
