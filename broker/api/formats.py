"""The documented JSON formats of a dataset policy and a training spec (issue 17.5): their API shape.

The pure cores stay the source of the rules — :meth:`datasets.policy.DatasetPolicy.from_dict` and
:func:`privacy.training.spec.validate_spec` parse and check every value, with their own error codes
(``invalid_policy``, ``invalid_training_spec``). The models here describe the shape for readers and tools:
their JSON Schema is published as OpenAPI components (``DatasetPolicy``, ``TrainingSpec``, referenced by
the routes that take them) and in ``docs/schemas/``, with examples that the tests feed through the cores.

One convenience is added at the edge: a budget may give ε and δ as decimal strings (``"epsilon": "10"``,
``"delta": "1e-5"``) as the CLI does; :func:`normalise_policy` turns them into the exact integers the core
stores (micro-ε, 10⁻¹² δ) with the project's bounded parser, and refuses a budget that gives both forms.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from common.errors import InvalidInput
from common.numbers import parse_exact

Number = Annotated[str | int | float, Field(description="a decimal number; a string keeps it exact")]


class _Shape(BaseModel):
    """A documented object: no other keys (the cores refuse a misspelt key too)."""

    model_config = ConfigDict(extra="forbid")


class UnitColumn(_Shape):
    """The column naming the privacy unit (a person, a household): one unit's rows are bounded together."""

    name: str
    kind: Literal["unit"]


class NumericColumn(_Shape):
    """A numeric column: values clamped to the public bounds ``[lo, hi]`` and kept at ``decimals`` places."""

    name: str
    kind: Literal["numeric"]
    lo: Number
    hi: Number
    decimals: int = Field(default=0, ge=0, le=12)


class CategoricalColumn(_Shape):
    """A categorical column with its public set of categories (any other value counts as ``__other__``)."""

    name: str
    kind: Literal["categorical"]
    categories: list[str | int | bool] = Field(min_length=1)


Column = Annotated[UnitColumn | NumericColumn | CategoricalColumn, Field(discriminator="kind")]


class Budget(_Shape):
    """A privacy budget: ε as integer micro-ε (``epsilon_micro``) or a decimal (``epsilon``), δ as integer
    10⁻¹² units (``delta_e12``) or a decimal (``delta``); one form of each."""

    epsilon_micro: int | None = Field(default=None, ge=0)
    epsilon: str | None = Field(default=None, examples=["10", "0.5"])
    delta_e12: int | None = Field(default=None, ge=0)
    delta: str | None = Field(default=None, examples=["1e-5", "0.00001"])


_POLICY_EXAMPLE: dict[str, Any] = {
    "privacy_unit": "household_id",
    "max_rows_per_unit": 2,
    "columns": [
        {"name": "household_id", "kind": "unit"},
        {"name": "district", "kind": "categorical", "categories": ["Nord", "Sud", "Ost", "West"]},
        {"name": "kwh", "kind": "numeric", "lo": "0", "hi": "2000", "decimals": 1},
    ],
    "total_budget": {"epsilon": "10", "delta": "1e-5"},
    "sme_cap": {"epsilon": "5", "delta": "5e-6"},
}


