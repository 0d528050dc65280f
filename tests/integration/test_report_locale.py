"""A CNY programme in Asia/Shanghai: report months close at Beijing midnight, amounts are fen in JSON and yuan in
the exports, the XLSX reads back equal to the JSON to the fen, the CSV starts with the BOM, and the printable
HTML exists in Chinese and English (SQLite + PostgreSQL)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from openpyxl import load_workbook
from sqlalchemy import select

from broker.compute import launch_name
from broker.compute.fake import FakeBackend, FakeScript
from broker.db import tables as t
from broker.db import vouchers as vouchers_db
from broker.db.orgs import Identity, Principal
from broker.services.jobs import JobRequest
from broker.services.registry import Services
from broker.services.report_exports import MONEY_COLUMNS, subsidy_csv_bytes, subsidy_xlsx
from broker.services.reports import parse_period
from broker.web.render import subsidy_html
from broker.web.views import current_period, programme_zone
from common.clock import FakeClock
from common.errors import InvalidInput
from common.resources import Resources
from tests.conftest import BACKENDS, World

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
SHANGHAI = ZoneInfo("Asia/Shanghai")
HUAWEI = "914403001922038216"  # a real published code (tests/unit/test_uscc.py)
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "reports"


def _cny(services: Services, world: World) -> None:
    settings = vouchers_db.ProgrammeSettings()  # CNY, Asia/Shanghai, zh_CN
    services.container.db.write(
        lambda conn: vouchers_db.set_programme(
            conn, org_id=world.issuer.org_id, year_budget=10**9, sme_cap=10**8, settings=settings
        )
    )


def _chinese_sme(services: Services, world: World) -> Principal:
    identity = Identity(uscc=HUAWEI, name_zh="深圳市示例智能科技有限公司", name_en="Shenzhen Example AI")
    org = services.orgs.create(world.operator, name="示例智能", role="sme", identity=identity)
    services.ledger.set_copay_limit(world.operator, org_id=org["id"], limit=10**6)
    token = services.orgs.create_token(None, org_id=org["id"])["token"]
    principal = services.orgs.authenticate(token)
    assert principal is not None
    return principal


def _settle_one_job(world: World, fake: FakeBackend, sme: Principal) -> dict[str, Any]:
    request = JobRequest("python x.py", Resources(milli_cpu=1000, gpus=0, memory_mib=2048), 600, 0)
    job = world.services.jobs.submit(sme, request, idempotency_key=None)
    fake.script(launch_name(job["id"]), FakeScript(run_ms=6_000))
    for _ in range(6):
        world.clock.advance(3_500)
        world.services.jobs.reconcile_pass()
        world.services.jobs.admission_pass()
    done = world.services.jobs.get(world.operator, job_id=job["id"])
    assert done["settled_ms"], done
    return done


@pytest.fixture
def clock() -> FakeClock:
    """The test world starts at 2026-12-01 07:29:40 Beijing time (23:29:40 UTC on 30 November)."""
    return FakeClock(start_ms=int(datetime(2026, 11, 30, 23, 29, 40, tzinfo=UTC).timestamp()) * 1000)


@pytest.fixture
def shanghai_job(services: Services, world: World, clock: FakeClock) -> tuple[dict[str, Any], Principal]:
    """A job settled at about 2026-12-01 07:30 Beijing time (23:30 UTC on 30 November)."""
    fake = FakeBackend(clock, capacity=Resources(milli_cpu=8000, gpus=0, memory_mib=32_768))
    services.container.use_compute(fake)
    _cny(services, world)
    sme = _chinese_sme(services, world)
    token = world.voucher(sme=sme, credits=1_234_56, coverage_bps=5_000)["token"]  # ¥1,234.56
    services.vouchers.redeem(sme, token=token, idempotency_key=None)
    return _settle_one_job(world, fake, sme), sme


def test_periods_are_beijing_months(shanghai_job: tuple[dict[str, Any], Principal], world: World) -> None:
    job, sme = shanghai_job
    settled = datetime.fromtimestamp(job["settled_ms"] / 1000, tz=SHANGHAI)
    assert (settled.year, settled.month, settled.day, settled.hour) == (2026, 12, 1, 7)  # UTC: 30 November
    assert datetime.fromtimestamp(job["settled_ms"] / 1000, tz=UTC).month == 11

    december = world.services.reports.subsidy(world.issuer, period="2026-12")["report"]
    november = world.services.reports.subsidy(world.issuer, period="2026-11")["report"]
    row = next(r for r in december["rows"] if r["org_id"] == sme.org_id)
    assert row["jobs"] == 1 and row["credit_redeemed"] == 1_234_56 and row["cost"] > 0
    assert all(r["jobs"] == 0 and r["credit_redeemed"] == 0 for r in november["rows"])
    assert december["time_zone"] == "Asia/Shanghai" and december["period"]["time_zone"] == "Asia/Shanghai"
    assert december["currency"] == "CNY" and december["minor_unit_digits"] == 2
    assert december["period"]["start_ms"] == parse_period("2026-12", "Asia/Shanghai").start_ms
    assert (
        datetime.fromtimestamp(december["period"]["start_ms"] / 1000, tz=UTC).hour == 16
    )  # Beijing midnight
    assert row["uscc"] == HUAWEI and row["name_zh"] == "深圳市示例智能科技有限公司"
    day = next(d for d in december["over_time"] if d["voucher_share"] or d["copay"])
    assert datetime.fromtimestamp(day["start_ms"] / 1000, tz=SHANGHAI).day == 1  # 1 December, Beijing


def test_xlsx_reads_back_equal_to_the_json_to_the_fen(
    shanghai_job: tuple[dict[str, Any], Principal], world: World
) -> None:
    document = world.services.reports.subsidy(world.issuer, period="2026-12")
    report = document["report"]
    book = load_workbook(io.BytesIO(subsidy_xlsx(document, "zh_CN")))
    sheet = book.active
    assert sheet is not None and sheet.title == "补贴报告"
    values = [list(r) for r in sheet.iter_rows(values_only=True)]
    assert ["时区", "Asia/Shanghai"] in [r[:2] for r in values] and ["币种", "CNY"] in [r[:2] for r in values]
    header_at = next(i for i, r in enumerate(values) if r and r[0] == "企业")
    header = values[header_at]
    money_at = {c: header.index(label) for c, label in zip(MONEY_COLUMNS, _money_labels(), strict=True)}
    rows = values[header_at + 1 :]
    assert len(rows) == len(report["rows"]) + 1
    for cells, expected in zip(rows, [*report["rows"], report["totals"]], strict=True):
        for column, index in money_at.items():
            assert isinstance(cells[index], int | float)  # typed number cells, not text
            assert Decimal(str(cells[index])) * 100 == expected[column], column
    first = sheet.cell(row=header_at + 2, column=money_at["cost"] + 1)
    assert "¥" in first.number_format


def _money_labels() -> list[str]:
    return ["费用", "创新券支付", "企业自付", "已兑付额度", "过期额度", "剩余额度"]


def test_csv_has_the_bom_and_yuan_columns(
    shanghai_job: tuple[dict[str, Any], Principal], world: World
) -> None:
    document = world.services.reports.subsidy(world.issuer, period="2026-12")
    data = subsidy_csv_bytes(document)
    assert data.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    row = next(r for r in rows if r["uscc"] == HUAWEI)
    assert row["name_zh"] == "深圳市示例智能科技有限公司"
    assert (row["period"], row["time_zone"], row["currency"]) == ("2026-12", "Asia/Shanghai", "CNY")
    assert Decimal(row["credit_redeemed_cny"]) == Decimal("1234.56") and int(row["credit_redeemed"]) == 123456


def test_printable_report_in_both_languages(
    shanghai_job: tuple[dict[str, Any], Principal], world: World
) -> None:
    document = world.services.reports.subsidy(world.issuer, period="2026-12")
    chinese, english = subsidy_html(document, "zh_CN"), subsidy_html(document, "en")
    assert '<html lang="zh-CN">' in chinese and "补贴报告" in chinese and HUAWEI in chinese
    assert "¥1,234.56" in chinese and "Asia/Shanghai" in chinese and "（盖章）" in chinese
    assert "Subsidy report" in english and "CN¥1,234.56" in english and "Official seal" in english
    assert "补贴报告" not in english
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "subsidy-zh_CN.html").write_text(chinese, encoding="utf-8")
    (ARTIFACTS / "subsidy-en.html").write_text(english, encoding="utf-8")


def test_year_budgets_count_in_the_programme_year(services: Services, world: World) -> None:
    _cny(services, world)
    new_year_beijing = int(datetime(2027, 1, 1, 0, 30, tzinfo=SHANGHAI).timestamp())  # 2026-12-31 16:30 UTC
    issued = world.voucher(credits=100, valid_from_s=new_year_beijing, valid_s=60 * 86_400)
    year = services.container.db.read(
        lambda conn: conn.execute(select(t.vouchers.c.year).where(t.vouchers.c.jti == issued["jti"])).scalar()
    )
    assert year == 2027


def test_data_access_report_names_its_zone(world: World) -> None:
    report = world.services.reports.data_access(world.operator, period="2026-12", time_zone="Asia/Shanghai")
    assert report["report"]["time_zone"] == "Asia/Shanghai"
    assert report["report"]["period"]["start_ms"] == parse_period("2026-12", "Asia/Shanghai").start_ms
    with pytest.raises(InvalidInput) as info:
        world.services.reports.data_access(world.operator, period="2026-12", time_zone="Mars/Olympus")
    assert info.value.code == "unknown_time_zone"


def test_xlsx_text_is_never_a_formula(world: World) -> None:
    document = world.services.reports.subsidy(world.issuer, period="2026-12")
    document["report"]["rows"] = [dict(document["report"]["totals"], name='=HYPERLINK("http://x")')]
    sheet = load_workbook(io.BytesIO(subsidy_xlsx(document, "en"))).active
    assert sheet is not None
    cell = next(c for row in sheet.iter_rows() for c in row if c.value == '=HYPERLINK("http://x")')
    assert cell.data_type == "s"


def test_the_dashboards_month_is_the_programmes_month(services: Services, world: World) -> None:
    """At 07:30 Beijing time on 1 December (23:30 UTC on 30 November) the issuer's month is December."""
    _cny(services, world)
    moment = int(datetime(2026, 11, 30, 23, 30, tzinfo=UTC).timestamp()) * 1000
    assert programme_zone(services, world.issuer.org_id) == "Asia/Shanghai"
    assert current_period(moment, "Asia/Shanghai") == "2026-12" and current_period(moment) == "2026-11"
