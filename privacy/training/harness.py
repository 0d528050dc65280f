"""The trusted DP-SGD harness: one validated spec + one protected frame -> weights and DP metrics only.

Order of work (``train_dp``):

1. preflight, no data read: the CSPRNG works (secure mode, the default), the device exists, columns
   present, public bounds sane;
2. ``prepare``: drop rows whose label is not a declared category (or not finite), keep one random row per
   privacy unit (secure RNG), split the holdout per unit, clamp and scale features with *public* bounds
   only (no data-dependent statistics), non-finite values become the bound's midpoint (0 after scaling);
3. ``size``: a DP count of the training rows (OpenDP, the spec's size share) sets the steps per epoch,
   ``max(1, round(noisy_n / batch_size))``, hence Opacus's sampling rate, step count and noise multiplier:
   none of them is a function of the private row count;
4. ``fit``: DP-SGD through Opacus (:mod:`privacy.training.dpsgd`) at the spec's training ε share, noise and
   Poisson masks from the broker's AES-CTR CSPRNG (:mod:`privacy.training.secure_random`);
5. ``accounting``: the accountant's ε, rounded up to micro-ε, must be ≤ the planned share (fail closed);
6. ``metric``: a DP metric on the holdout through OpenDP (:mod:`privacy.training.metrics`);
7. ``export``: weights as safetensors bytes (tensors only, no pickle).

Anything failing after step 1 becomes :class:`TrainingFailed` naming the stage and exception class only.
Nothing data-dependent leaves except the DP weights and the noisy metrics: no loss curve, no raw accuracy.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import polars as pl
import torch
from safetensors.torch import save as save_safetensors
from torch import nn

from privacy.training.dpsgd import (
    GRAD_SAMPLE_MODE,
    FitOutcome,
    build_model,
    fit_private,
    resolve_device,
    secure_mode_available,
)
from privacy.training.errors import SecureModeUnavailable, SpecError, TrainingFailed
from privacy.training.metrics import noisy_accuracy, noisy_count, noisy_mse
from privacy.training.sampling import RandomKeys, one_row_per_unit, split_holdout
from privacy.training.spec import DELTA_UNITS, EPSILON_UNITS, TrainingSpec

Bounds = Mapping[str, tuple[float, float]]
T = TypeVar("T")
_LABEL = "__sbx_label"


@dataclass(frozen=True, slots=True)
class TrainingResult:
    """What leaves the harness: DP weights, the spec, the privacy spent and noisy metrics only.

    ``epsilon_spent_micro`` is the accountant's training ε rounded up plus the noisy size's and the metric's
    ε: always ≤ the planned (reserved) cost; the reservation, not this number, is what is charged.
    ``steps`` and ``noise_multiplier`` derive from DP values only (see ``train_dp``).
    """

    weights: bytes = field(repr=False)
    spec: TrainingSpec
    epsilon_spent_micro: int
    delta_e12: int
    dp_metrics: dict[str, float]
    steps: int
    noise_multiplier: float
    grad_sample_mode: str = GRAD_SAMPLE_MODE

    @property
    def weights_sha256(self) -> str:
        """Hex SHA-256 of the safetensors bytes (to name and verify the stored artefact)."""
        return hashlib.sha256(self.weights).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe summary; weights appear as format, size and digest (store the bytes separately)."""
        return {
            "weights": {"format": "safetensors", "bytes": len(self.weights), "sha256": self.weights_sha256},
            "spec": self.spec.to_dict(),
            "epsilon_spent_micro": self.epsilon_spent_micro,
            "delta_e12": self.delta_e12,
            "dp_metrics": dict(self.dp_metrics),
            "steps": self.steps,
            "noise_multiplier": self.noise_multiplier,
            "grad_sample_mode": self.grad_sample_mode,
        }


@dataclass(frozen=True, slots=True)
class _Prepared:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_hold: torch.Tensor
    y_hold: torch.Tensor


