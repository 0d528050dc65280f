"""``broker.client`` against a live broker (issue 17.4): an SME's and a custodian's whole path in Python,
a query ``dry_run`` that prices exactly and spends nothing, query history, errors carrying ``code``."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from sqlalchemy import text

from broker.client import BrokerError, Client, Unreachable, delta_e12, epsilon_micro
from common.errors import DomainError
from tests import training_data as td
from tests.api.conftest import Live
from tests.integration.test_datasets_service import add_custodian, csv_bytes, energy_frame, energy_policy


def _client(live: Live, who: str) -> Client:
    return Client(live.url, token=live.world.tokens[who])


def _spent_state(live: Live) -> tuple[Any, ...]:
    """Everything a query could move: budgets, charges, holds, ledger entries, the audit head."""

    def read(conn: Any) -> tuple[Any, ...]:
        return tuple(
            conn.execute(text(sql)).all()
            for sql in (
                "SELECT id, spent_epsilon_micro, spent_delta_e12 FROM datasets ORDER BY id",
                "SELECT id, spent_epsilon_micro FROM access_requests ORDER BY id",
                "SELECT COUNT(*) FROM privacy_charges",
                "SELECT COUNT(*) FROM holds",
                "SELECT COUNT(*) FROM entries",
                "SELECT seq FROM audit_head",
            )
        )

    return live.world.services.container.db.read(read)


def _dataset(cust: Client) -> str:
    content = base64.b64encode(csv_bytes(energy_frame())).decode()
    return str(
        cust.register_dataset("energy", policy=energy_policy(), content_b64=content, format="csv")["id"]
    )


def test_sme_and_custodian_in_python(live: Live) -> None:
    world = live.world
    add_custodian(world, "custodian")
    token = world.voucher(credits=100_000)["token"]
    with _client(live, "custodian") as cust, _client(live, "sme-a") as sme:
        assert sme.me()["role"] == "sme"
        grant = sme.redeem_voucher(token)
        assert grant["grant"]["amount"] == 100_000 and sme.balance()["available"] == 100_000
        ds = _dataset(cust)
        assert [d["id"] for d in sme.datasets()] == [ds]
        req = sme.request_access(ds, purpose="tariffs", epsilon="0.5")
        assert req["asked"]["epsilon_micro"] == 500_000
        assert [r["id"] for r in cust.access_requests()] == [req["id"]]
        cust.approve(req["id"], valid_for_s=3600, epsilon=0.3)
        batch: list[dict[str, Any]] = [
            {"kind": "count", "epsilon": "0.1"},
            {"kind": "histogram", "column": "district", "epsilon": 0.05},
        ]

        before = _spent_state(live)
        priced = sme.query(ds, batch, dry_run=True)
        assert _spent_state(live) == before  # reserved, held, read and audited nothing
        assert priced["dry_run"] is True and priced["charged"]["epsilon_micro"] == 150_000
        assert priced["grant_remaining"]["epsilon_micro"] == 150_000 and priced["credits_hold"] >= 1

        answer = sme.query(ds, batch)
        assert answer["charged"] == priced["charged"]
        assert answer["grant_remaining"] == priced["grant_remaining"]
        assert 0 <= answer["credits"] <= priced["credits_hold"]

        history = sme.query_history()
        assert [(h["id"], h["status"], h["charged"], h["credits"]) for h in history] == [
            (answer["query_id"], "answered", answer["charged"], answer["credits"])
        ]
        assert sme.query_history(dataset_id="ds_other") == []
        assert cust.budget(ds)["spent"]["epsilon_micro"] == 150_000


def test_dry_run_refuses_what_a_query_would(live: Live) -> None:
    """Over the grant, without access, a malformed spec: the same refusal (and code) as a real query."""
    world = live.world
    add_custodian(world, "custodian")
    world.credit(100_000)
    with _client(live, "custodian") as cust, _client(live, "sme-a") as sme, _client(live, "sme-b") as other:
        ds = _dataset(cust)
        req = sme.request_access(ds, purpose="p", epsilon="0.2")
        cust.approve(req["id"], valid_for_s=3600)
        cases: list[tuple[Client, list[dict[str, Any]], str]] = [
            (sme, [{"kind": "count", "epsilon": "0.3"}], "budget_exceeded"),
            (other, [{"kind": "count", "epsilon": "0.1"}], "access_denied"),
            (sme, [{"kind": "nonsense", "epsilon_micro": 1000}], ""),
        ]
        for who, batch, code in cases:
            codes = []
            for dry in (True, False):
                with pytest.raises(BrokerError) as caught:
                    who.query(ds, batch, dry_run=dry)
                codes.append((caught.value.code, caught.value.status))
            assert codes[0] == codes[1], codes
            assert not code or codes[0][0] == code, codes


def test_training_and_jobs_and_errors(live: Live) -> None:
    world = live.world
    add_custodian(world, "custodian")
    world.credit(1_000_000)
    with _client(live, "custodian") as cust, _client(live, "sme-a") as sme:
        content = base64.b64encode(td.parquet_bytes(td.make_frame(400))).decode()
        ds = cust.register_dataset("people", policy=td.policy(), content_b64=content, format="parquet")["id"]
        req = sme.request_access(ds, purpose="churn", epsilon="5", delta="1e-5", kinds=["training"])
        assert req["asked"]["delta_e12"] == 10_000_000
        cust.approve(req["id"], valid_for_s=3600)
        run = sme.train(ds, td.spec(target_epsilon=0.5))
        assert sme.training(run["id"])["id"] == run["id"] and [r["id"] for r in sme.trainings()] == [
            run["id"]
        ]
        assert [h["kind"] for h in sme.query_history()] == ["training"]
        job = sme.submit_job("python x.py", max_runtime_s=60)
        assert sme.job(job["id"])["state"] == "queued" and job["id"] in {j["id"] for j in sme.jobs()}
        assert sme.stop_job(job["id"])["state"] == "stopped"
        with pytest.raises(BrokerError) as missing:
            sme.job("job_nosuch")
        assert (missing.value.code, missing.value.status) == ("not_found", 404)
        with pytest.raises(BrokerError) as forbidden:
            sme.register_dataset("x", policy={}, content_b64="", format="csv")
        assert forbidden.value.code == "forbidden" and not forbidden.value.unavailable


def test_unreachable_and_numbers() -> None:
    with Client("http://127.0.0.1:9", token="x", timeout_s=2) as nobody, pytest.raises(Unreachable) as caught:
        nobody.me()
    assert caught.value.code == "unreachable" and caught.value.unavailable
    assert epsilon_micro("0.25") == epsilon_micro(0.25) == 250_000
    assert delta_e12("1e-5") == delta_e12(1e-5) == 10_000_000 and delta_e12(0) == 0
    for bad in ("0.0000001", "-1", "lots", "1/2", "0"):
        with pytest.raises(DomainError) as refused:
            epsilon_micro(bad)
        assert getattr(refused.value, "code", None), bad


def test_history_and_dry_run_are_the_smes_own(live: Live) -> None:
    """Only an SME has a query history and may price a query: others are refused before anything is read;
    a fresh SME sees an empty history."""
    world = live.world
    add_custodian(world, "custodian")
    with live.client(None) as anonymous:
        assert anonymous.get("/api/v1/queries").status_code == 401
    for who in ("op2", "issuer", "custodian"):
        with live.client(who) as other:
            assert other.get("/api/v1/queries").json()["error"] == "forbidden"
            priced = other.post(
                "/api/v1/datasets/ds_x/queries?dry_run=true", json={"queries": [{"kind": "count"}]}
            )
            assert priced.status_code == 403, priced.text
    with _client(live, "sme-b") as other:
        assert other.query_history() == []
