"""Report routes: the signed subsidy report (issuers, operators) and data-access report (custodians,
operators), as JSON, CSV or printable HTML, optionally streamed with progress as NDJSON."""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse, StreamingResponse

from broker.api.deps import PrincipalDep, ServicesDep
from broker.api.policy import policy
from broker.errors import error_body, status_for
from broker.i18n import negotiate
from broker.services.report_exports import subsidy_csv_bytes, subsidy_xlsx
from broker.web.render import access_html, subsidy_html
from common.errors import DomainError

router = APIRouter(prefix="/api/v1")
log = logging.getLogger("sbx.api.reports")

Format = Literal["json", "csv", "xlsx", "html"]
PeriodQuery = Query(
    min_length=4,
    max_length=20,
    description="2026-11, 2026 or 2026-01..2026-06 (in the programme's time zone).",
)
LangQuery = Query(
    default=None, max_length=16, description="zh-CN or en (default: Accept-Language, then the programme's)."
)
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def _rendered(
    document: dict[str, Any], fmt: Format, render_html: Callable[[dict[str, Any], str], str], locale: str
) -> Response:
    if fmt == "csv":
        return Response(subsidy_csv_bytes(document), media_type="text/csv; charset=utf-8")
    if fmt == "xlsx":
        name = f"subsidy-{document['report']['period']['label']}.xlsx"
        disposition = {"Content-Disposition": f'attachment; filename="{name}"'}
        return Response(subsidy_xlsx(document, locale), media_type=XLSX, headers=disposition)
    if fmt == "html":
        return HTMLResponse(render_html(document, locale))
    return Response(json.dumps(document, sort_keys=True), media_type="application/json")


def _locale(request: Request, lang: str | None, document: dict[str, Any]) -> str:
    """The reader's language: ``?lang=``, then ``Accept-Language``, then the programme's default."""
    default = document["report"].get("default_locale")
    return negotiate(lang, accept_language=request.headers.get("accept-language"), default=default)


@router.get("/reports/subsidy", openapi_extra=policy("issuer", "operator"))
def subsidy_report(
    request: Request,
    principal: PrincipalDep,
    services: ServicesDep,
    period: str = PeriodQuery,
    issuer_org: str | None = Query(default=None, max_length=40),
    format: Format = "json",
    stream: bool = Query(default=False, description="NDJSON: progress lines, then the result line."),
    lang: str | None = LangQuery,
) -> Response:
    """The programme's signed subsidy report for a period (issuers: their own; operators: any)."""
    if stream:
        # Validated before the first byte: a bad period or programme is its 4xx, not a 200 stream.
        services.reports.check_subsidy_request(principal, period=period, issuer_org=issuer_org)
        return _stream(
            lambda progress: services.reports.subsidy(
                principal, period=period, issuer_org=issuer_org, progress=progress
            )
        )
    document = services.reports.subsidy(principal, period=period, issuer_org=issuer_org)
    return _rendered(document, format, subsidy_html, _locale(request, lang, document))


@router.get("/reports/data-access", openapi_extra=policy("custodian", "operator"))
def data_access_report(
    request: Request,
    principal: PrincipalDep,
    services: ServicesDep,
    period: str = PeriodQuery,
    custodian_org: str | None = Query(default=None, max_length=40),
    format: Literal["json", "html"] = "json",
    lang: str | None = LangQuery,
    time_zone: str = Query(default="UTC", max_length=64, description="IANA zone of the period's months."),
) -> Response:
    """Signed data-access report: per dataset and SME, releases and ε spent (custodians: their datasets)."""
    document = services.reports.data_access(
        principal, period=period, custodian_org=custodian_org, time_zone=time_zone
    )
    return _rendered(document, format, access_html, _locale(request, lang, document))


def _stream(build: Callable[[Callable[[int, int, str], None]], dict[str, Any]]) -> StreamingResponse:
    """Run ``build`` in a thread; yield one NDJSON line per progress call, then the document (or error)."""
    events: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def progress(done: int, total: int, what: str) -> None:
        events.put({"progress": {"done": done, "total": total, "what": what}})

    def work() -> None:
        try:
            events.put({"result": build(progress)})
        except DomainError as exc:
            events.put({"error": error_body(exc.code, exc.detail), "status": status_for(exc)})
        except Exception:  # the stream has started: report the failure in-band, log the cause
            log.exception("report generation failed")
            events.put(
                {"error": error_body("internal_error", "the report could not be built"), "status": 500}
            )
        finally:
            events.put(None)

    threading.Thread(target=work, name="sbx-report", daemon=True).start()

    def lines() -> Iterator[bytes]:
        while (event := events.get()) is not None:
            yield (json.dumps(event, sort_keys=True) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson")
