"""The demo's DP-SGD step: a city survey, a training grant, a private model, its DP accuracy and its bill."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import numpy as np
import polars as pl

HOUSEHOLDS = 20_000
FEATURES = ["floor_area_m2", "occupants", "building_age_y", "yearly_kwh"]


def heat_pump_survey(households: int = HOUSEHOLDS, seed: int = 7) -> pl.DataFrame:
    """Synthetic survey: does a household have a heat pump? (made-up data with a real signal)."""
    rng = np.random.default_rng(seed)
    area = rng.normal(95, 30, households).clip(25, 250)
    occupants = rng.integers(1, 7, households).astype(float)
    age = rng.gamma(3.0, 15.0, households).clip(0, 120)
    kwh = (area * 28 + occupants * 450 + rng.normal(0, 600, households)).clip(500, 15_000)
    logit = -1.0 + 0.02 * (area - 95) - 0.04 * (age - 45) + 0.0004 * (kwh - 3000)
    has = rng.random(households) < 1 / (1 + np.exp(-logit))
    return pl.DataFrame(
        {
            "household_id": [f"HP-{i:06d}" for i in range(households)],
            "floor_area_m2": area.round(1),
            "occupants": occupants,
            "building_age_y": age.round(0),
            "yearly_kwh": kwh.round(0),
            "heat_pump": np.where(has, "yes", "no"),
        }
    )


def survey_policy() -> dict[str, Any]:
    """One row per household; public bounds; ε 6 in total, 4 per SME; δ 1e-5 per SME."""
    bounds = {
        "floor_area_m2": ("25", "250"),
        "occupants": ("1", "6"),
        "building_age_y": ("0", "120"),
        "yearly_kwh": ("500", "15000"),
    }
    columns: list[dict[str, Any]] = [{"name": "household_id", "kind": "unit"}]
    columns += [
        {"name": n, "kind": "numeric", "lo": lo, "hi": hi, "decimals": 1} for n, (lo, hi) in bounds.items()
    ]
    columns.append({"name": "heat_pump", "kind": "categorical", "categories": ["no", "yes"]})
    return {
        "privacy_unit": "household_id",
        "max_rows_per_unit": 1,
        "columns": columns,
        "total_budget": {"epsilon_micro": 6_000_000, "delta_e12": 20_000_000},
        "sme_cap": {"epsilon_micro": 4_000_000, "delta_e12": 10_000_000},
    }


def step_private_training(state: Any) -> str:
    """Register the survey, grant training access, train a DP model at ε = 2, show DP accuracy and the bill."""
    custodian = state.as_role("Nordstadt Open Data Office")
    sme = state.as_role("Acme Mobility GmbH")
    frame = heat_pump_survey()
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    dataset = custodian.call(
        "POST",
        "/api/v1/datasets",
        body={
            "name": "Heat-pump adoption survey 2026",
            "description": "Synthetic household survey (demo data)",
            "format": "parquet",
            "content_b64": base64.b64encode(buffer.getvalue()).decode(),
            "policy": survey_policy(),
        },
    )
    dataset_id = dataset.get("id") or dataset["dataset_id"]
    request = sme.call(
        "POST",
        f"/api/v1/datasets/{dataset_id}/access-requests",
        body={
            "purpose": "predict heat-pump adoption for a retrofit campaign",
            "epsilon_micro": 3_000_000,
            "delta_e12": 10_000_000,
            "kinds": ["training"],
        },
    )
    request_id = request.get("id") or request["request_id"]
    custodian.call(
        "POST", f"/api/v1/access-requests/{request_id}/approve", body={"valid_for_s": 30 * 24 * 3600}
    )
    spec = {
        "task": "classification",
        "features": FEATURES,
        "label": "heat_pump",
        "model": {"kind": "mlp", "hidden": [16]},
        "epochs": 3,
        "batch_size": 256,
        "learning_rate": 0.05,
        "max_grad_norm": 1.0,
        "optimizer": "adam",
        "target_epsilon": 2.0,
        "delta": 1e-5,
    }
    run = sme.call(
        "POST", "/api/v1/training", body={"dataset_id": dataset_id, "spec": spec}, idempotency_key="demo-dp-1"
    )
    print(
        f"[demo]   privacy reserved before training: ε={run['reserved']['epsilon_micro'] / 1e6:g}", flush=True
    )
    last, deadline = "", time.monotonic() + 900
    while True:
        status = sme.call("GET", f"/api/v1/training/{run['id']}")
        if status["state"] != last:
            print(f"[demo]   training run {run['id']}: {status['state']}", flush=True)
            last = status["state"]
        if status["settled_ms"] and status["result"] is not None:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the training run is still {status['state']} after 15 minutes")
        time.sleep(0.5)
    result = status["result"]
    if not result.get("ok"):
        raise RuntimeError(f"the training run failed: {result.get('error')}")
    weights = sme.download(f"/api/v1/training/{run['id']}/weights")
    (state.state_dir / "heat_pump_model.safetensors").write_bytes(weights)
    accuracy = next(iter(result["dp_metrics"].values()))
    return (
        f"DP accuracy {accuracy:.3f} on held-out households at ε spent {result['epsilon_spent_micro'] / 1e6:.3f} "
        f"(of 2 reserved); billed {status['cost']} credits (vouchers {status['voucher_paid']}, co-payment "
        f"{status['copaid']}); weights in {state.state_dir / 'heat_pump_model.safetensors'}"
    )
