"""Raw data never leaves: a unique canary sits in every row of a dataset; no response, error or log has it.

The dataset is registered, requested, approved and queried; then every route of the OpenAPI document (plus
the routes left out of it) is called as the SME, as the custodian and as an operator, with path parameters
naming the real objects and with bodies that are empty, plausible, or malformed. The canary appears in no
response body or header, in no error message, and in nothing the broker logged.
"""

from __future__ import annotations

import base64
import logging
import re
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import polars as pl
import pytest

from broker.server import serve_in_thread
from broker.services.registry import Services
from tests.api.conftest import Live
from tests.conftest import World
from tests.integration.test_datasets_service import DISTRICTS, add_custodian, csv_bytes, energy_policy

CANARY = f"cnry{secrets.token_hex(8)}"


def canary_frame(households: int = 400) -> pl.DataFrame:
    """Every row carries the canary in its unit id; every other row also in an undeclared district."""
    rng = np.random.default_rng(3)
    ids = np.repeat(np.arange(households), 3)
    return pl.DataFrame(
        {
            "household_id": [f"{CANARY}-{i}" for i in ids],
            "district": [DISTRICTS[i % 4] if i % 2 else f"{CANARY}-district" for i in range(len(ids))],
            "kwh": rng.normal(900, 300, len(ids)).round(1),
        }
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _bodies(path: str, ids: dict[str, str]) -> list[dict[str, Any]]:
    """Empty, plausible and malformed bodies for a route (plausible ones for the data routes)."""
    bodies: list[dict[str, Any]] = [{}, {"name": CANARY, "reason": CANARY, "purpose": CANARY, "x": CANARY}]
    if path.endswith("/queries"):
        bodies += [
            {"queries": [{"kind": "count", "epsilon_micro": 1_000}]},
            {"queries": [{"kind": "histogram", "column": "district", "epsilon_micro": 1_000}]},
            {"queries": [{"kind": "quantile", "column": "kwh", "quantiles": [0.5], "epsilon_micro": 1_000}]},
            {"queries": [{"kind": "sum", "column": "household_id", "epsilon_micro": 1_000}]},
            {"queries": [{"kind": "count", "group_by": "district", "epsilon_micro": 10**12}]},
        ]
    if path.endswith("/versions") or path.endswith("/datasets"):
        raw = canary_frame(50)
        bodies += [
            {
                "name": "again",
                "format": "csv",
                "policy": energy_policy(),
                "content_b64": _b64(csv_bytes(raw)),
            },
            {
                "name": "extra-col",
                "format": "csv",
                "policy": energy_policy(),
                "content_b64": _b64(csv_bytes(raw.with_columns(pl.lit(CANARY).alias("note")))),
            },
            {
                "name": "garbage",
                "format": "parquet",
                "policy": energy_policy(),
                "content_b64": _b64(CANARY.encode()),
            },
            {"name": "bad-b64", "format": "csv", "policy": energy_policy(), "content_b64": f"{CANARY}!!"},
            {
                "name": "wrong-type",
                "format": "csv",
                "policy": energy_policy(),
                "content_b64": _b64(csv_bytes(raw.with_columns(pl.lit(CANARY).alias("kwh")))),
            },
        ]
    if path.endswith("/versions"):
        bodies = [{k: v for k, v in b.items() if k != "name"} for b in bodies]
    if path.endswith("/access-requests"):
        bodies.append({"purpose": "audit", "epsilon_micro": 1000, "kinds": ["query"]})
    return bodies


def _fill(path: str, ids: dict[str, str]) -> str:
    """Name the real objects in path parameters; parameters of other features get an unknown id."""
    return re.sub(r"\{(\w+)\}", lambda m: ids.get(m.group(1), f"{m.group(1)}_unknown"), path)


def _check(r: httpx.Response, where: str) -> None:
    text = r.text + " ".join(f"{k}: {v}" for k, v in r.headers.items())
    assert CANARY not in text, f"{where} returned the canary ({r.status_code})"


@pytest.fixture
def served(services: Services, world: World) -> Iterator[Live]:
    """A broker on a real local port (the API tests' ``live``, which lives in their conftest)."""
    server = serve_in_thread(services, loops=False)
    try:
        yield Live(server, world)
    finally:
        server.stop()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_canary_never_appears(
    served: Live, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    live = served
    world = live.world
    custodian = add_custodian(world, "custodian")
    world.credit(10_000_000)
    with live.client("custodian") as cust, live.client("sme-a") as sme, live.client("op2") as op:
        body = {
            "name": "energy",
            "format": "csv",
            "policy": energy_policy(),
            "content_b64": _b64(csv_bytes(canary_frame())),
        }
        r = cust.post("/api/v1/datasets", json=body)
        assert r.status_code == 201, r.text
        _check(r, "register")
        dsid = r.json()["id"]
        stored = world.services.container.storage.get_bytes(r.json()["versions"][0]["object_key"])
        assert pl.read_parquet(stored)["household_id"].str.starts_with(CANARY).all()  # the data has it
        r = sme.post(
            f"/api/v1/datasets/{dsid}/access-requests", json={"purpose": "p", "epsilon_micro": 4_000_000}
        )
        req = r.json()["id"]
        r = cust.post(f"/api/v1/access-requests/{req}/approve", json={"valid_for_s": 3600})
        assert r.status_code == 200, r.text
        ids = {
            "dataset_id": dsid,
            "request_id": req,
            "org_id": custodian.org_id,
            "jti": "vch_x",
            "kid": "kid_x",
            "hold_id": "hold_x",
        }
        spec = live.client(None).get("/openapi.json").json()
        routes = [(p, m.upper()) for p, item in spec["paths"].items() for m in item]
        routes += [("/metrics", "GET"), ("/openapi.json", "GET")]
        calls = 0
        for client, who in ((sme, "sme"), (cust, "custodian"), (op, "operator")):
            for path, method in routes:
                url = _fill(path, ids)
                if method in ("GET", "DELETE"):
                    _check(client.request(method, url), f"{who} {method} {path}")
                    calls += 1
                    continue
                for payload in _bodies(path, ids):
                    _check(client.request(method, url, json=payload), f"{who} {method} {path}")
                    calls += 1
        assert calls > 100
        answered = sme.get(f"/api/v1/datasets/{dsid}/budget").json()["charges"]
        assert any(c["status"] == "answered" for c in answered)  # the crawl did run real queries
    captured = capfd.readouterr()
    assert CANARY not in caplog.text, "the canary was logged"
    assert CANARY not in captured.out + captured.err, "the canary was printed"
