"""``sbx doctor``: what isolation this machine and these settings give SME code, without a running broker."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

import typer

from broker.cli.client import emit
from broker.compute.isolation import KUBERAY_ISOLATION
from broker.compute.ray_jobs import REMOTE_RAY_REFUSAL
from broker.settings import Settings

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def isolation_of(settings: Settings) -> dict[str, Any]:
    """The isolation the configured backend gives SME code, read from settings and this machine only."""
    kind = "ray" if settings.compute == "ray-local" and settings.ray_address else settings.compute
    if kind == "ray-local":
        from broker.compute.sandbox import probe

        report = probe()
        ok = report.available or settings.test_unsafe_no_sandbox
        detail = report.summary if report.available else f"no sandbox can be started: {report.summary}"
        return {"backend": kind, "sme_code": ok, "detail": detail, "sandbox": asdict(report)}
    if kind == "ray":
        return {"backend": kind, "sme_code": False, "detail": REMOTE_RAY_REFUSAL}
    if kind == "kuberay":
        return {"backend": kind, "sme_code": True, "detail": KUBERAY_ISOLATION}
    return {"backend": kind, "sme_code": True, "detail": "the fake backend runs no code"}


def doctor(as_json: JsonOpt = False) -> None:
    """Say which isolation the configured backend gives SME code; exit 1 when SME code would be refused."""
    report = isolation_of(Settings())
    verdict = "runs SME code isolated" if report["sme_code"] else "REFUSES SME code"
    emit(report, as_json=as_json, human=f"backend {report['backend']}: {verdict}\n  {report['detail']}")
    if not report["sme_code"]:
        raise typer.Exit(1)