def train_dp(
    spec: TrainingSpec,
    frame: pl.DataFrame,
    *,
    privacy_unit: str,
    secure_mode: bool = True,
    seed: int | None = None,
    feature_bounds: Bounds | None = None,
    device: str = "auto",
) -> TrainingResult:
    """Train ``spec`` on ``frame`` with DP-SGD and return only DP outputs (see the module docstring).

    ``privacy_unit`` names the person/household column; ``feature_bounds`` are the policy's public bounds
    per feature (features without bounds are used unscaled). ``secure_mode=True`` (the default, and what
    production requires) draws the DP-SGD noise, the Poisson masks and the unit sampling from CSPRNGs keyed
    from the OS and takes no seed; ``secure_mode=False`` with a ``seed`` is for reproducible tests only.
    ``device`` is ``auto`` (a GPU when torch sees one), ``cpu`` or ``cuda[:N]``.
    """
    bounds = _preflight(spec, frame, privacy_unit, secure_mode, seed, feature_bounds)
    resolve_device(device)  # configuration, checked before any data is read
    with _rng_scope(seed):
        prepared = _stage("prepare", lambda: _prepare(spec, frame, privacy_unit, bounds, RandomKeys(seed)))
        net = _stage("build", lambda: build_model(spec.model, len(spec.features), spec.n_outputs))
        steps_per_epoch = _stage("size", lambda: _steps_per_epoch(spec, prepared))
        outcome = _stage("fit", lambda: _fit(spec, net, prepared, secure_mode, seed, steps_per_epoch, device))
        spent_train = _stage("accounting", lambda: _check_accounting(spec, outcome.epsilon))
        metrics = _stage("metric", lambda: _metric(spec, net, prepared))
        weights = _stage("export", lambda: _export(net))
    return TrainingResult(
        weights=weights,
        spec=spec,
        epsilon_spent_micro=spent_train
        + spec.size_epsilon_micro
        + (spec.eval_epsilon_micro if metrics else 0),
        delta_e12=spec.delta_e12,
        dp_metrics=metrics,
        steps=outcome.steps,
        noise_multiplier=outcome.noise_multiplier,
    )


def _preflight(
    spec: TrainingSpec,
    frame: pl.DataFrame,
    unit: str,
    secure_mode: bool,
    seed: int | None,
    feature_bounds: Bounds | None,
) -> dict[str, tuple[float, float]]:
    """Checks on public facts only (schema, configuration), before any value is read."""
    if secure_mode and seed is not None:
        raise ValueError("a seed is for tests only: secure_mode=True draws from the OS CSPRNG")
    if secure_mode and not secure_mode_available():
        raise SecureModeUnavailable(
            "secure-mode DP-SGD needs the broker's AES-CTR generator (the randomgen package), which does "
            "not work here; no data was read and no budget should be charged"
        )
    if unit == spec.label or unit in spec.features:
        raise SpecError(f"the privacy unit column {unit!r} cannot be a feature or the label")
    names = frame.columns
    for column in (unit, spec.label, *spec.features):
        if column not in names:
            raise SpecError(f"column {column!r} is not in the dataset")
    bounds: dict[str, tuple[float, float]] = {}
    for name, (lo, hi) in (feature_bounds or {}).items():
        if name in spec.features:
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise SpecError(f"the public bounds of {name!r} must be finite with lo < hi")
            bounds[name] = (float(lo), float(hi))
    return bounds


def _stage(name: str, work: Callable[[], T]) -> T:
    """Run one data-touching stage; any failure becomes a data-free :class:`TrainingFailed`."""
    try:
        return work()
    except TrainingFailed:
        raise
    except Exception as exc:
        # ``from None`` on purpose: a third-party message may quote a data value into logs.
        raise TrainingFailed(name, type(exc).__name__) from None


