"""The Chinese demo (``sbx demo --lang zh-CN``, ``make demo LANG=zh_CN.UTF-8``): a city science and technology
bureau's innovation-voucher programme in yuan and Beijing time, Chinese SMEs with valid unified social credit
codes, a city data bureau's Chinese dataset, DP answers, and the subsidy report in Chinese (HTML, CSV with a
BOM, XLSX, signed JSON).

Everything is fictitious: 新港市 is no real city, the companies are made up, and their codes are built by
:func:`common.uscc.check_character` from a made-up body so that they are *valid* GB 32100-2015 codes that
belong to nobody we know of (real published codes are in ``tests/unit/test_uscc.py``). The dataset is
generated in code: monthly electricity use of enterprises by district and industry, with the enterprise id
as the privacy unit; its numbers describe no real enterprise.
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from broker.cli.jobs import zip_dir
from broker.demo_jobs import TRAIN_PY
from broker.i18n import _, gettext
from broker.services.report_exports import subsidy_csv_bytes, subsidy_xlsx
from broker.services.reports import verify_report
from broker.web.render import subsidy_html
from common.money import format_money
from common.uscc import check_character

PROGRAMME = "新港市科学技术局"
CUSTODIAN = "新港市数据管理局"
YEAR_BUDGET_FEN = 10_000_000 * 100  # ¥10,000,000 a year
SME_CAP_FEN = 500_000 * 100
VOUCHER_FEN = 200_000 * 100  # ¥200,000.00
DAY_S = 86_400
LOCALE = "zh_CN"  # what the reports are written in


def _code(body17: str) -> str:
    """A valid code for a fictitious organisation: ``body17`` plus its check character."""
    return body17 + check_character(body17)


# (short name, registered Chinese name, English name, code): enterprises (9-1) registered in a made-up division.
SMES = (
    (
        "新港智算",
        "新港智算科技有限公司",
        "Xingang Intelligent Computing Co., Ltd.",
        _code("91990100MA0XG0001"),
    ),
    ("海川医疗", "海川医疗人工智能有限公司", "Haichuan Medical AI Co., Ltd.", _code("91990100MA0XG0002")),
)
DISTRICTS = ["港城区", "高新区", "临港区", "老城区"]
INDUSTRIES = ["制造业", "软件和信息技术服务业", "批发和零售业", "科学研究和技术服务业"]
ENTERPRISES = 5_000
MONTHS = 12

TITLES = (  # the English demo's step titles, marked so that the catalogue translates them for a zh-CN run
    _("Create organisations"),
    _("Issue a voucher"),
    _("Redeem it and show the balance"),
    _("Verify the audit log"),
)


def enterprise_power(enterprises: int = ENTERPRISES, seed: int = 2026) -> pl.DataFrame:
    """Synthetic monthly kWh per enterprise (a seeded generator: made-up data, not DP noise)."""
    rng = np.random.default_rng(seed)
    district = rng.integers(0, len(DISTRICTS), enterprises)
    industry = rng.choice(len(INDUSTRIES), enterprises, p=[0.35, 0.3, 0.2, 0.15])
    yearly = rng.lognormal(np.log(60_000), 0.6, enterprises) * np.where(industry == 0, 3.0, 1.0)
    kwh = (yearly[:, None] / MONTHS) * rng.normal(1, 0.1, (enterprises, MONTHS))
    ids = np.repeat(np.arange(enterprises), MONTHS)
    return pl.DataFrame(
        {
            "enterprise_id": [f"XG-{i:05d}" for i in ids],
            "district": [DISTRICTS[d] for d in district[ids]],
            "industry": [INDUSTRIES[i] for i in industry[ids]],
            "kwh": np.clip(kwh.reshape(-1), 0, 50_000).round(1),
        }
    )


def _policy() -> dict[str, Any]:
    return {
        "privacy_unit": "enterprise_id",
        "max_rows_per_unit": MONTHS,
        "columns": [
            {"name": "enterprise_id", "kind": "unit"},
            {"name": "district", "kind": "categorical", "categories": DISTRICTS},
            {"name": "industry", "kind": "categorical", "categories": INDUSTRIES},
            {"name": "kwh", "kind": "numeric", "lo": "0", "hi": "50000", "decimals": 1},
        ],
        "total_budget": {"epsilon_micro": 10_000_000, "delta_e12": 0},
        "sme_cap": {"epsilon_micro": 4_000_000, "delta_e12": 0},
    }


def _locale(state: Any) -> str:
    """The run's language (``sbx demo --lang``): what the demo prints in."""
    return str(getattr(state, "locale", LOCALE))


