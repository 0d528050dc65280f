"""Subsidy reports for funders and data-access reports for custodians, signed by the broker.

What a subsidy report counts, for one programme (issuer) and one period ``[start, end)`` in UTC:

* a job belongs to the programme's report when its hold was **settled in the period** and the programme's
  vouchers paid part of it (a positive ``settle`` entry on the programme's ``spent`` account);
* ``voucher_share`` is that entry's amount; ``copay`` is the hold's settled cost minus every programme's
  voucher legs (what the settlement put on the SME's ``copaid`` account); ``cost`` is their sum (a job paid
  by two programmes shows its co-payment in both reports, each with its own voucher share);
* a settled hold no programme paid any part of (the SME's co-payment alone: no voucher line, or voucher
  lines that settled nothing) counts in the report of every programme whose credit the SME was granted by
  the end of that month: ``jobs`` += 1, ``copay`` += its cost. So, per SME and in total, ``cost`` =
  ``voucher_share`` + ``copay``, and ``copay`` equals what the ledger put on the SME's ``copaid`` account for
  the jobs settled in the period, to the unit (an SME of two programmes shows such holds in both reports);
* CPU-, GPU- and GiB-hours are the usage records of those jobs;
* ``credit_redeemed`` is what left the programme's source account into the SME's grants in the period,
  ``credit_expired`` what reached the programme's ``expired`` account for the SME in the period,
  ``credit_left`` the balance of the SME's grants from this programme at the period's end (credit on hold
  for a running job is in neither).

Jobs, money and usage are read from the subsidy roll-up (:mod:`broker.db.subsidy`), which each settlement
updates in its own transaction, so it always equals the sums over the ``settle`` entries and usage records
(tests recompute it from the ledger); credit flows are ``GROUP BY`` queries over the programme's accounts.
The per-SME sums go through :func:`quotas.report.build_report`. A long period is read month by month,
reporting progress after each month.

The JSON document carries a detached JWS by the broker's report key (``typ`` ``sbx-subsidy-report+jws`` or
``sbx-data-access-report+jws``) over the canonical bytes of its ``report`` member; see
:mod:`broker.services.report_signing` for what a verifier checks.
"""

from __future__ import annotations

import bisect
import csv
import io
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Connection, text

from broker.container import Container
from broker.db import jobs as jobs_db
from broker.db.orgs import Organisation, Principal, get_org, list_orgs
from broker.db.vouchers import Programme, get_programme
from broker.services.access import require_role
from broker.services.report_signing import (  # re-exported: callers import them from here
    ReportSignatureInvalid as ReportSignatureInvalid,
)
from broker.services.report_signing import sign_report
from broker.services.report_signing import verify_report as verify_report
from common.errors import DomainError, InvalidInput, NotFound
from common.money import minor_digits
from common.numbers import OutOfRange, check_text
from quotas.report import ReportRow, SmeTotals, build_report

log = logging.getLogger("sbx.reports")
Progress = Callable[[int, int, str], None]
"""``progress(done, total, what)``: called after each month of a report is aggregated."""

REPORT_FORMAT = "sbx-subsidy-report/1"
ACCESS_FORMAT = "sbx-data-access-report/1"
_MAX_MONTHS = 120
_PERIOD_RE = re.compile(r"(\d{4})(?:-(\d{2}))?(?:\.\.(\d{4})-(\d{2}))?", re.ASCII)
_LAST_YEAR = 9998  # the month after December 9999 is not a datetime


@dataclass(frozen=True, slots=True)
class Period:
    """A half-open interval ``[start_ms, end_ms)`` (UTC milliseconds) made of whole calendar months of the
    time zone ``zone`` (a programme's; months begin at its local midnight), with its label."""

    label: str
    start_ms: int
    end_ms: int
    months: tuple[tuple[int, int], ...]  # (start_ms, end_ms) of each month, in order
    zone: str = "UTC"


def _month_start_ms(year: int, month: int, zone: ZoneInfo | timezone = UTC) -> int:
    return int(datetime(year, month, 1, tzinfo=zone).timestamp()) * 1000


