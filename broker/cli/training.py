"""``sbx train``: DP-SGD training on protected datasets (a declarative spec, never code)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from broker.cli.client import call, download_to, emit, read_json_input
from broker.cli.jobs import wait_for

train_app = typer.Typer(
    help="Differentially private training (DP-SGD) on protected datasets.", no_args_is_help=True
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _summary(run: dict[str, Any]) -> str:
    line = f"run {run['id']} on {run.get('dataset_id')}: {run['state']}"
    result = run.get("result")
    if result and result.get("ok"):
        metrics = ", ".join(
            f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in result["dp_metrics"].items()
        )
        line += f" — ε spent {result['epsilon_spent_micro'] / 1e6:.3f}; DP metrics: {metrics}"
    elif result:
        line += f" — {result.get('error')}"
    if run.get("cost") is not None:
        line += f"; billed {run['cost']} credits (vouchers {run['voucher_paid']}, co-payment {run['copaid']})"
    return line


@train_app.command("submit")
def train_submit(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Option(help="Dataset id.")],
    spec: Annotated[Path, typer.Option(help="JSON file with the training spec.")],
    cpus: Annotated[float, typer.Option(help="CPUs for the run.")] = 1.0,
    memory_mib: Annotated[int, typer.Option(help="Memory in MiB.")] = 2048,
    max_runtime: Annotated[int, typer.Option(help="Maximum runtime in seconds.")] = 1800,
    idempotency_key: Annotated[str | None, typer.Option(help="Retry-safe key.")] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the run to finish and print its DP summary.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Submit a training spec; its privacy cost is reserved now, its compute billed like any job."""
    spec_body = read_json_input(spec, "the spec")
    body = {
        "dataset_id": dataset,
        "spec": spec_body,
        "milli_cpu": round(cpus * 1000),
        "memory_mib": memory_mib,
        "max_runtime_s": max_runtime,
    }
    data, js = call(ctx, as_json, "POST", "/api/v1/training", body=body, idempotency_key=idempotency_key)
    if wait:
        wait_for(ctx, data["id"], as_json=js, timeout_s=max_runtime + 300)
        data, js = call(ctx, as_json, "GET", f"/api/v1/training/{data['id']}")
    emit(data, as_json=js, human=_summary(data))


@train_app.command("status")
def train_status(ctx: typer.Context, run_id: str, as_json: JsonOpt = False) -> None:
    """A run's state, bill and DP summary."""
    data, js = call(ctx, as_json, "GET", f"/api/v1/training/{run_id}")
    emit(data, as_json=js, human=_summary(data))


@train_app.command("list")
def train_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Your training runs."""
    data, js = call(ctx, as_json, "GET", "/api/v1/training")
    emit(data, as_json=js, human="\n".join(_summary(r) for r in data) or "(no runs)")


@train_app.command("download")
def train_download(
    ctx: typer.Context,
    run_id: str,
    out: Annotated[Path, typer.Option(help="Where to write the safetensors file.")] = Path(
        "model.safetensors"
    ),
    as_json: JsonOpt = False,
) -> None:
    """Download a finished run's DP weights (safetensors: tensors only)."""
    path = f"/api/v1/training/{run_id}/weights"
    download_to(ctx, path, out, as_json=as_json, ident=("run_id", run_id), what="weights")
