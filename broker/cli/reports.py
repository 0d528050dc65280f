"""``sbx report``: subsidy and data-access reports, and their verification.

``sbx report subsidy`` asks the broker for the signed report as an NDJSON stream (progress lines, then the
document), prints progress on stderr, and writes JSON, CSV or printable HTML to ``--out`` or stdout. The CSV
and HTML are rendered from the signed JSON, so all three carry the same numbers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import httpx
import typer

from broker.cli.client import EXIT_UNAVAILABLE, EXIT_VERIFY_FAILED, cli_locale, emit, fail
from broker.services.report_exports import subsidy_csv_bytes, subsidy_xlsx
from broker.services.report_signing import load_jwks, load_report
from broker.services.reports import ReportSignatureInvalid, subsidy_csv, verify_report
from broker.web.render import access_html, subsidy_html

report_app = typer.Typer(help="Subsidy and data-access reports.", no_args_is_help=True)
OutOpt = Annotated[Path | None, typer.Option("--out", help="Write to this file instead of stdout.")]
PeriodOpt = Annotated[
    str,
    typer.Option(
        help="A month (2026-11), a year (2026) or a range (2026-01..2026-06), in the programme's zone."
    ),
]


def _root(ctx: typer.Context) -> Any:
    return ctx.find_root().obj


def _http(ctx: typer.Context) -> httpx.Client:
    state = _root(ctx)
    headers = {"Authorization": f"Bearer {state.token}"} if state.token else {}
    return httpx.Client(base_url=state.url.rstrip("/"), headers=headers, timeout=600)


def _refuse(payload: Any, status: int) -> NoReturn:
    """Exit with the broker's refusal: its code and reason (--json: as one object), 3 for a 5xx, else 1."""
    exit_code = EXIT_UNAVAILABLE if status >= 500 else 1
    try:
        fail(str(payload["detail"]), exit_code, code=str(payload["error"]))
    except (KeyError, TypeError):
        fail(f"HTTP {status}", exit_code, code=f"http_{status}")


def _progress(event: dict[str, Any]) -> None:
    """A progress bar on stderr, only when it is a terminal (a log file gets no ``\\r`` lines)."""
    if not sys.stderr.isatty():
        return
    done, total, what = event["done"], event["total"], event["what"]
    width = 24
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} months ({what})")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def fetch_subsidy(ctx: typer.Context, period: str, issuer: str | None) -> dict[str, Any]:
    """Stream the signed subsidy report from the broker, showing progress on stderr."""
    params = {"period": period, "stream": "true"} | ({"issuer_org": issuer} if issuer else {})
    try:
        with _http(ctx) as client, client.stream("GET", "/api/v1/reports/subsidy", params=params) as response:
            if response.status_code >= 400:
                response.read()
                _refuse(_json_or_none(response), response.status_code)
            for line in response.iter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                if "progress" in event:
                    _progress(event["progress"])
                elif "error" in event:
                    _refuse(event["error"], int(event.get("status", 500)))
                elif "result" in event:
                    result: dict[str, Any] = event["result"]
                    return result
    except httpx.TransportError as exc:
        fail(
            f"cannot reach the broker at {_root(ctx).url} ({type(exc).__name__}); is `sbx serve` running?",
            EXIT_UNAVAILABLE,
            code="unreachable",
        )
    fail("the broker closed the report stream before sending the report")


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _write(content: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(content if content.endswith("\n") else content + "\n")
        return
    out.write_text(content, encoding="utf-8")
    typer.echo(f"wrote {out}", err=True)


def _write_bytes(content: bytes, out: Path) -> None:
    out.write_bytes(content)
    typer.echo(f"wrote {out}", err=True)


@report_app.command("subsidy")
def subsidy(
    ctx: typer.Context,
    period: PeriodOpt,
    format: Annotated[
        Literal["json", "csv", "xlsx", "html"],
        typer.Option(
            help="json (signed), csv (a file gets a UTF-8 BOM for Excel), xlsx (needs --out) or html."
        ),
    ] = "json",
    issuer: Annotated[str | None, typer.Option(help="Operators: the programme (issuer org id).")] = None,
    out: OutOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="The signed JSON (as --format json).")] = False,
) -> None:
    """A programme's subsidy report for a period: per SME jobs, hours, cost, voucher share, co-payment, credit."""
    if as_json:
        format = "json"
    document = fetch_subsidy(ctx, period, issuer)
    locale = cli_locale(getattr(ctx.find_root().obj, "lang", None))
    if format == "csv" and out is not None:
        _write_bytes(subsidy_csv_bytes(document), out)
    elif format == "csv":
        _write(subsidy_csv(document), out)
    elif format == "xlsx":
        if out is None:
            fail("--format xlsx writes a file: give --out report.xlsx")
        _write_bytes(subsidy_xlsx(document, locale), out)
    elif format == "html":
        _write(subsidy_html(document, locale), out)
    else:
        _write(json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False), out)