def _next(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def parse_period(label: str, zone: str = "UTC") -> Period:
    """Parse ``2026-11`` (a month), ``2026`` (a year) or ``2026-01..2026-06`` (months, inclusive) as calendar
    months of the IANA time zone ``zone`` (a programme's: ``Asia/Shanghai`` months begin at 16:00 UTC).

    Bounded like every parsed string (``common.numbers``): printable ASCII digits only, years 1970..9998."""
    tz = ZoneInfo(zone)
    check_text(label, "period")
    match = _PERIOD_RE.fullmatch(label.strip())
    if match is None:
        raise InvalidInput(
            f"period {label!r}: write a month (2026-11), a year (2026) or a range (2026-01..2026-06)"
        )
    year, month, end_year, end_month = match.groups()
    if month is None and end_year is not None:
        raise InvalidInput(f"period {label!r}: a range goes from month to month (2026-01..2026-06)")
    first = (int(year), int(month) if month else 1)
    last = (int(end_year), int(end_month)) if end_year else (first if month else (int(year), 12))
    for y, m in (first, last):
        if not 1 <= m <= 12 or not 1970 <= y <= _LAST_YEAR:
            raise OutOfRange(
                f"period {label!r}: {y:04d}-{m:02d} is not a calendar month in 1970..{_LAST_YEAR}"
            )
    if last < first:
        raise InvalidInput(f"period {label!r} ends before it starts")
    months: list[tuple[int, int]] = []
    cursor = first
    while cursor <= last:
        if len(months) >= _MAX_MONTHS:
            raise InvalidInput(f"period {label!r} spans more than {_MAX_MONTHS} months; ask for less")
        after = _next(*cursor)
        months.append((_month_start_ms(*cursor, tz), _month_start_ms(*after, tz)))
        cursor = after
    return Period(label.strip(), months[0][0], months[-1][1], tuple(months), zone)


# -- SQL aggregation ----------------------------------------------------------------------------------

# Settled jobs, money and usage come from the roll-up the settlements keep (broker.db.subsidy): one row per SME
# and day, so a report costs the same for a thousand jobs as for a million.
_SETTLED = text(
    """
    SELECT org_id, day_ms, jobs, voucher, copay, cpu, gpu, memory
    FROM subsidy_daily
    WHERE issuer_org = :issuer AND day_ms >= :start AND day_ms < :end
    """
)
# Settled holds no programme paid for (broker.db.subsidy), for the SMEs granted this programme's credit.
_COPAY_ONLY = text(
    """
    SELECT c.org_id AS org_id, c.day_ms AS day_ms, c.jobs AS jobs, c.copay AS copay, c.cpu AS cpu,
           c.gpu AS gpu, c.memory AS memory
    FROM subsidy_copay c
    WHERE c.day_ms >= :start AND c.day_ms < :end
      AND c.org_id IN (SELECT g.org_id FROM grants g WHERE g.issuer_org = :issuer AND g.created_ms < :end)
    """
)
_ACCOUNT_FLOW = text(
    """
    SELECT e.org_id AS org_id, SUM(e.amount) AS amount
    FROM entries e
    WHERE e.account_id = :account AND e.created_ms >= :start AND e.created_ms < :end
    GROUP BY e.org_id
    """
)
_LEFT = text(
    """
    SELECT g.org_id AS org_id, SUM(e.amount) AS amount
    FROM grants g JOIN entries e ON e.account_id = g.account_id
    WHERE g.issuer_org = :issuer AND e.created_ms < :end
    GROUP BY g.org_id
    """
)
_GRANTEES = text("SELECT DISTINCT org_id FROM grants WHERE issuer_org = :issuer AND created_ms < :end")
_ISSUER_ACCOUNTS = text(
    "SELECT kind, id FROM accounts WHERE org_id = :issuer AND grant_id IS NULL "
    "AND kind IN ('programme', 'spent', 'expired')"
)


@dataclass
class _Sums:
    jobs: int = 0
    cpu: int = 0
    gpu: int = 0
    mem: int = 0
    voucher: int = 0
    copay: int = 0
    redeemed: int = 0
    expired: int = 0
    left: int = 0


@dataclass(frozen=True, slots=True)
class SubsidySums:
    """What the SQL aggregation yields: per-SME sums and, per UTC day, (voucher share, co-payment)."""

    totals: list[SmeTotals]
    daily: dict[int, tuple[int, int]]


def _aggregate_month(
    conn: Connection,
    issuer_org: str,
    acc: Mapping[str, int],
    window_ms: tuple[int, int],
    sums: dict[str, _Sums],
    daily: dict[int, list[int]],
) -> None:
    """Add one month's settled jobs, usage, redemptions and expiries to ``sums`` (per SME) and ``daily``."""
    start, end = window_ms
    for r in conn.execute(_SETTLED, {"issuer": issuer_org, "start": start, "end": end}):
        s = sums.setdefault(r.org_id, _Sums())
        s.jobs += int(r.jobs)
        s.voucher += int(r.voucher)
        s.copay += int(r.copay)
        s.cpu += int(r.cpu)
        s.gpu += int(r.gpu)
        s.mem += int(r.memory)
        day = daily.setdefault(int(r.day_ms), [0, 0])
        day[0] += int(r.voucher)
        day[1] += int(r.copay)
    for r in conn.execute(_COPAY_ONLY, {"issuer": issuer_org, "start": start, "end": end}):
        s = sums.setdefault(r.org_id, _Sums())
        s.jobs += int(r.jobs)
        s.copay += int(r.copay)
        s.cpu += int(r.cpu)
        s.gpu += int(r.gpu)
        s.mem += int(r.memory)
        daily.setdefault(int(r.day_ms), [0, 0])[1] += int(r.copay)
    for r in conn.execute(_ACCOUNT_FLOW, {"account": acc["programme"], "start": start, "end": end}):
        if r.org_id is not None:
            sums.setdefault(r.org_id, _Sums()).redeemed += -int(r.amount)
    for r in conn.execute(_ACCOUNT_FLOW, {"account": acc["expired"], "start": start, "end": end}):
        if r.org_id is not None:
            sums.setdefault(r.org_id, _Sums()).expired += int(r.amount)


def subsidy_totals(
    conn: Connection, *, issuer_org: str, period: Period, progress: Progress | None = None
) -> SubsidySums:
    """Per-SME integer sums of one programme over ``period`` (and settled money per day), aggregated in SQL
    month by month; ``progress`` is called after each month."""
    acc = {str(r.kind): int(r.id) for r in conn.execute(_ISSUER_ACCOUNTS, {"issuer": issuer_org})}
    if set(acc) != {"programme", "spent", "expired"}:
        raise NotFound(f"no programme {issuer_org}")
    sums: dict[str, _Sums] = {}
    daily: dict[int, list[int]] = {}
    for number, (start, end) in enumerate(period.months, start=1):
        _aggregate_month(conn, issuer_org, acc, (start, end), sums, daily)
        if progress is not None:
            progress(number, len(period.months), _month_label(start, period.zone))
    for r in conn.execute(_GRANTEES, {"issuer": issuer_org, "end": period.end_ms}):
        sums.setdefault(r.org_id, _Sums())
    for r in conn.execute(_LEFT, {"issuer": issuer_org, "end": period.end_ms}):
        if r.org_id in sums:
            sums[r.org_id].left = int(r.amount)
    totals = [
        SmeTotals(
            org,
            s.jobs,
            s.cpu,
            s.gpu,
            s.mem,
            s.voucher + s.copay,
            s.voucher,
            s.copay,
            s.redeemed,
            s.expired,
            s.left,
        )
        for org, s in sums.items()
    ]
    return SubsidySums(totals, {k: (v[0], v[1]) for k, v in daily.items()})


def _over_time(span: Period, daily: Mapping[int, tuple[int, int]]) -> list[dict[str, Any]]:
    """Settled voucher share and co-payment per day (a one-month period) or per month, every bucket present."""
    starts = _local_days(span) if len(span.months) == 1 else [start for start, _ in span.months]
    series = {start: [0, 0] for start in starts}
    for ts, (voucher, copay) in daily.items():
        key = starts[bisect.bisect_right(starts, ts) - 1]
        series[key][0] += voucher
        series[key][1] += copay
    return [{"start_ms": k, "voucher_share": v[0], "copay": v[1]} for k, v in sorted(series.items())]


def _local_days(span: Period) -> list[int]:
    """The start (UTC ms) of each local day of a one-month period, in the period's zone (DST-safe)."""
    tz = ZoneInfo(span.zone)
    first = datetime.fromtimestamp(span.start_ms / 1000, tz=tz).date()
    starts = []
    for offset in range(31):
        day = first + timedelta(days=offset)
        start = int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()) * 1000
        if start >= span.end_ms:
            break
        starts.append(start)
    return starts


