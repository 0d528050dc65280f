"""A generated classification dataset with a real signal, for training tests (and its policy)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import polars as pl

FEATURES = ["x1", "x2", "x3", "x4"]
TRUE_W = np.array([1.5, -1.0, 0.8, 0.0])
CANARY = 987654.321


def make_frame(units: int, *, seed: int = 1, canary: bool = False) -> pl.DataFrame:
    """``units`` people, one row each: four features in [-3, 3] and a label with a logistic signal."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (units, 4)).clip(-3, 3)
    p = 1 / (1 + np.exp(-(x @ TRUE_W)))
    y = np.where(rng.random(units) < p, "yes", "no")
    data: dict[str, Any] = {"person": [f"P{i:07d}" for i in range(units)]}
    for j, name in enumerate(FEATURES):
        data[name] = x[:, j].round(3)
    data["label"] = y
    if canary:
        data["x4"] = np.full(units, CANARY)  # out of bounds: clamped to 3 in the stored version
    return pl.DataFrame(data)


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


def policy(total_eps: int = 20, sme_eps: int = 10) -> dict[str, Any]:
    """One row per person; ε budgets in whole ε; δ 1e-5."""
    columns: list[dict[str, Any]] = [{"name": "person", "kind": "unit"}]
    columns += [{"name": n, "kind": "numeric", "lo": "-3", "hi": "3", "decimals": 3} for n in FEATURES]
    columns.append({"name": "label", "kind": "categorical", "categories": ["no", "yes"]})
    return {
        "privacy_unit": "person",
        "max_rows_per_unit": 1,
        "columns": columns,
        "total_budget": {"epsilon_micro": total_eps * 1_000_000, "delta_e12": 100_000_000},
        "sme_cap": {"epsilon_micro": sme_eps * 1_000_000, "delta_e12": 50_000_000},
    }


def spec(target_epsilon: float = 3.0, **overrides: Any) -> dict[str, Any]:
    """A logistic-regression spec over the four features."""
    body: dict[str, Any] = {
        "task": "classification",
        "features": FEATURES,
        "label": "label",
        "model": {"kind": "linear"},
        "epochs": 3,
        "batch_size": 256,
        "learning_rate": 0.5,
        "max_grad_norm": 1.0,
        "target_epsilon": target_epsilon,
        "delta": 1e-5,
    }
    body.update(overrides)
    return body
