"""DP query benchmark: the project's query path versus the same non-private aggregates with Polars.

A generated dataset of ``SBX_BENCH_DP_ROWS`` rows (default 10,000,000; one row per household so bounding
keeps every row) is registered through ``DatasetService.register`` (bounded, stored by content hash in the
local object store). Then, both warm (the bounded version already in memory):

* dp:  ``DatasetService.query`` with one batch of DP count, sum, mean and a 16-group histogram — grant
       check, budget reservation against three caps, credit hold and audit entry in one SQLite transaction
       (WAL, synchronous=FULL), the OpenDP releases on the worker pool, then settlement and its audit entry;
* raw: the same four aggregates, exact, with Polars over the same bounded frame.

Each side runs ``SBX_BENCH_DP_REPS`` times (default 7), alternating, and the medians are compared.
Last line: ``BENCH dp_query dp_ms=… raw_ms=… ratio=…``
"""

from __future__ import annotations

import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from broker.bootstrap import initialise
from broker.container import build_container
from broker.db.orgs import Principal
from broker.services.registry import Services, build_services
from broker.settings import Settings
from datasets.prepare import read_bounded

ROWS = int(os.environ.get("SBX_BENCH_DP_ROWS", "10000000"))
REPS = int(os.environ.get("SBX_BENCH_DP_REPS", "7"))
GROUPS = [f"zone-{i:02d}" for i in range(16)]
DAY_S = 24 * 3600
BATCH = [
    {"kind": "count", "epsilon_micro": 10_000},
    {"kind": "sum", "column": "kwh", "epsilon_micro": 10_000},
    {"kind": "mean", "column": "kwh", "epsilon_micro": 10_000},
    {"kind": "histogram", "column": "zone", "epsilon_micro": 10_000},
]


def generate(rows: int) -> bytes:
    """A Parquet table: household id (int), one of 16 zones, monthly kWh (float)."""
    rng = np.random.default_rng(1)
    zone = pl.Series("zone", rng.integers(0, len(GROUPS), rows), dtype=pl.UInt32)
    frame = pl.DataFrame(
        {
            "household_id": np.arange(rows, dtype=np.int64),
            "zone": zone.replace_strict(dict(enumerate(GROUPS)), return_dtype=pl.String),
            "kwh": rng.gamma(4.0, 60.0, rows).round(1),
        }
    )
    buf = io.BytesIO()
    frame.write_parquet(buf)
    return buf.getvalue()


def policy() -> dict[str, object]:
    """One row per household; kWh bounded to [0, 1500] at 0.1; a budget large enough for every rep."""
    return {
        "privacy_unit": "household_id",
        "max_rows_per_unit": 1,
        "columns": [
            {"name": "household_id", "kind": "unit"},
            {"name": "zone", "kind": "categorical", "categories": GROUPS},
            {"name": "kwh", "kind": "numeric", "lo": "0", "hi": "1500", "decimals": 1},
        ],
        "total_budget": {"epsilon_micro": 100_000_000, "delta_e12": 0},
        "sme_cap": {"epsilon_micro": 100_000_000, "delta_e12": 0},
    }


def principal(services: Services, op: Principal | None, name: str, role: str, **extra: object) -> Principal:
    """Create an organisation and return its principal."""
    org = services.orgs.create(op, name=name, role=role, **extra)  # type: ignore[arg-type]
    found = services.orgs.authenticate(services.orgs.create_token(None, org_id=org["id"])["token"])
    assert found is not None
    return found


def setup(services: Services) -> tuple[Principal, str]:
    """Organisations, credit for the SME, the registered dataset and an approved grant."""
    op = principal(services, None, "op", "operator")
    issuer = principal(services, op, "issuer", "issuer", year_budget=10**12, sme_cap=10**12)
    services.vouchers.create_key(issuer)
    sme = principal(services, op, "sme", "sme")
    custodian = principal(services, op, "custodian", "custodian")
    now_s = int(time.time())
    token = services.vouchers.issue(
        issuer,
        sme_org=sme.org_id,
        credits=10**9,
        coverage_bps=10_000,
        resources=("cpu", "memory"),
        valid_from_s=None,
        valid_until_s=now_s + DAY_S,
        credit_expires_s=now_s + 30 * DAY_S,
    )["token"]
    services.vouchers.redeem(sme, token=token, idempotency_key=None)
    raw = generate(ROWS)
    started = time.perf_counter()
    ds = services.datasets.register(
        custodian, name="bench", description="", policy=policy(), fmt="parquet", content=raw
    )
    print(
        f"registered {ROWS:,} rows ({len(raw) / 1e6:.0f} MB parquet) in {time.perf_counter() - started:.1f} s"
    )
    req = services.datasets.request_access(
        sme, dataset_id=ds["id"], purpose="bench", epsilon_micro=100_000_000
    )
    services.datasets.approve(custodian, request_id=req["id"], valid_for_s=DAY_S)
    return sme, ds["id"]


def raw_aggregates(frame: pl.DataFrame) -> tuple[int, int, float, pl.DataFrame]:
    """The same four aggregates, exact and non-private, with Polars."""
    row = frame.select(pl.len(), pl.col("kwh").sum().alias("s"), pl.col("kwh").mean().alias("m")).row(0)
    hist = frame.group_by("zone").len()
    return int(row[0]), int(row[1]), float(row[2]), hist


def main() -> None:
    """Register, warm both paths, time them alternately, print the BENCH line."""
    with tempfile.TemporaryDirectory(prefix="sbx-bench-dp-") as tmp:
        settings = Settings(state_dir=Path(tmp) / "state", compute="fake", background_loops=False)
        initialise(settings.state_dir, settings=settings)
        container = build_container(settings)
        services = build_services(container)
        try:
            sme, dsid = setup(services)
            version = services.datasets.describe(sme, dataset_id=dsid)["versions"][0]
            from datasets import DatasetPolicy

            parsed = DatasetPolicy.from_dict(version["policy"])
            key = f"datasets/sha256/{version['content_hash']}.parquet"
            frame = read_bounded(container.storage.get_bytes(key), parsed).drop("household_id")
            services.datasets.query(sme, dataset_id=dsid, queries=BATCH)  # warm: loads the version
            raw_aggregates(frame)
            dp_ms: list[float] = []
            raw_ms: list[float] = []
            for _ in range(REPS):
                t0 = time.perf_counter()
                out = services.datasets.query(sme, dataset_id=dsid, queries=BATCH)
                dp_ms.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                raw_aggregates(frame)
                raw_ms.append((time.perf_counter() - t0) * 1000)
            dp, raw = statistics.median(dp_ms), statistics.median(raw_ms)
            print(
                f"dp runs (ms): {[round(x, 1) for x in dp_ms]}; raw runs (ms): {[round(x, 1) for x in raw_ms]}"
            )
            print(
                f"last answer: count≈{out['results'][0]['values']['*']:,.0f}, charged {out['charged']['display']}"
            )
            print(f"BENCH dp_query dp_ms={dp:.1f} raw_ms={raw:.1f} ratio={dp / raw:.2f}")
        finally:
            container.close()


if __name__ == "__main__":
    main()