def _yuan(fen: int) -> str:
    return format_money(fen, "CNY", LOCALE)


def _org(state: Any, name: str, role: str, **extra: Any) -> None:
    """Create an organisation and a token for it (the demo's own helper, as in ``broker.demo``)."""
    from broker.cli.client import BrokerClient

    org = state.operator.call("POST", "/api/v1/orgs", body={"name": name, "role": role, **extra})
    token = state.operator.call("POST", f"/api/v1/orgs/{org['id']}/tokens", body={"label": "demo"})["token"]
    state.ids[name] = org["id"]
    state.clients[name] = BrokerClient(state.url, token, lang="zh-CN")


def step_orgs(state: Any) -> str:
    """The bureau's programme (CNY, Asia/Shanghai), two SMEs with their codes and names, the data bureau."""
    _org(
        state,
        PROGRAMME,
        "issuer",
        year_budget=YEAR_BUDGET_FEN,
        sme_cap=SME_CAP_FEN,
        currency="CNY",
        time_zone="Asia/Shanghai",
        name_zh=PROGRAMME,
        name_en="Xingang Municipal Science and Technology Bureau",
        uscc=_code("11990100MB0XG0000"),
        locale="zh_CN",
    )
    for short, name_zh, name_en, code in SMES:
        _org(state, short, "sme", copay_limit=50_000 * 100, uscc=code, name_zh=name_zh, name_en=name_en)
    _org(state, CUSTODIAN, "custodian", name_zh=CUSTODIAN, uscc=_code("11990100MB0XG0001"))
    found = state.operator.call("GET", f"/api/v1/orgs/by-uscc/{SMES[0][3]}")
    return gettext(
        _locale(state),
        _("programme {name}: yearly budget {budget}, cap per SME {cap}; {sme} found by its code {code}"),
    ).format(
        name=PROGRAMME,
        budget=_yuan(YEAR_BUDGET_FEN),
        cap=_yuan(SME_CAP_FEN),
        sme=found["name_zh"],
        code=found["uscc"],
    )


def step_voucher(state: Any) -> str:
    """The bureau creates its signing key and issues a ¥200,000 voucher (80 % coverage); the SME redeems it."""
    issuer = state.as_role(PROGRAMME)
    issuer.call("POST", "/api/v1/issuer/keys")
    now = int(time.time())
    sme = SMES[0][0]
    voucher = issuer.call(
        "POST",
        "/api/v1/vouchers",
        body={
            "sme_org": state.ids[sme],
            "credits": VOUCHER_FEN,
            "coverage_bps": 8_000,
            "resources": ["cpu", "memory"],
            "valid_until_s": now + 30 * DAY_S,
            "credit_expires_s": now + 365 * DAY_S,
        },
    )
    client = state.as_role(sme)
    client.call("POST", "/api/v1/vouchers/redeem", body={"token": voucher["token"]}, idempotency_key="zh-1")
    balance = client.call("GET", "/api/v1/balance")
    return gettext(_locale(state), _("voucher {jti} of {amount} redeemed; available {available}")).format(
        jti=voucher["jti"], amount=_yuan(VOUCHER_FEN), available=_yuan(int(balance["available"]))
    )


def step_data(state: Any) -> str:
    """The data bureau registers the enterprise electricity dataset; the SME asks, is approved, gets DP answers."""
    buf = io.BytesIO()
    enterprise_power().write_parquet(buf)
    custodian, sme = state.as_role(CUSTODIAN), state.as_role(SMES[0][0])
    ds = custodian.call(
        "POST",
        "/api/v1/datasets",
        body={
            "name": "xingang-enterprise-electricity-2025",
            "description": "新港市企业月度用电量（按区、行业；合成数据）",
            "format": "parquet",
            "policy": _policy(),
            "content_b64": base64.b64encode(buf.getvalue()).decode(),
        },
    )
    request = sme.call(
        "POST",
        f"/api/v1/datasets/{ds['id']}/access-requests",
        body={"purpose": "按区测算算力中心用电需求", "epsilon_micro": 2_000_000},
    )
    custodian.call(
        "POST",
        f"/api/v1/access-requests/{request['id']}/approve",
        body={"valid_for_s": 30 * DAY_S, "epsilon_micro": 2_000_000},
    )
    out = sme.call(
        "POST",
        f"/api/v1/datasets/{ds['id']}/queries",
        body={
            "queries": [
                {"kind": "mean", "column": "kwh", "group_by": "district", "epsilon_micro": 600_000},
                {"kind": "histogram", "column": "industry", "epsilon_micro": 400_000},
            ]
        },
    )
    means = "，".join(f"{k} {v:,.0f}" for k, v in out["results"][0]["values"].items() if k in DISTRICTS)
    return gettext(_locale(state), _("mean kWh per month by district: {means}; charged {cost}")).format(
        means=means, cost=_yuan(int(out["credits"]))
    )


