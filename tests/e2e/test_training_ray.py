"""DP-SGD training end to end on a real local Ray: a spec in, DP weights and a DP metric out, billed to the
voucher and charged to the grant. The model at ε = 3 beats the majority class on fresh held-out data; the
weights file holds only tensors; the log, the results and the audit carry no raw value (canary)."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load as load_safetensors

from broker.compute.ray_local import LocalRayBackend
from broker.db.orgs import Principal
from broker.services.registry import Services
from broker.settings import Settings
from common.clock import SystemClock
from tests import training_data as td
from tests.conftest import World

pytestmark = pytest.mark.ray


@pytest.fixture
def clock() -> SystemClock:  # type: ignore[override]
    return SystemClock()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's settings, checked to train in secure mode (the default): CSPRNG noise and masks, no seed."""
    assert settings.training_secure_mode and settings.training_seed is None
    return settings


def _custodian(world: World) -> Principal:
    org = world.services.orgs.create(world.operator, name="custodian", role="custodian")
    found = world.services.orgs.authenticate(
        world.services.orgs.create_token(None, org_id=org["id"])["token"]
    )
    assert found is not None
    return found


def _predict(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The linear model's class (1 = "yes") on features scaled as the harness does: [-3, 3] → [-1, 1]."""
    w = next(v for k, v in weights.items() if k.endswith("weight"))
    b = next(v for k, v in weights.items() if k.endswith("bias"))
    logits = (x / 3.0) @ w.T + b
    return np.asarray(logits.argmax(axis=1) if logits.shape[1] > 1 else (logits[:, 0] > 0).astype(int))


def _approved_dataset(services: Services, world: World, frame: Any, *, name: str, grant_eps: int) -> str:
    """Register ``frame`` as a custodian and approve SME A for training with ``grant_eps`` micro-ε."""
    world.credit(100_000_000)
    custodian = _custodian(world)
    ds = services.datasets.register(
        custodian,
        name=name,
        description="generated",
        policy=td.policy(),
        fmt="parquet",
        content=td.parquet_bytes(frame),
    )
    dataset_id: str = ds.get("id") or ds["dataset_id"]
    request = services.datasets.request_access(
        world.sme,
        dataset_id=dataset_id,
        purpose=name,
        epsilon_micro=grant_eps,
        delta_e12=10_000_000,
        kinds=("training",),
    )
    services.datasets.approve(
        custodian, request_id=request.get("id") or request["request_id"], valid_for_s=86_400
    )
    return dataset_id


def _run_until_settled(services: Services, world: World, run: dict[str, Any]) -> None:
    deadline = time.monotonic() + 300
    while services.jobs.get(world.operator, job_id=run["id"])["settled_ms"] is None:
        assert time.monotonic() < deadline, "the training run did not finish"
        services.jobs.reconcile_pass()
        services.jobs.admission_pass()
        time.sleep(0.3)


def test_dp_training_run_end_to_end(services: Services, world: World, ray_backend: LocalRayBackend) -> None:
    services.container.use_compute(ray_backend)
    frame = td.make_frame(20_000, seed=11)
    dataset_id = _approved_dataset(services, world, frame, name="classifier", grant_eps=4_000_000)
    run = services.training.submit(world.sme, dataset_id=dataset_id, spec=td.spec(target_epsilon=3.0))
    _run_until_settled(services, world, run)
    status = services.training.status(world.sme, job_id=run["id"])
    assert status["state"] == "succeeded", status
    result: dict[str, Any] = status["result"]
    assert result["ok"] is True
    assert result["epsilon_spent_micro"] <= 3_000_000 <= 4_000_000  # accountant ε ≤ reserved ≤ grant
    assert status["cost"] > 0 and status["voucher_paid"] == status["cost"]

    weights = load_safetensors(services.training.weights(world.sme, job_id=run["id"]))
    assert weights and all(isinstance(v, np.ndarray) for v in weights.values())  # tensors only, no pickle
    holdout = td.make_frame(5_000, seed=99)
    x = holdout.select(td.FEATURES).to_numpy()
    y = (holdout["label"] == "yes").to_numpy().astype(int)
    accuracy = float((_predict(weights, x) == y).mean())
    majority = max(y.mean(), 1 - y.mean())
    assert accuracy > majority + 0.1, (accuracy, majority)
    noisy = next(iter(result["dp_metrics"].values()))
    assert noisy > majority, result["dp_metrics"]

    audit = [e for e in services.audit.entries(world.operator, limit=1000) if e["object_id"] == run["id"]]
    assert {"training.reserve", "training.finish"} <= {e["action"] for e in audit}


def test_no_raw_value_leaves_a_training_run(
    services: Services, world: World, ray_backend: LocalRayBackend
) -> None:
    services.container.use_compute(ray_backend)
    frame = td.make_frame(3_000, seed=5, canary=True)
    dataset_id = _approved_dataset(services, world, frame, name="canary", grant_eps=2_000_000)
    run = services.training.submit(
        world.sme, dataset_id=dataset_id, spec=td.spec(target_epsilon=1.0, epochs=1)
    )
    _run_until_settled(services, world, run)
    texts = [
        services.jobs.logs(world.sme, job_id=run["id"]),
        json.dumps(services.training.status(world.sme, job_id=run["id"])),
        json.dumps(services.audit.entries(world.operator, limit=1000)),
    ]
    canary = str(td.CANARY)
    for text in texts:
        assert canary not in text and "987654" not in text