def _month_label(start_ms: int, zone: str = "UTC") -> str:
    return datetime.fromtimestamp(start_ms / 1000, tz=ZoneInfo(zone)).strftime("%Y-%m")


# -- documents ------------------------------------------------------------------------------------------
def _fraction(value: Fraction) -> str:
    return f"{value.numerator}/{value.denominator}"


def row_dict(row: ReportRow, name: str) -> dict[str, Any]:
    """One report row as JSON: credits as integers, hours exact (``"n/d"``) and rounded for display."""
    shown = row.display()
    return {
        "org_id": row.org_id,
        "name": name,
        "jobs": row.jobs,
        "cpu_hours": _fraction(row.cpu_hours),
        "gpu_hours": _fraction(row.gpu_hours),
        "gib_hours": _fraction(row.gib_hours),
        "cpu_hours_display": shown["cpu_hours"],
        "gpu_hours_display": shown["gpu_hours"],
        "gib_hours_display": shown["gib_hours"],
        "cost": row.cost,
        "voucher_share": row.voucher_share,
        "copay": row.copay,
        "credit_redeemed": row.credit_redeemed,
        "credit_expired": row.credit_expired,
        "credit_left": row.credit_left,
    }


CSV_COLUMNS = (
    "org_id",
    "name",
    "jobs",
    "cpu_hours_display",
    "gpu_hours_display",
    "gib_hours_display",
    "cost",
    "voucher_share",
    "copay",
    "credit_redeemed",
    "credit_expired",
    "credit_left",
    "name_zh",
    "uscc",
)


