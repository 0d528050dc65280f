"""The declarative DP-SGD training spec an SME sends, and its rules (pure: no data, no torch).

An SME never sends code. It sends a JSON object::

    {
      "task": "classification",            # or "regression"
      "features": ["age", "income"],       # numeric columns of the dataset
      "label": "defaulted",                # categorical (classification) or numeric (regression) column
      "model": {"kind": "mlp", "hidden": [64, 32]},   # or {"kind": "linear"}
      "epochs": 3, "batch_size": 256,      # batch_size is the *expected* (Poisson) batch size
      "learning_rate": 0.5, "max_grad_norm": 1.0,
      "optimizer": "sgd",                  # optional: "sgd" (default) or "adam"
      "target_epsilon": 3,                 # total ε of the run, metric included; ≤ the SME's grant
      "delta": 1e-6,                       # optional: defaults to the dataset policy's δ, never above it
      "holdout_fraction": 0.2,             # optional: share of privacy units held out for the DP metric
      "eval_epsilon_share": 0.1,           # optional: share of target ε spent on the DP metric (0 = none)
      "mse_clip": 4.0                      # regression with a metric only: squared errors clipped to [0, c]
    }

Privacy cost rule (the reservation is made from :func:`planned_cost` before any data is read):

* ``target_epsilon`` is the run's total ε, in micro-ε exactly (at most 6 decimals; more is refused).
* The DP metric gets ``floor(target_micro * eval_epsilon_share)`` micro-ε; a noisy count of the training
  units gets ``max(1, floor(target_micro / 100))`` (1 %: it sets the sampling rate and step count from a DP
  size, never from the private row count); DP-SGD gets the rest, so ``training + size + metric == reserved``
  exactly. All compose sequentially (we do not claim the parallel composition that the disjoint holdout
  would allow: conservative).
* δ belongs to DP-SGD only (the metric is pure ε-DP); it is the spec's δ, at most the policy's δ.
* Opacus's accountant ε for the run must come out ≤ the training share; the harness fails closed otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any, Literal

from common.numbers import parse_exact
from privacy.budget import PrivacyCost
from privacy.training.errors import SpecError, SpecOverGrant

EPSILON_UNITS = 10**6  # micro-ε
DELTA_UNITS = 10**12  # δ in 1e-12
PPM = 10**6  # fractions (holdout, eval share) in parts per million

MAX_HIDDEN_LAYERS = 4
MAX_WIDTH = 1024
MAX_FEATURES = 1000
MAX_CATEGORIES = 1000
EPOCHS_RANGE = (1, 50)
BATCH_RANGE = (8, 4096)
MAX_LEARNING_RATE = Fraction(10)
MAX_GRAD_NORM = Fraction(10**6)
HOLDOUT_RANGE_PPM = (50_000, 500_000)  # 5 % .. 50 % when a metric is asked
MAX_EVAL_SHARE_PPM = 500_000  # at most half the ε on the metric
DEFAULT_HOLDOUT_PPM = 200_000
DEFAULT_EVAL_SHARE_PPM = 100_000
SIZE_SHARE_PPM = 10_000  # 1 % of target ε for the noisy training-set size

NUMERIC_KIND = "numeric"
CATEGORICAL_KIND = "categorical"
UNIT_KIND = "unit"

Task = Literal["classification", "regression"]
ModelKind = Literal["linear", "mlp"]
OptimizerName = Literal["sgd", "adam"]

_REQUIRED = frozenset(
    {
        "task",
        "features",
        "label",
        "model",
        "epochs",
        "batch_size",
        "learning_rate",
        "max_grad_norm",
        "target_epsilon",
    }
)
_OPTIONAL = frozenset({"delta", "holdout_fraction", "eval_epsilon_share", "mse_clip", "optimizer"})


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """An allow-listed architecture: ``linear`` (logistic/linear regression) or an ReLU ``mlp``."""

    kind: ModelKind
    hidden: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The JSON form the SME sent (normalised)."""
        if self.kind == "linear":
            return {"kind": "linear"}
        return {"kind": "mlp", "hidden": list(self.hidden)}