@contextmanager
def _rng_scope(seed: int | None) -> Iterator[None]:
    """Seed torch's global RNG for the run (tests) without leaking that state to the caller."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        yield


def _prepare(
    spec: TrainingSpec,
    frame: pl.DataFrame,
    unit: str,
    bounds: Mapping[str, tuple[float, float]],
    keys: RandomKeys,
) -> _Prepared:
    labelled = frame.select(unit, *spec.features, _label_expr(spec)).filter(pl.col(_LABEL).is_not_null())
    bounded = one_row_per_unit(labelled, unit, keys)
    train, hold = split_holdout(bounded, spec.holdout_ppm, keys)
    return _Prepared(*_tensors(spec, train, bounds), *_tensors(spec, hold, bounds))


def _label_expr(spec: TrainingSpec) -> pl.Expr:
    """Class index of a declared category (else null), or a finite float label (else null)."""
    if spec.task == "classification":
        return (
            pl.col(spec.label)
            .cast(pl.String, strict=False)
            .replace_strict(
                list(spec.label_categories),
                list(range(len(spec.label_categories))),
                default=None,
                return_dtype=pl.Int64,
            )
            .alias(_LABEL)
        )
    value = pl.col(spec.label).cast(pl.Float64, strict=False)
    return pl.when(value.is_finite()).then(value).otherwise(None).alias(_LABEL)


def _feature_expr(name: str, bounds: Mapping[str, tuple[float, float]]) -> pl.Expr:
    """Clamp to the public bounds and scale to [-1, 1]; non-finite or null -> 0 (the midpoint)."""
    value = pl.col(name).cast(pl.Float64, strict=False)
    value = pl.when(value.is_finite()).then(value).otherwise(None)
    if name in bounds:
        lo, hi = bounds[name]
        mid, half = (lo + hi) / 2.0, (hi - lo) / 2.0
        value = (value.clip(lo, hi) - mid) / half
    return value.fill_null(0.0).alias(name)


def _tensors(
    spec: TrainingSpec, part: pl.DataFrame, bounds: Mapping[str, tuple[float, float]]
) -> tuple[torch.Tensor, torch.Tensor]:
    features = part.select(_feature_expr(n, bounds) for n in spec.features).to_numpy()
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    labels = part.get_column(_LABEL).to_numpy()
    if spec.task == "classification":
        return x, torch.from_numpy(labels.astype(np.int64))
    return x, torch.from_numpy(labels.astype(np.float32).reshape(-1, 1))


def _steps_per_epoch(spec: TrainingSpec, data: _Prepared) -> int:
    noisy_n = noisy_count(int(data.x_train.shape[0]), spec.size_epsilon_micro)
    return max(1, (noisy_n + spec.batch_size // 2) // spec.batch_size)


def _fit(
    spec: TrainingSpec,
    net: nn.Module,
    data: _Prepared,
    secure_mode: bool,
    seed: int | None,
    steps_per_epoch: int,
    device: str,
) -> FitOutcome:
    return fit_private(
        net,
        data.x_train,
        data.y_train,
        task=spec.task,
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        learning_rate=spec.learning_rate,
        optimizer=spec.optimizer,
        max_grad_norm=spec.max_grad_norm,
        target_epsilon=_float_at_most(Fraction(spec.training_epsilon_micro, EPSILON_UNITS)),
        delta=_float_at_most(Fraction(spec.delta_e12, DELTA_UNITS)),
        secure_mode=secure_mode,
        steps_per_epoch=steps_per_epoch,
        noise_generator=None if seed is None else torch.Generator().manual_seed(seed),
        device=device,
    )


def _check_accounting(spec: TrainingSpec, epsilon: float) -> int:
    """The accountant's ε in micro-ε, rounded up; above the planned share -> fail closed."""
    spent = math.ceil(Fraction(epsilon) * EPSILON_UNITS)
    if spent > spec.training_epsilon_micro:
        raise TrainingFailed("accounting", "accountant epsilon above the planned share; weights discarded")
    return spent


def _metric(spec: TrainingSpec, net: nn.Module, data: _Prepared) -> dict[str, float]:
    if spec.eval_epsilon_micro == 0:
        return {}
    net.eval()
    with torch.no_grad():
        out = net(data.x_hold)
    if spec.task == "classification":
        correct: npt.NDArray[np.bool_] = (out.argmax(dim=1) == data.y_hold).numpy()
        return noisy_accuracy(correct, spec.eval_epsilon_micro)
    errors = ((out - data.y_hold) ** 2).reshape(-1).numpy().astype(np.float64)
    assert spec.mse_clip is not None  # validate_spec requires it when a regression metric is asked
    return noisy_mse(errors, spec.mse_clip, spec.eval_epsilon_micro)


def _export(net: nn.Module) -> bytes:
    tensors = {name: t.detach().contiguous().clone() for name, t in net.state_dict().items()}
    return bytes(save_safetensors(tensors, metadata={"format": "pt"}))


def _float_at_most(exact: Fraction) -> float:
    """The largest float that is not above ``exact`` (targets handed to float APIs never round up)."""
    value = float(exact)
    return math.nextafter(value, 0.0) if Fraction(value) > exact else value
