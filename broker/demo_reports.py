"""The demo's closing steps: the programme's subsidy report (HTML and CSV, signed JSON) and the dashboard.

The files go into ``<demo state dir>/reports/``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from broker.i18n import negotiate
from broker.services.report_exports import subsidy_csv_bytes, subsidy_xlsx
from broker.services.reports import verify_report
from broker.web.render import subsidy_html

ISSUER = "Innovation Programme Nordstadt"
SME = "Acme Mobility GmbH"


def state_locale(state: Any) -> str:
    """The demo's language (``sbx demo --lang``, ``SBX_LANG``/``LANG``), English when unset."""
    return str(
        getattr(state, "locale", None) or negotiate(os.environ.get("SBX_LANG"), os.environ.get("LANG"))
    )


def _reports_dir(state: Any) -> Path:
    out = Path(state.state_dir) / "reports"
    out.mkdir(parents=True, exist_ok=True)
    return out


def step_subsidy_report(state: Any) -> str:
    """The issuer fetches this month's signed subsidy report; it is written as JSON, CSV and HTML and verified."""
    issuer = state.as_role(ISSUER)
    period = datetime.now(tz=UTC).strftime("%Y-%m")
    document = issuer.call("GET", "/api/v1/reports/subsidy", params={"period": period})
    jwks = issuer.call("GET", "/.well-known/jwks.json")
    verified = verify_report(document, jwks)
    out = _reports_dir(state)
    stem = f"subsidy-{period}"
    (out / f"{stem}.json").write_text(json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False))
    (out / f"{stem}.csv").write_bytes(subsidy_csv_bytes(document))  # UTF-8 with a BOM: Excel reads it
    (out / f"{stem}.xlsx").write_bytes(subsidy_xlsx(document, state_locale(state)))
    (out / f"{stem}.html").write_text(subsidy_html(document, state_locale(state)))
    row = next((r for r in document["report"]["rows"] if r["name"] == SME), None)
    summary = "no settled jobs"
    if row is not None:
        summary = (
            f"{SME}: {row['jobs']} settled job(s), cost {row['cost']:,} credits — vouchers {row['voucher_share']:,}, "
            f"co-payment {row['copay']:,}, credit left {row['credit_left']:,}"
        )
    print(f"[demo]   {summary}", flush=True)
    print(f"[demo]   report (printable): {(out / f'{stem}.html').resolve()}", flush=True)
    print(f"[demo]   report (CSV):       {(out / f'{stem}.csv').resolve()}", flush=True)
    print(
        f"[demo]   report (signed):    {(out / f'{stem}.json').resolve()}  (check: sbx report verify FILE)",
        flush=True,
    )
    return f"subsidy report {period} signed by key {verified['kid'][:12]}… and verified"


def step_dashboard(state: Any) -> str:
    """Show where the dashboard is and check that it serves its login page and the live numbers."""
    login = state.operator.call("GET", "/ui/login")
    if "Bearer token" not in str(login):
        raise RuntimeError("the dashboard's login page did not render")
    metrics = state.operator.call("GET", "/metrics")
    families = sum(1 for line in str(metrics).splitlines() if line.startswith("# TYPE sbx_"))
    print(
        f"[demo]   dashboard: {state.url}/ui  (log in with a token; operators see every tenant)", flush=True
    )
    print(f"[demo]   metrics:   {state.url}/metrics  ({families} sbx_* metric families)", flush=True)
    return "dashboard and metrics served (run `sbx serve` with SBX_STATE_DIR to keep them up after the demo)"


def report_steps() -> list[tuple[str, Callable[[Any], str]]]:
    """Steps added at the end of ``make demo``."""
    return [
        ("Write the subsidy report (HTML, CSV, signed JSON)", step_subsidy_report),
        ("Show the dashboard and metrics", step_dashboard),
    ]