@dataclass(frozen=True, slots=True)
class TrainingSpec:
    """A validated training spec; privacy amounts are exact integers (micro-ε, δ·10¹², ppm)."""

    task: Task
    features: tuple[str, ...]
    label: str
    model: ModelSpec
    epochs: int
    batch_size: int
    learning_rate: float
    max_grad_norm: float
    optimizer: OptimizerName
    epsilon_micro: int
    eval_epsilon_micro: int
    size_epsilon_micro: int
    delta_e12: int
    holdout_ppm: int
    label_categories: tuple[str, ...] = ()
    mse_clip: float | None = None

    @property
    def training_epsilon_micro(self) -> int:
        """The ε share DP-SGD may spend (the total minus the metric's and the noisy size's shares)."""
        return self.epsilon_micro - self.eval_epsilon_micro - self.size_epsilon_micro

    @property
    def n_outputs(self) -> int:
        """Width of the model's output layer: one logit per category, or one value."""
        return len(self.label_categories) if self.task == "classification" else 1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe echo of the spec (exact amounts as integers beside the readable ones)."""
        out: dict[str, Any] = {
            "task": self.task,
            "features": list(self.features),
            "label": self.label,
            "model": self.model.to_dict(),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "max_grad_norm": self.max_grad_norm,
            "optimizer": self.optimizer,
            "target_epsilon": _decimal_text(self.epsilon_micro, EPSILON_UNITS),
            "epsilon_micro": self.epsilon_micro,
            "eval_epsilon_micro": self.eval_epsilon_micro,
            "size_epsilon_micro": self.size_epsilon_micro,
            "delta_e12": self.delta_e12,
            "holdout_fraction": _decimal_text(self.holdout_ppm, PPM),
        }
        if self.task == "classification":
            out["label_categories"] = list(self.label_categories)
        if self.mse_clip is not None:
            out["mse_clip"] = self.mse_clip
        return out


def planned_cost(spec: TrainingSpec) -> tuple[int, int]:
    """The privacy cost to reserve before the run, as ``(epsilon_micro, delta_e12)``.

    Equals training ε + metric ε exactly; the run's accountant ε is checked against it (fail closed).
    """
    return spec.epsilon_micro, spec.delta_e12


def planned_privacy_cost(spec: TrainingSpec) -> PrivacyCost:
    """:func:`planned_cost` as the shared :class:`privacy.budget.PrivacyCost`, ready to reserve."""
    epsilon_micro, delta_e12 = planned_cost(spec)
    return PrivacyCost(epsilon_micro=epsilon_micro, delta_e12=delta_e12)


def validate_spec(
    spec_dict: Mapping[str, Any],
    *,
    dataset_columns: Mapping[str, str],
    label_categories: Sequence[object] | None,
    grant_epsilon_micro: int,
    policy_delta_e12: int,
    privacy_unit: str | None = None,
) -> TrainingSpec:
    """Parse and check an SME's spec against public metadata and the grant; never reads data.

    ``dataset_columns`` maps column name to kind (``numeric``/``categorical``/``unit``), ``label_categories``
    are the label's declared categories (classification), ``grant_epsilon_micro`` is what the SME may still
    spend and ``policy_delta_e12`` the dataset's δ. Raises :class:`SpecError` (``invalid_training_spec``) or
    :class:`SpecOverGrant` (``budget_exceeded``); every message depends on the spec and metadata only.
    """
    if not isinstance(spec_dict, Mapping):
        raise SpecError("the training spec must be a JSON object")
    _check_keys(spec_dict)
    task = _task(spec_dict["task"])
    features = _features(spec_dict["features"], dataset_columns, privacy_unit)
    label = _label(spec_dict["label"], task, features, dataset_columns, privacy_unit)
    categories = _categories(task, label_categories)
    eps_micro = _epsilon_micro(spec_dict["target_epsilon"])
    share_ppm = _ppm(
        spec_dict.get("eval_epsilon_share", Fraction(DEFAULT_EVAL_SHARE_PPM, PPM)), "eval_epsilon_share"
    )
    if share_ppm > MAX_EVAL_SHARE_PPM:
        raise SpecError("eval_epsilon_share must be between 0 and 0.5")
    eval_micro = eps_micro * share_ppm // PPM
    size_micro = max(1, eps_micro * SIZE_SHARE_PPM // PPM)
    _check_split(eps_micro, eval_micro, size_micro, share_ppm)
    spec = TrainingSpec(
        task=task,
        features=features,
        label=label,
        model=_model(spec_dict["model"]),
        epochs=_int_in(spec_dict["epochs"], "epochs", EPOCHS_RANGE),
        batch_size=_int_in(spec_dict["batch_size"], "batch_size", BATCH_RANGE),
        learning_rate=_positive(spec_dict["learning_rate"], "learning_rate", MAX_LEARNING_RATE),
        max_grad_norm=_positive(spec_dict["max_grad_norm"], "max_grad_norm", MAX_GRAD_NORM),
        optimizer=_optimizer(spec_dict.get("optimizer", "sgd")),
        epsilon_micro=eps_micro,
        eval_epsilon_micro=eval_micro,
        size_epsilon_micro=size_micro,
        delta_e12=_delta_e12(spec_dict.get("delta"), policy_delta_e12),
        holdout_ppm=_holdout_ppm(spec_dict.get("holdout_fraction"), eval_micro),
        label_categories=categories,
        mse_clip=_mse_clip(spec_dict.get("mse_clip"), task, eval_micro),
    )
    _check_grant(spec, grant_epsilon_micro)
    return spec


def _check_keys(spec_dict: Mapping[str, Any]) -> None:
    keys = set(spec_dict)
    unknown = sorted(str(k) for k in keys - _REQUIRED - _OPTIONAL)
    if unknown:
        raise SpecError(f"unknown spec keys {unknown}; allowed: {sorted(_REQUIRED | _OPTIONAL)}")
    missing = sorted(_REQUIRED - keys)
    if missing:
        raise SpecError(f"missing spec keys {missing}")


def _task(value: object) -> Task:
    if value == "classification":
        return "classification"
    if value == "regression":
        return "regression"
    raise SpecError("task must be 'classification' or 'regression'")


def _features(value: object, columns: Mapping[str, str], unit: str | None) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise SpecError("features must be a non-empty list of column names")
    if len(value) > MAX_FEATURES:
        raise SpecError(f"at most {MAX_FEATURES} features are allowed, got {len(value)}")
    if len(set(value)) != len(value):
        raise SpecError("features must not repeat a column")
    for name in value:
        if name == unit or columns.get(name) == UNIT_KIND:
            raise SpecError(f"the privacy unit column {name!r} cannot be a feature")
        if name not in columns:
            raise SpecError(f"feature {name!r} is not a column of the dataset")
        if columns[name] != NUMERIC_KIND:
            raise SpecError(f"feature {name!r} must be a numeric column (it is {columns[name]})")
    return tuple(value)


def _label(
    value: object, task: Task, features: tuple[str, ...], columns: Mapping[str, str], unit: str | None
) -> str:
    if not isinstance(value, str) or value not in columns:
        raise SpecError(f"label {value!r} is not a column of the dataset")
    if value == unit or columns[value] == UNIT_KIND:
        raise SpecError("the privacy unit column cannot be the label")
    if value in features:
        raise SpecError(f"label {value!r} cannot also be a feature")
    if task == "regression" and columns[value] != NUMERIC_KIND:
        raise SpecError(f"a regression label must be a numeric column ({value!r} is {columns[value]})")
    return value


def _categories(task: Task, label_categories: Sequence[object] | None) -> tuple[str, ...]:
    if task == "regression":
        return ()
    if label_categories is None:
        raise SpecError("classification needs the label's declared categories")
    cats = tuple(_category_text(c) for c in label_categories)
    if not 2 <= len(cats) <= MAX_CATEGORIES or len(set(cats)) != len(cats):
        raise SpecError(f"the label needs 2..{MAX_CATEGORIES} distinct declared categories")
    return cats


def _category_text(value: object) -> str:
    """A category as the harness compares it: the label column cast to text (booleans as true/false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _model(value: object) -> ModelSpec:
    if not isinstance(value, Mapping) or "kind" not in value:
        raise SpecError("model must be an object with a 'kind': 'linear' or 'mlp'")
    kind = value["kind"]
    if kind == "linear":
        if set(value) != {"kind"}:
            raise SpecError("a linear model takes no other keys")
        return ModelSpec("linear")
    if kind != "mlp":
        raise SpecError("model kind must be 'linear' or 'mlp'")
    if set(value) != {"kind", "hidden"}:
        raise SpecError("an mlp model takes exactly the keys 'kind' and 'hidden'")
    hidden = value["hidden"]
    if not isinstance(hidden, list) or not 1 <= len(hidden) <= MAX_HIDDEN_LAYERS:
        raise SpecError(f"mlp 'hidden' must list 1..{MAX_HIDDEN_LAYERS} layer widths")
    widths = tuple(_int_in(w, "hidden width", (1, MAX_WIDTH)) for w in hidden)
    return ModelSpec("mlp", widths)


def _optimizer(value: object) -> OptimizerName:
    if value == "sgd":
        return "sgd"
    if value == "adam":
        return "adam"
    raise SpecError("optimizer must be 'sgd' or 'adam'")


def _exact(value: object, name: str) -> Fraction:
    """An exact number from an int, a float (its shortest repr) or decimal text, through the one bounded
    parser (``common.numbers``: its form and exponent are checked before any conversion)."""
    return parse_exact(value, f"spec.{name}", ratios=False)


def _int_in(value: object, name: str, bounds: tuple[int, int]) -> int:
    lo, hi = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise SpecError(f"{name} must be an integer in {lo}..{hi}")
    return value


def _positive(value: object, name: str, upper: Fraction) -> float:
    exact = _exact(value, name)
    if not 0 < exact <= upper:
        raise SpecError(f"{name} must be > 0 and <= {upper}")
    return float(exact)


def _units(exact: Fraction, units: int, name: str) -> int:
    scaled = exact * units
    if scaled.denominator != 1:
        raise SpecError(f"{name} has more precision than its unit 1/{units}; round it")
    return int(scaled)


def _epsilon_micro(value: object) -> int:
    eps = _exact(value, "target_epsilon")
    if eps <= 0:
        raise SpecError("target_epsilon must be > 0")
    return _units(eps, EPSILON_UNITS, "target_epsilon")


def _ppm(value: object, name: str) -> int:
    frac = _exact(value, name)
    if not 0 <= frac <= 1:
        raise SpecError(f"{name} must be between 0 and 1")
    return _units(frac, PPM, name)


def _check_split(eps_micro: int, eval_micro: int, size_micro: int, share_ppm: int) -> None:
    if share_ppm > 0 and eval_micro < 2:
        raise SpecError("eval_epsilon_share is too small for target_epsilon: the metric needs >= 0.000002 ε")
    if eps_micro - eval_micro - size_micro <= 0:
        raise SpecError("target_epsilon leaves no ε for training")


def _delta_e12(value: object, policy_delta_e12: int) -> int:
    if value is None:
        delta = policy_delta_e12
    else:
        exact = _exact(value, "delta")
        if not 0 < exact < 1:
            raise SpecError("delta must be > 0 and < 1")
        delta = _units(exact, DELTA_UNITS, "delta")
    if delta <= 0:
        raise SpecError("DP-SGD needs a delta > 0, and the dataset policy's delta is 0")
    if delta > policy_delta_e12:
        raise SpecOverGrant(
            f"delta {_decimal_text(delta, DELTA_UNITS)} is above the dataset policy's delta "
            f"{_decimal_text(policy_delta_e12, DELTA_UNITS)}; ask for at most that"
        )
    return delta


def _holdout_ppm(value: object, eval_micro: int) -> int:
    if eval_micro == 0:
        if value not in (None, 0):
            raise SpecError("holdout_fraction needs a metric: set eval_epsilon_share > 0 or drop the holdout")
        return 0
    ppm = DEFAULT_HOLDOUT_PPM if value is None else _ppm(value, "holdout_fraction")
    lo, hi = HOLDOUT_RANGE_PPM
    if not lo <= ppm <= hi:
        raise SpecError("holdout_fraction must be between 0.05 and 0.5")
    return ppm


def _mse_clip(value: object, task: Task, eval_micro: int) -> float | None:
    if task == "classification":
        if value is not None:
            raise SpecError("mse_clip applies to regression only")
        return None
    if eval_micro == 0:
        return None if value is None else _positive(value, "mse_clip", Fraction(10**12))
    if value is None:
        raise SpecError("a regression metric needs mse_clip (squared errors are clipped to [0, mse_clip])")
    return _positive(value, "mse_clip", Fraction(10**12))


def _check_grant(spec: TrainingSpec, grant_epsilon_micro: int) -> None:
    if spec.epsilon_micro > grant_epsilon_micro:
        raise SpecOverGrant(
            f"target_epsilon {_decimal_text(spec.epsilon_micro, EPSILON_UNITS)} is above the "
            f"{_decimal_text(max(grant_epsilon_micro, 0), EPSILON_UNITS)} left on your grant; "
            "lower target_epsilon or ask the custodian for more"
        )


def _decimal_text(amount: int, units: int) -> str:
    """An exact decimal string for ``amount / units`` (units a power of ten)."""
    places = round(math.log10(units))
    return format(Decimal(amount).scaleb(-places).normalize(), "f")