def subsidy_csv(document: Mapping[str, Any]) -> str:
    """The report's rows and totals as CSV (hours rounded to 2 decimals; amounts exact in the smallest unit),
    each row saying the period, its time zone and the currency (a CSV has no header block)."""
    report = document["report"]
    context = [report["period"]["label"], report.get("time_zone", "UTC"), report.get("currency", "credits")]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([c.removesuffix("_display") for c in CSV_COLUMNS] + ["period", "time_zone", "currency"])
    for row in [*report["rows"], report["totals"]]:
        writer.writerow([_csv_safe("" if row.get(c) is None else row[c]) for c in CSV_COLUMNS] + context)
    return out.getvalue()


def _csv_safe(value: object) -> object:
    """Defuse spreadsheet formulas in organisation names (CSV injection)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _check_zone(zone: str) -> str:
    """An IANA time zone name, or ``unknown_time_zone``."""
    check_text(zone, "time_zone")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(
            f"unknown time zone {zone!r} (IANA, e.g. Asia/Shanghai)", code="unknown_time_zone"
        ) from None
    return zone


def _programme_settings(conn: Connection, issuer: str) -> Programme:
    """The programme's currency and zone; an issuer whose budget was never set reports in credits and UTC."""
    try:
        return get_programme(conn, issuer)
    except NotFound:
        return Programme(issuer, 0, 0)


def _period_dict(span: Period) -> dict[str, Any]:
    return {"label": span.label, "start_ms": span.start_ms, "end_ms": span.end_ms, "time_zone": span.zone}


