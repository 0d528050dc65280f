"""The documented formats (issue 17.5): the policy and training-spec schemas are published (OpenAPI and
``docs/schemas``, kept fresh), their examples pass the pure cores, and a policy's ε may be a decimal."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from broker.api.formats import DatasetPolicy, TrainingSpec, normalise_policy, schema
from common.errors import DomainError
from datasets.policy import DatasetPolicy as CorePolicy
from privacy.training.spec import validate_spec
from tests.api.conftest import Live
from tests.integration.test_datasets_service import add_custodian, csv_bytes, energy_frame, energy_policy

DOCS = Path(__file__).resolve().parents[2] / "docs"
FILES = {"DatasetPolicy": "dataset-policy", "TrainingSpec": "training-spec"}


def _example(model: type[Any]) -> dict[str, Any]:
    examples: list[dict[str, Any]] = model.model_json_schema()["examples"]
    return examples[0]


@pytest.mark.parametrize("name", sorted(FILES))
def test_published_schema_files_are_fresh(name: str) -> None:
    path = DOCS / "schemas" / f"{FILES[name]}.schema.json"
    assert json.loads(path.read_text()) == schema(name), f"regenerate {path} (docs/formats.md says how)"
    assert f"schemas/{FILES[name]}.schema.json" in (DOCS / "formats.md").read_text()


def test_openapi_components_and_references(live: Live) -> None:
    with live.client(None) as anonymous:
        document = anonymous.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    assert {"DatasetPolicy", "TrainingSpec", "NumericColumn", "Budget"} <= set(schemas)
    ref = {"$ref": "#/components/schemas/DatasetPolicy"}
    assert schemas["DatasetRegister"]["properties"]["policy"]["allOf"] == [ref]
    assert schemas["TrainingSubmit"]["properties"]["spec"]["allOf"] == [
        {"$ref": "#/components/schemas/TrainingSpec"}
    ]


def test_examples_pass_the_models_and_the_cores() -> None:
    policy = _example(DatasetPolicy)
    DatasetPolicy.model_validate(policy)
    core = CorePolicy.from_dict(normalise_policy(policy))
    assert (core.total_epsilon_micro, core.total_delta_e12) == (10_000_000, 10_000_000)
    spec = _example(TrainingSpec)
    TrainingSpec.model_validate(spec)
    columns = {"age": "numeric", "income": "numeric", "churned": "categorical"}
    checked = validate_spec(
        spec,
        dataset_columns=columns,
        label_categories=["no", "yes"],
        grant_epsilon_micro=5_000_000,
        policy_delta_e12=10_000_000,
    )
    assert (checked.epsilon_micro, checked.delta_e12) == (3_000_000, 10_000_000)


def test_decimal_budgets_exact_or_refused() -> None:
    assert normalise_policy({"sme_cap": {"epsilon": "0.25", "delta": "0"}})["sme_cap"] == {
        "epsilon_micro": 250_000,
        "delta_e12": 0,
    }
    for budget in ({"epsilon": "0.0000001"}, {"epsilon": "lots"}, {"epsilon": "1", "epsilon_micro": 1}):
        with pytest.raises(DomainError):
            normalise_policy({"total_budget": budget})


def test_a_policy_with_decimal_epsilon_over_http(live: Live) -> None:
    add_custodian(live.world, "custodian")
    policy = energy_policy()
    policy["total_budget"] = {"epsilon": "10", "delta_e12": 0}
    policy["sme_cap"] = {"epsilon": "2.5", "delta_e12": 0}
    body = {
        "name": "energy",
        "format": "csv",
        "policy": policy,
        "content_b64": base64.b64encode(csv_bytes(energy_frame())).decode(),
    }
    with live.client("custodian") as cust:
        created = cust.post("/api/v1/datasets", json=body)
        assert created.status_code == 201, created.text
        budget = cust.get(f"/api/v1/datasets/{created.json()['id']}/budget").json()
        assert budget["total"]["epsilon_micro"] == 10_000_000
        policy["sme_cap"] = {"epsilon": "2.5", "epsilon_micro": 2_500_000}
        refused = cust.post("/api/v1/datasets", json={**body, "name": "twice"})
        assert refused.status_code == 422 and refused.json()["error"] == "invalid_input", refused.text