@report_app.command("access")
def data_access(
    ctx: typer.Context,
    period: PeriodOpt,
    format: Annotated[Literal["json", "html"], typer.Option(help="json (signed) or html.")] = "json",
    custodian: Annotated[str | None, typer.Option(help="Operators: one custodian's datasets.")] = None,
    time_zone: Annotated[str, typer.Option(help="IANA zone of the period's months.")] = "UTC",
    out: OutOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="The signed JSON (as --format json).")] = False,
) -> None:
    """The data-access report: per dataset and SME, releases and ε spent in the period."""
    if as_json:
        format = "json"
    params = {"period": period, "time_zone": time_zone} | ({"custodian_org": custodian} if custodian else {})
    try:
        with _http(ctx) as client:
            response = client.get("/api/v1/reports/data-access", params=params)
    except httpx.TransportError as exc:
        fail(
            f"cannot reach the broker at {_root(ctx).url} ({type(exc).__name__}); is `sbx serve` running?",
            EXIT_UNAVAILABLE,
            code="unreachable",
        )
    if response.status_code >= 400:
        _refuse(_json_or_none(response), response.status_code)
    document = response.json()
    if format == "html":
        _write(access_html(document, cli_locale(getattr(ctx.find_root().obj, "lang", None))), out)
    else:
        _write(json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False), out)


@report_app.command("verify")
def verify(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="A signed report (JSON) from `sbx report subsidy|access`.")],
    jwks: Annotated[
        Path | None, typer.Option(help="A JWKS file; default: fetch /.well-known/jwks.json from the broker.")
    ] = None,
    kid: Annotated[
        list[str] | None,
        typer.Option(help="Pin the broker's report key(s) you trust (repeatable); default: any broker key."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Check a report's signature by the broker's report key: exit 0 when it verifies, 4 when it was changed,
    carries duplicate members, or was signed by any other key (an issuer's included)."""
    try:
        document = load_report(file.read_bytes())
        keys = _load_jwks(ctx, jwks)
        result = verify_report(document, keys, pinned_kids=kid or None)
    except OSError as exc:
        fail(f"cannot read {file}: {exc}")
    except ReportSignatureInvalid as exc:
        fail(f"NOT VALID: {exc.detail}", EXIT_VERIFY_FAILED)
    report = document["report"]
    who = report.get("programme", {}).get("name") or report.get("custodian_org") or "all datasets"
    human = f"valid: {result['kind']} for {who}, period {report['period']['label']}, signed by key {result['kid']}"
    summary = {
        "valid": True,
        "kind": result["kind"],
        "for": who,
        "period": report["period"],
        "kid": result["kid"],
    }
    emit(summary, as_json=as_json or bool(getattr(_root(ctx), "as_json", False)), human=human)


def _load_jwks(ctx: typer.Context, path: Path | None) -> dict[str, Any]:
    if path is not None:
        try:
            return load_jwks(path.read_bytes())
        except OSError as exc:
            fail(f"cannot read the JWKS {path}: {exc}")
    try:
        with _http(ctx) as client:
            response = client.get("/.well-known/jwks.json")
    except httpx.TransportError as exc:
        fail(f"cannot fetch the JWKS from {_root(ctx).url} ({type(exc).__name__}); pass --jwks FILE", 2)
    if response.status_code != 200:
        fail(f"the broker answered HTTP {response.status_code} for its JWKS")
    return load_jwks(response.content)