def _org_identity(org: Organisation) -> dict[str, Any]:
    """An organisation as a report names it: id, name, registered names and unified social credit code."""
    return {
        "org_id": org.id,
        "name": org.name,
        "name_zh": org.name_zh,
        "name_en": org.name_en,
        "uscc": org.uscc,
    }


def _name(smes: Mapping[str, Organisation], org_id: str) -> str:
    org = smes.get(org_id)
    return org_id if org is None else org.name


def _identified(row: dict[str, Any], org: Organisation | None) -> dict[str, Any]:
    """A report row with the SME's registered Chinese name and unified social credit code (``None`` if unknown)."""
    return row | {"name_zh": org.name_zh if org else None, "uscc": org.uscc if org else None}


class ReportService:
    """Builds and signs reports from the ledger, usage records and privacy charges."""

    def __init__(self, c: Container) -> None:
        self.c = c

    def subsidy(
        self,
        principal: Principal,
        *,
        period: str,
        issuer_org: str | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """The signed subsidy report of a programme: issuers their own, operators any (named, or the only one)."""
        require_role(principal, "issuer", "operator")
        parse_period(period)  # refused before anything is read
        now = self.c.clock.now_ms()

        def tx(conn: Connection) -> dict[str, Any]:
            issuer = self._programme(conn, principal, issuer_org)
            programme = _programme_settings(conn, issuer)
            span = parse_period(period, programme.time_zone)
            sums = subsidy_totals(conn, issuer_org=issuer, period=span, progress=progress)
            built = build_report(sums.totals)
            smes = {o.id: o for o in list_orgs(conn, role="sme")}
            report = {
                "format": REPORT_FORMAT,
                "programme": _org_identity(get_org(conn, issuer)),
                "period": _period_dict(span),
                "generated_ms": now,
                "currency": programme.currency or "credits",
                "minor_unit_digits": minor_digits(programme.currency),
                "time_zone": span.zone,
                "default_locale": programme.default_locale,
                "rows": [
                    _identified(row_dict(r, _name(smes, r.org_id)), smes.get(r.org_id)) for r in built.rows
                ],
                "totals": row_dict(built.totals, "Total"),
                "over_time": _over_time(span, sums.daily),
            }
            return sign_report(report, key_pem=self.c.broker_key_pem, kid=self.c.broker_kid)

        return self.c.db.read(tx)

    def check_subsidy_request(self, principal: Principal, *, period: str, issuer_org: str | None) -> None:
        """Refuse a subsidy report request that cannot succeed (role, period, programme) before anything is
        streamed, so a bad request is a 4xx status, never a 200 with an error line inside."""
        require_role(principal, "issuer", "operator")
        parse_period(period)
        self.c.db.read(lambda conn: self._programme(conn, principal, issuer_org))

    def _programme(self, conn: Connection, principal: Principal, issuer_org: str | None) -> str:
        """The programme a caller may report on (a non-operator naming another gets the 404 of a missing one)."""
        if principal.role == "issuer":
            if issuer_org not in (None, principal.org_id):
                raise NotFound(f"no programme {issuer_org}")
            return principal.org_id
        if issuer_org is not None:
            if get_org(conn, issuer_org).role != "issuer":
                raise NotFound(f"no programme {issuer_org}")
            return issuer_org
        issuers = list_orgs(conn, role="issuer")
        if len(issuers) != 1:
            raise InvalidInput(
                f"there are {len(issuers)} programmes; name one with issuer_org "
                f"({', '.join(o.id for o in issuers[:10])})"
            )
        return issuers[0].id

    def data_access(
        self, principal: Principal, *, period: str, custodian_org: str | None = None, time_zone: str = "UTC"
    ) -> dict[str, Any]:
        """Signed data-access report: per dataset and SME, releases and ε/δ spent in the period (custodians
        their own datasets, operators one custodian's or all)."""
        require_role(principal, "custodian", "operator")
        span = parse_period(period, _check_zone(time_zone))
        scope = principal.org_id if principal.role == "custodian" else custodian_org
        now = self.c.clock.now_ms()

        def tx(conn: Connection) -> dict[str, Any]:
            query = _ACCESS_ALL if scope is None else _ACCESS_ONE
            rows = conn.execute(query, {"custodian": scope, "start": span.start_ms, "end": span.end_ms})
            names = {o.id: o.name for o in list_orgs(conn)}
            lines = [
                {
                    "dataset_id": r.dataset_id,
                    "dataset": r.dataset_name,
                    "custodian_org": r.custodian_org,
                    "sme_org": r.sme_org,
                    "sme": names.get(r.sme_org, r.sme_org),
                    "releases": int(r.releases),
                    "queries": int(r.queries),
                    "trainings": int(r.trainings),
                    "epsilon_micro": int(r.eps),
                    "delta_e12": int(r.delta),
                }
                for r in rows
            ]
            report = {
                "format": ACCESS_FORMAT,
                "custodian_org": scope,
                "period": _period_dict(span),
                "time_zone": span.zone,
                "generated_ms": now,
                "rows": lines,
                "totals": {
                    "releases": sum(x["releases"] for x in lines),
                    "epsilon_micro": sum(x["epsilon_micro"] for x in lines),
                    "delta_e12": sum(x["delta_e12"] for x in lines),
                },
            }
            return sign_report(report, key_pem=self.c.broker_key_pem, kid=self.c.broker_kid)

        return self.c.db.read(tx)

    def in_use(self, principal: Principal) -> dict[str, Any]:
        """Resources of admitted and running jobs per SME and in total, with the cluster's capacity (operators;
        an SME gets its own line only). Capacity is ``None`` when the compute backend cannot say."""
        require_role(principal, "operator", "sme")
        used = self.c.db.read(jobs_db.in_use)
        if principal.role == "sme":
            used = {k: v for k, v in used.items() if k == principal.org_id}
        per_org = {
            org: {"milli_cpu": r.milli_cpu, "gpus": r.gpus, "memory_mib": r.memory_mib, "jobs": n}
            for org, (r, n) in used.items()
        }
        total = {
            key: sum(int(v[key]) for v in per_org.values())
            for key in ("milli_cpu", "gpus", "memory_mib", "jobs")
        }
        capacity: dict[str, int] | None = None
        if principal.role == "operator":
            try:
                cap = self.c.compute.capacity()
                capacity = {"milli_cpu": cap.milli_cpu, "gpus": cap.gpus, "memory_mib": cap.memory_mib}
            except DomainError as exc:  # a backend that is down must not take the dashboard with it
                log.warning("dashboard: compute capacity unavailable (%s)", exc.code)
        return {"per_org": per_org, "total": total, "capacity": capacity}

    def jwks(self) -> dict[str, Any]:
        """The broker's own public keys, current and retired, as a JWK Set (what verifies its reports)."""
        return self.c.broker_keys.jwks()


_ACCESS_SELECT = """
    SELECT c.dataset_id AS dataset_id, d.name AS dataset_name, d.custodian_org AS custodian_org,
           c.sme_org AS sme_org, SUM(CASE WHEN c.status = 'answered' THEN 1 ELSE 0 END) AS releases,
           SUM(CASE WHEN c.kind = 'query' THEN 1 ELSE 0 END) AS queries,
           SUM(CASE WHEN c.kind = 'training' THEN 1 ELSE 0 END) AS trainings,
           SUM(c.epsilon_micro) AS eps, SUM(c.delta_e12) AS delta
    FROM privacy_charges c JOIN datasets d ON d.id = c.dataset_id
    WHERE c.created_ms >= :start AND c.created_ms < :end {extra}
    GROUP BY c.dataset_id, d.name, d.custodian_org, c.sme_org
    ORDER BY d.name, c.dataset_id, c.sme_org
"""
_ACCESS_ALL = text(_ACCESS_SELECT.format(extra=""))
_ACCESS_ONE = text(_ACCESS_SELECT.format(extra="AND d.custodian_org = :custodian"))
