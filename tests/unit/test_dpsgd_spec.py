"""Rules of the DP-SGD training spec: strict parsing, allow-listed models, exact privacy cost."""

from __future__ import annotations

from typing import Any

import pytest

from common.numbers import InvalidNumber
from privacy.budget import PrivacyCost
from privacy.training import SpecError, SpecOverGrant, planned_cost, planned_privacy_cost, validate_spec

COLUMNS = {
    "pid": "unit",
    "a": "numeric",
    "b": "numeric",
    "town": "categorical",
    "y": "categorical",
    "v": "numeric",
}
GRANT = 5_000_000
POLICY_DELTA = 1_000_000  # 1e-6


def base(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "task": "classification",
        "features": ["a", "b"],
        "label": "y",
        "model": {"kind": "mlp", "hidden": [16, 8]},
        "epochs": 2,
        "batch_size": 64,
        "learning_rate": 0.5,
        "max_grad_norm": 1.0,
        "target_epsilon": 3,
    }
    spec.update(overrides)
    return spec


def check(spec: dict[str, Any], **kw: Any) -> Any:
    args: dict[str, Any] = {
        "dataset_columns": COLUMNS,
        "label_categories": ["no", "yes"],
        "grant_epsilon_micro": GRANT,
        "policy_delta_e12": POLICY_DELTA,
        "privacy_unit": "pid",
    }
    args.update(kw)
    return validate_spec(spec, **args)


def test_valid_spec_and_exact_planned_cost() -> None:
    spec = check(base(target_epsilon=1.234567, eval_epsilon_share=0.1))
    eps, delta = planned_cost(spec)
    assert (eps, delta) == (1_234_567, POLICY_DELTA)
    assert planned_privacy_cost(spec) == PrivacyCost(epsilon_micro=1_234_567, delta_e12=POLICY_DELTA)
    assert spec.eval_epsilon_micro == 123_456  # floor(1_234_567 * 0.1)
    assert spec.size_epsilon_micro == 12_345  # floor(1 %)
    assert spec.training_epsilon_micro == 1_234_567 - 123_456 - 12_345
    assert spec.training_epsilon_micro + spec.eval_epsilon_micro + spec.size_epsilon_micro == eps
    assert spec.model.hidden == (16, 8)
    assert spec.label_categories == ("no", "yes")
    assert spec.to_dict()["target_epsilon"] == "1.234567"


def test_no_metric_spends_everything_on_training() -> None:
    spec = check(base(eval_epsilon_share=0))
    assert spec.eval_epsilon_micro == 0
    assert spec.holdout_ppm == 0
    assert spec.size_epsilon_micro == 30_000
    assert spec.training_epsilon_micro == 2_970_000


def test_delta_defaults_to_policy_and_may_be_smaller() -> None:
    assert check(base()).delta_e12 == POLICY_DELTA
    assert check(base(delta=1e-7)).delta_e12 == 100_000


def test_target_over_grant_is_refused_with_numbers() -> None:
    with pytest.raises(SpecOverGrant) as info:
        check(base(target_epsilon=5.5))
    assert info.value.code == "budget_exceeded"
    assert "5.5" in info.value.detail
    assert "5 left" in info.value.detail


def test_delta_over_policy_is_refused() -> None:
    with pytest.raises(SpecOverGrant) as info:
        check(base(delta=1e-5))
    assert info.value.code == "budget_exceeded"


@pytest.mark.parametrize(
    "overrides",
    [{"max_grad_norm": "nan"}, {"learning_rate": "1e-99999999"}, {"target_epsilon": "1e-3000000"}],
)
def test_numbers_go_through_the_bounded_parser(overrides: dict[str, Any]) -> None:
    with pytest.raises(InvalidNumber) as info:
        check(base(**overrides))
    assert info.value.code == "invalid_number"
    assert f"spec.{next(iter(overrides))}" in info.value.detail


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"loss": "custom"}, "unknown spec keys ['loss']"),
        ({"code": "import os"}, "unknown spec keys"),
        ({"model": {"kind": "transformer"}}, "model kind"),
        ({"model": {"kind": "linear", "hidden": [3]}}, "linear model takes no other keys"),
        ({"model": {"kind": "mlp", "hidden": [8] * 5}}, "1..4 layer widths"),
        ({"model": {"kind": "mlp", "hidden": [1025]}}, "hidden width"),
        ({"model": {"kind": "mlp", "hidden": [0]}}, "hidden width"),
        ({"model": {"kind": "mlp", "hidden": [8], "activation": "tanh"}}, "exactly the keys"),
        ({"features": ["a", "zzz"]}, "'zzz' is not a column"),
        ({"features": ["town"]}, "must be a numeric column"),
        ({"features": ["pid"]}, "privacy unit"),
        ({"features": ["a", "a"]}, "repeat"),
        ({"features": []}, "non-empty list"),
        ({"label": "nope"}, "not a column"),
        ({"label": "pid"}, "privacy unit"),
        ({"features": ["a", "v"], "label": "a"}, "cannot also be a feature"),
        ({"task": "clustering"}, "task must be"),
        ({"epochs": 0}, "epochs must be an integer in 1..50"),
        ({"epochs": 51}, "epochs"),
        ({"epochs": True}, "epochs"),
        ({"batch_size": 7}, "batch_size"),
        ({"batch_size": 4097}, "batch_size"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"learning_rate": 11}, "learning_rate"),
        ({"max_grad_norm": -1}, "max_grad_norm"),
        ({"target_epsilon": 0}, "target_epsilon must be > 0"),
        ({"target_epsilon": 1.0000001}, "more precision"),
        ({"target_epsilon": 0.000001, "eval_epsilon_share": 0}, "leaves no ε for training"),
        ({"target_epsilon": 0.00001}, "metric needs"),
        ({"eval_epsilon_share": 0.6}, "between 0 and 0.5"),
        ({"holdout_fraction": 0.9}, "holdout_fraction"),
        ({"eval_epsilon_share": 0, "holdout_fraction": 0.2}, "holdout_fraction needs a metric"),
        ({"mse_clip": 4.0}, "regression only"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"delta": 0}, "delta must be > 0"),
    ],
)
def test_bad_specs_are_refused_with_clear_messages(overrides: dict[str, Any], fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        check(base(**overrides))
    assert info.value.code == "invalid_training_spec"
    assert fragment in info.value.detail


def test_missing_keys_and_non_objects_are_refused() -> None:
    spec = base()
    del spec["label"]
    with pytest.raises(SpecError, match="missing spec keys"):
        check(spec)
    with pytest.raises(SpecError, match="JSON object"):
        check(["not", "a", "dict"])  # type: ignore[arg-type]


def test_classification_needs_declared_categories() -> None:
    with pytest.raises(SpecError, match="declared categories"):
        check(base(), label_categories=None)
    with pytest.raises(SpecError, match="distinct declared categories"):
        check(base(), label_categories=["only"])


def test_boolean_categories_match_the_text_of_a_boolean_column() -> None:
    assert check(base(), label_categories=[False, True]).label_categories == ("false", "true")


def test_regression_rules() -> None:
    reg = base(task="regression", label="v", model={"kind": "linear"})
    with pytest.raises(SpecError, match="needs mse_clip"):
        check(reg)
    spec = check({**reg, "mse_clip": 4})
    assert spec.mse_clip == 4.0
    assert spec.n_outputs == 1
    with pytest.raises(SpecError, match="numeric column"):
        check({**reg, "label": "town", "mse_clip": 4})
