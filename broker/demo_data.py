"""The data foundation's demo steps: a synthetic city dataset, an access request and approval, DP answers.

The dataset is generated in code (no download): monthly electricity readings of Nordstadt households, by
district, dwelling type and heating system, with the household id as the privacy unit. Its numbers follow
rough public orders of magnitude (a German household uses 2,000–4,500 kWh a year; heat pumps add to it);
they describe no real household.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl

from broker.cli.client import CliError

CUSTODIAN = "Nordstadt Open Data Office"
SME = "Acme Mobility GmbH"
DISTRICTS = ["Altstadt", "Hafen", "Nordviertel", "Suedstadt", "Ostpark", "Westend", "Bahnhof", "Lindenau"]
DWELLINGS = ["apartment", "terraced", "detached"]
HEATING = ["gas", "heat_pump", "district_heating", "oil"]
HOUSEHOLDS = 20_000
MONTHS = 12


def energy_table(households: int = HOUSEHOLDS, seed: int = 2026) -> pl.DataFrame:
    """Synthetic monthly kWh per household (a seeded generator: this is made-up data, not DP noise)."""
    rng = np.random.default_rng(seed)
    district = rng.integers(0, len(DISTRICTS), households)
    dwelling = rng.choice(len(DWELLINGS), households, p=[0.6, 0.25, 0.15])
    heating = rng.choice(len(HEATING), households, p=[0.45, 0.2, 0.25, 0.1])
    yearly = (
        rng.lognormal(np.log(2600), 0.35, households)
        * (1 + 0.35 * dwelling)
        * np.where(heating == 1, 1.8, 1.0)
    )
    season = 1 + 0.25 * np.cos(2 * np.pi * np.arange(MONTHS) / MONTHS)
    kwh = (yearly[:, None] / MONTHS) * season[None, :] * rng.normal(1, 0.1, (households, MONTHS))
    hh = np.repeat(np.arange(households), MONTHS)
    return pl.DataFrame(
        {
            "household_id": [f"NS-{i:06d}" for i in hh],
            "district": [DISTRICTS[d] for d in district[hh]],
            "dwelling": [DWELLINGS[d] for d in dwelling[hh]],
            "heating": [HEATING[h] for h in heating[hh]],
            "kwh": kwh.reshape(-1).round(1),
        }
    )


def energy_policy() -> dict[str, Any]:
    """The custodian's policy: one household contributes at most its 12 monthly rows; ε 10 in total, 4 per SME."""
    return {
        "privacy_unit": "household_id",
        "max_rows_per_unit": MONTHS,
        "columns": [
            {"name": "household_id", "kind": "unit"},
            {"name": "district", "kind": "categorical", "categories": DISTRICTS},
            {"name": "dwelling", "kind": "categorical", "categories": DWELLINGS},
            {"name": "heating", "kind": "categorical", "categories": HEATING},
            {"name": "kwh", "kind": "numeric", "lo": "0", "hi": "1500", "decimals": 1},
        ],
        "total_budget": {"epsilon_micro": 10_000_000, "delta_e12": 0},
        "sme_cap": {"epsilon_micro": 4_000_000, "delta_e12": 0},
    }


def step_register(state: Any) -> str:
    """The custodian registers the household-energy dataset (Parquet upload) with its policy."""
    table = energy_table()
    buf = io.BytesIO()
    table.write_parquet(buf)
    ds = state.as_role(CUSTODIAN).call(
        "POST",
        "/api/v1/datasets",
        body={
            "name": "household-electricity-2025",
            "description": "Monthly electricity use of Nordstadt households (synthetic)",
            "format": "parquet",
            "policy": energy_policy(),
            "content_b64": base64.b64encode(buf.getvalue()).decode(),
        },
    )
    state.ids["dataset"] = ds["id"]
    v = ds["versions"][0]
    return (
        f"dataset {ds['id']}: {v['rows_kept']:,} of {v['rows_in']:,} rows kept after bounding to "
        f"{MONTHS} per household, stored as sha256 {v['content_hash'][:16]}…; budget ε=10, per SME ε=4"
    )