class DatasetPolicy(_Shape):
    """A custodian's policy for a dataset: the privacy unit, how many rows one unit may contribute, every
    column with its public bounds or categories, and the ε/δ budgets (all SMEs together; per SME)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_POLICY_EXAMPLE]})

    privacy_unit: str = Field(description="the name of the unit column")
    max_rows_per_unit: int = Field(ge=1, description="rows kept per unit (the rest are dropped)")
    columns: list[Column] = Field(min_length=1)
    total_budget: Budget
    sme_cap: Budget


_SPEC_EXAMPLE: dict[str, Any] = {
    "task": "classification",
    "features": ["age", "income"],
    "label": "churned",
    "model": {"kind": "mlp", "hidden": [32, 16]},
    "epochs": 3,
    "batch_size": 256,
    "learning_rate": 0.5,
    "max_grad_norm": 1.0,
    "target_epsilon": "3",
    "delta": "1e-5",
    "holdout_fraction": "0.2",
    "eval_epsilon_share": "0.1",
    "optimizer": "sgd",
}


class LinearModel(_Shape):
    """Logistic (classification) or linear (regression) regression."""

    kind: Literal["linear"]


class MlpModel(_Shape):
    """A ReLU multi-layer perceptron with up to 4 hidden layers of up to 1024 units."""

    kind: Literal["mlp"]
    hidden: list[Annotated[int, Field(ge=1, le=1024)]] = Field(min_length=1, max_length=4)


class TrainingSpec(_Shape):
    """A declarative DP-SGD training run (never code): what to learn, the allow-listed model, and the
    privacy target; ``docs/training.md`` explains each field and how ε is split."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_SPEC_EXAMPLE]})

    task: Literal["classification", "regression"]
    features: list[str] = Field(min_length=1, max_length=1000)
    label: str
    model: Annotated[LinearModel | MlpModel, Field(discriminator="kind")]
    epochs: int = Field(ge=1, le=50)
    batch_size: int = Field(ge=8, le=4096)
    learning_rate: Number = Field(description="positive, at most 10")
    max_grad_norm: Number = Field(description="the per-example clipping norm, positive")
    target_epsilon: Number = Field(description="the whole run's ε (training, the metric and the noisy size)")
    delta: Number | None = Field(default=None, description="the run's δ (default: the dataset policy's)")
    holdout_fraction: Number | None = Field(default=None, description="0.05 … 0.5 (default 0.2)")
    eval_epsilon_share: Number | None = Field(default=None, description="0 … 0.5 of ε for the metric")
    mse_clip: Number | None = Field(default=None, description="regression: clip of the squared error")
    optimizer: Literal["sgd", "adam"] = "sgd"


FORMATS: dict[str, type[BaseModel]] = {"DatasetPolicy": DatasetPolicy, "TrainingSpec": TrainingSpec}


def normalise_policy(policy: Mapping[str, Any]) -> dict[str, Any]:
    """The policy with decimal ε/δ budgets as the core's integers; everything else passed on untouched
    (the core checks it)."""
    out = dict(policy)
    for key in ("total_budget", "sme_cap"):
        budget = out.get(key)
        if isinstance(budget, Mapping):
            out[key] = _budget(key, budget)
    return out


def _budget(where: str, budget: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(budget)
    for text_key, int_key, decimals in (("epsilon", "epsilon_micro", 6), ("delta", "delta_e12", 12)):
        if text_key not in out:
            continue
        if int_key in out:
            raise InvalidInput(f"{where}: give {text_key} or {int_key}, not both")
        value = parse_exact(out.pop(text_key), f"{where}.{text_key}", lo=0, ratios=False)
        scaled = value * 10**decimals
        if scaled.denominator != 1:
            raise InvalidInput(f"{where}.{text_key} must have at most {decimals} decimals")
        out[int_key] = int(scaled)
    return out


def schema(name: str) -> dict[str, Any]:
    """The JSON Schema of one documented format (standalone: its definitions under ``$defs``)."""
    return FORMATS[name].model_json_schema()


def publish(app: FastAPI) -> None:
    """Add the formats to the app's OpenAPI components and point the request fields that take them
    (``policy``, ``spec``) at them; the routes still accept any object for the cores to judge."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for name, model in FORMATS.items():
            found = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(found.pop("$defs", {}))
            schemas[name] = found
        for body, field, name in _FIELDS:
            target = schemas.get(body, {}).get("properties", {}).get(field)
            if target is not None:
                target["allOf"] = [{"$ref": f"#/components/schemas/{name}"}]
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


_FIELDS = (
    ("DatasetRegister", "policy", "DatasetPolicy"),
    ("DatasetUpload", "policy", "DatasetPolicy"),
    ("TrainingSubmit", "spec", "TrainingSpec"),
)