def step_job(state: Any) -> str:
    """The SME's own PyTorch job on Ray, paid 80 % by the voucher: the bill in yuan."""
    sme = state.as_role(SMES[0][0])
    with tempfile.TemporaryDirectory(prefix="sbx-demo-code-") as tmp:
        (Path(tmp) / "train.py").write_text(TRAIN_PY)
        code = zip_dir(Path(tmp))
    body = {"milli_cpu": 1000, "memory_mib": 1024, "max_runtime_s": 300}
    job = sme.call(
        "POST",
        "/api/v1/jobs",
        body={**body, "entrypoint": "python train.py", "working_dir_zip_b64": code},
        idempotency_key="demo-zh-train-1",
    )
    deadline = time.monotonic() + 600
    while not job["settled_ms"]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the demo job is still {job['state']} after 10 minutes")
        time.sleep(0.5)
        job = sme.call("GET", f"/api/v1/jobs/{job['id']}")
    template = _("job {job} {state}: cost {cost}, vouchers paid {paid}, co-payment {copay}")
    return gettext(_locale(state), template).format(
        job=job["id"],
        state=job["state"],
        cost=_yuan(int(job["cost"] or 0)),
        paid=_yuan(int(job["voucher_paid"] or 0)),
        copay=_yuan(int(job["copaid"] or 0)),
    )


def step_report(state: Any) -> str:
    """The bureau's subsidy report of this month (Beijing time) in Chinese: HTML, CSV (BOM), XLSX, signed JSON."""
    issuer = state.as_role(PROGRAMME)
    period = time.strftime("%Y-%m", time.gmtime(time.time() + 8 * 3600))  # this month in Beijing
    document = issuer.call("GET", "/api/v1/reports/subsidy", params={"period": period})
    verify_report(document, issuer.call("GET", "/.well-known/jwks.json"))
    out = Path(state.state_dir) / "reports"
    out.mkdir(parents=True, exist_ok=True)
    stem = f"补贴报告-{period}"
    (out / f"{stem}.json").write_text(json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False))
    (out / f"{stem}.csv").write_bytes(subsidy_csv_bytes(document))
    (out / f"{stem}.xlsx").write_bytes(subsidy_xlsx(document, LOCALE))
    (out / f"{stem}.html").write_text(subsidy_html(document, LOCALE), encoding="utf-8")
    totals = document["report"]["totals"]
    labels = (_("report (printable)"), _("report (Excel)"), _("dashboard"))
    printable, excel, dashboard = (gettext(_locale(state), label) for label in labels)
    print(f"[demo]   {printable}: {(out / f'{stem}.html').resolve()}", flush=True)
    print(f"[demo]   {excel}: {(out / f'{stem}.xlsx').resolve()}", flush=True)
    print(f"[demo]   {dashboard}: {state.url}/ui?lang=zh-CN", flush=True)
    return gettext(
        _locale(state), _("report {period} ({zone}): redeemed {redeemed}, vouchers paid {paid}")
    ).format(
        period=period,
        zone=document["report"]["time_zone"],
        redeemed=_yuan(int(totals["credit_redeemed"])),
        paid=_yuan(int(totals["voucher_share"])),
    )


def chinese_steps() -> list[tuple[str, Callable[[Any], str]]]:
    """The Chinese programme's steps (titles are message ids: a zh-CN run prints them in Chinese)."""
    return [
        (_("A city science and technology bureau's programme in yuan, SMEs with their codes"), step_orgs),
        (_("Issue and redeem a voucher in yuan"), step_voucher),
        (_("The data bureau's Chinese dataset: access and DP answers"), step_data),
        (_("A voucher-paid job on Ray, billed in yuan"), step_job),
        (_("The subsidy report in Chinese (HTML, CSV, XLSX)"), step_report),
    ]
