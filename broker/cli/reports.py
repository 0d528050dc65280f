"""``sbx report``: subsidy and data-access reports, and their verification."""

from __future__ import annotations

import typer

report_app = typer.Typer(help="Subsidy and data-access reports.", no_args_is_help=True)