def step_request(state: Any) -> str:
    """The SME sees the description (schema and policy, no values) and asks for ε = 3."""
    sme = state.as_role(SME)
    described = sme.call("GET", f"/api/v1/datasets/{state.ids['dataset']}")
    columns = ", ".join(c["name"] for c in described["versions"][-1]["policy"]["columns"])
    req = sme.call(
        "POST",
        f"/api/v1/datasets/{state.ids['dataset']}/access-requests",
        body={"purpose": "size e-scooter charging hubs by district demand", "epsilon_micro": 3_000_000},
    )
    state.ids["access_request"] = req["id"]
    return f"SME sees columns [{columns}] and asks for ε=3 (request {req['id']})"


def step_approve(state: Any) -> str:
    """The custodian approves, granting less than asked (ε = 2) for 30 days."""
    out = state.as_role(CUSTODIAN).call(
        "POST",
        f"/api/v1/access-requests/{state.ids['access_request']}/approve",
        body={"valid_for_s": 30 * 24 * 3600, "epsilon_micro": 2_000_000},
    )
    return f"approved {out['grant']['cap']['display']} (asked {out['asked']['display']}), bound to sha256 {out['dataset_hash'][:16]}…"


def _fmt(values: dict[str, float], limit: int = 4) -> str:
    return ", ".join(f"{k} {v:,.0f}" for k, v in list(values.items())[:limit])


def step_query(state: Any) -> str:
    """The SME runs a batch of DP queries and sees the answers next to the budget left."""
    sme = state.as_role(SME)
    out = sme.call(
        "POST",
        f"/api/v1/datasets/{state.ids['dataset']}/queries",
        body={
            "queries": [
                {"kind": "count", "epsilon_micro": 200_000},
                {"kind": "mean", "column": "kwh", "group_by": "district", "epsilon_micro": 600_000},
                {"kind": "histogram", "column": "heating", "epsilon_micro": 200_000},
                {"kind": "quantile", "column": "kwh", "quantiles": [0.5, 0.9], "epsilon_micro": 400_000},
            ]
        },
    )
    count, mean, hist, quant = out["results"]
    budget = state.as_role(CUSTODIAN).call("GET", f"/api/v1/datasets/{state.ids['dataset']}/budget")
    return (
        f"monthly readings ≈ {count['values']['*']:,.0f} (±{count['confidence_interval']['*'][1] - count['values']['*']:,.0f}); "
        f"mean kWh/month by district: {_fmt(mean['values'])} …; heating: {_fmt(hist['values'])}; "
        f"median {quant['values']['0.5']:,.0f} / p90 {quant['values']['0.9']:,.0f} kWh — charged "
        f"{out['charged']['display']}, {out['credits']} credits; grant left {out['grant_remaining']['display']}, "
        f"dataset left {budget['remaining']['display']} of {budget['total']['display']}"
    )


def step_over_budget(state: Any) -> str:
    """A query asking for more than the grant has left is refused before any data is read."""
    try:
        state.as_role(SME).call(
            "POST",
            f"/api/v1/datasets/{state.ids['dataset']}/queries",
            body={"queries": [{"kind": "sum", "column": "kwh", "epsilon_micro": 1_000_000}]},
        )
    except CliError as exc:
        return f"refused as expected — {exc}"
    raise RuntimeError("an over-budget query was answered")


def data_steps() -> list[tuple[str, Callable[[Any], str]]]:
    """Steps added to ``make demo`` by the data foundation."""
    return [
        ("Custodian registers a city dataset", step_register),
        ("SME asks for access", step_request),
        ("Custodian approves (with less ε)", step_approve),
        ("SME gets DP answers", step_query),
        ("Over-budget query is refused", step_over_budget),
    ]
