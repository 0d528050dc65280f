"""``sbx job``, ``sbx ratecard``, ``sbx quota`` and ``sbx meter``: compute commands over the REST API."""

from __future__ import annotations

import base64
import io
import time
import zipfile
from pathlib import Path
from typing import Annotated, Any

import typer

from broker.cli.client import (
    EXIT_USAGE,
    EXIT_VERIFY_FAILED,
    call,
    download_to,
    emit,
    fail,
)
from broker.cli.orgs import yuan_option
from broker.cli.render import credits

job_app = typer.Typer(help="Training jobs paid with voucher credit.", no_args_is_help=True)
ratecard_app = typer.Typer(help="The rate card (credits per CPU-, GPU-, GiB-second).", no_args_is_help=True)
quota_app = typer.Typer(help="Per-SME quotas.", no_args_is_help=True)
meter_app = typer.Typer(help="Metering checks.", no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
TERMINAL = {"succeeded", "failed", "stopped", "timed_out", "lost", "rejected"}


def zip_dir(path: Path) -> str:
    """Zip a working directory (base64) for upload; hidden files and __pycache__ are left out."""
    if not path.is_dir():
        fail(f"{path} is not a directory")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(path.rglob("*")):
            rel = file.relative_to(path)
            if file.is_file() and not any(p.startswith(".") or p == "__pycache__" for p in rel.parts):
                archive.write(file, rel.as_posix())
    return base64.b64encode(buffer.getvalue()).decode()


def _bill(job: dict[str, Any]) -> str:
    """One line: the job, its state and what it cost (or may cost), amounts grouped."""
    if job.get("reason"):
        why = f"{job['reason']}: {job.get('message') or ''}"
        return f"job {job['id']}: {job['state']} ({why}) — cost {credits(job.get('cost'))}"
    if job.get("cost") is None:
        return f"job {job['id']}: {job['state']} (holds up to {credits(job['max_cost'])})" + _pending(job)
    return (
        f"job {job['id']}: {job['state']} — cost {credits(job['cost'])} "
        f"(vouchers paid {credits(job['voucher_paid'])}, co-payment {credits(job['copaid'])})"
    )


@job_app.command("quote")
def job_quote(
    ctx: typer.Context,
    cpus: Annotated[float, typer.Option(help="CPUs.")] = 1.0,
    gpus: Annotated[int, typer.Option(help="GPUs.")] = 0,
    memory_mib: Annotated[int, typer.Option(help="Memory in MiB.")] = 1024,
    max_runtime: Annotated[int, typer.Option(help="Maximum runtime in seconds.")] = 600,
    as_json: JsonOpt = False,
) -> None:
    """Price a job before submitting it."""
    body = {
        "milli_cpu": round(cpus * 1000),
        "gpus": gpus,
        "memory_mib": memory_mib,
        "max_runtime_s": max_runtime,
    }
    data, js = call(ctx, as_json, "POST", "/api/v1/jobs/quote", body=body)
    human = f"at most {data['max_cost']} credits (rate card v{data['rate_card_version']})"
    human += (
        f": vouchers {data['voucher_share']}, co-payment {data['copay_share']}"
        if data["affordable"]
        else f" — not affordable now: {data['reason']}"
    )
    emit(data, as_json=js, human=human)


@job_app.command("submit")
def job_submit(
    ctx: typer.Context,
    entrypoint: Annotated[str, typer.Argument(help="Command to run, e.g. 'python train.py'.")],
    working_dir: Annotated[
        Path | None, typer.Option(help="Directory uploaded as the job's working dir.")
    ] = None,
    cpus: Annotated[float, typer.Option(help="CPUs.")] = 1.0,
    gpus: Annotated[int, typer.Option(help="GPUs.")] = 0,
    memory_mib: Annotated[int, typer.Option(help="Memory in MiB.")] = 1024,
    max_runtime: Annotated[int, typer.Option(help="Maximum runtime in seconds.")] = 600,
    priority: Annotated[int, typer.Option(help="Higher runs first among your own jobs.")] = 0,
    requirement: Annotated[list[str] | None, typer.Option(help="A pip requirement (repeatable).")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Retry-safe key.")] = None,
    wait: Annotated[bool, typer.Option(help="Wait until the job is settled and print the bill.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Submit a job; it queues until its quota, the cluster and its credit allow."""
    body = {
        "entrypoint": entrypoint,
        "milli_cpu": round(cpus * 1000),
        "gpus": gpus,
        "memory_mib": memory_mib,
        "max_runtime_s": max_runtime,
        "priority": priority,
        "requirements": requirement or [],
        "working_dir_zip_b64": zip_dir(working_dir) if working_dir else None,
    }
    data, js = call(ctx, as_json, "POST", "/api/v1/jobs", body=body, idempotency_key=idempotency_key)
    if wait:
        data = wait_for(ctx, data["id"], as_json=js, timeout_s=max_runtime + 120)
    emit(data, as_json=js, human=_bill(data))


POLL_S = 0.5


class LogTail:
    """What is new in a job's log tail since the last look (the broker returns the tail, which may slide)."""

    def __init__(self) -> None:
        self.seen = ""

    def new(self, logs: str) -> str:
        """The part of ``logs`` not yet printed: after the longest end of what was seen that it starts with."""
        if logs.startswith(self.seen):
            fresh = logs[len(self.seen) :]
        else:
            overlap = next(
                (n for n in range(min(len(self.seen), len(logs)), 0, -1) if logs.startswith(self.seen[-n:])),
                0,
            )
            fresh = logs[overlap:]
        self.seen = logs
        return fresh


def wait_for(ctx: typer.Context, job_id: str, *, as_json: bool, timeout_s: float) -> dict[str, Any]:
    """Poll a job until it is settled, printing (not under --json) each state change with the time elapsed,
    why it waits and its place in the queue while queued, and its log lines as they arrive."""
    started = time.monotonic()
    deadline = started + timeout_s
    last, tail = "", LogTail()
    while True:
        data, _ = call(ctx, True, "GET", f"/api/v1/jobs/{job_id}")
        shown = f"{data['state']}{_pending(data)}"
        if shown != last and not as_json:
            typer.echo(f"  [{time.monotonic() - started:5.0f} s] {job_id}: {shown}")
            last = shown
        if not as_json and data["state"] not in ("queued", "rejected"):
            _print_new_logs(ctx, job_id, tail)
        if data["state"] in TERMINAL and data.get("settled_ms"):
            return dict(data)
        if time.monotonic() > deadline:
            fail(f"job {job_id} is still {data['state']} after {timeout_s:.0f} s")
        time.sleep(POLL_S)


def _print_new_logs(ctx: typer.Context, job_id: str, tail: LogTail) -> None:
    """Print the job's log lines that arrived since the last call."""
    logs, _ = call(ctx, True, "GET", f"/api/v1/jobs/{job_id}/logs")
    fresh = tail.new(str(logs.get("logs") or ""))
    if fresh:
        typer.echo(fresh, nl=not fresh.endswith("\n"))


@job_app.command("status")
def job_status(ctx: typer.Context, job_id: str, as_json: JsonOpt = False) -> None:
    """A job's state and bill."""
    data, js = call(ctx, as_json, "GET", f"/api/v1/jobs/{job_id}")
    emit(data, as_json=js, human=_bill(data))


@job_app.command("logs")
def job_logs(
    ctx: typer.Context,
    job_id: str,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until the job has finished.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """The tail of a job's output (--follow: and what it prints next, until it ends)."""
    data, js = call(ctx, as_json, "GET", f"/api/v1/jobs/{job_id}/logs")
    if not follow or js:
        emit(data, as_json=js, human=data["logs"])
        return
    tail = LogTail()
    while True:
        fresh = tail.new(str(data.get("logs") or ""))
        if fresh:
            typer.echo(fresh, nl=not fresh.endswith("\n"))
        job, _ = call(ctx, True, "GET", f"/api/v1/jobs/{job_id}")
        if job["state"] in TERMINAL and job.get("settled_ms"):
            last, _ = call(ctx, True, "GET", f"/api/v1/jobs/{job_id}/logs")
            rest = tail.new(str(last.get("logs") or ""))
            if rest:
                typer.echo(rest, nl=not rest.endswith("\n"))
            return
        time.sleep(POLL_S)
        data, _ = call(ctx, True, "GET", f"/api/v1/jobs/{job_id}/logs")


@job_app.command("output")
def job_output(
    ctx: typer.Context,
    job_id: str,
    out: Annotated[Path, typer.Option(help="Where to write the zip of the job's $SBX_OUTPUT.")] = Path(
        "output.zip"
    ),
    as_json: JsonOpt = False,
) -> None:
    """Download what a finished job wrote to ``$SBX_OUTPUT`` (a zip with one top-level directory)."""
    download_to(
        ctx, f"/api/v1/jobs/{job_id}/output", out, as_json=as_json, ident=("job_id", job_id), what="output"
    )


@job_app.command("stop")
def job_stop(ctx: typer.Context, job_id: str, as_json: JsonOpt = False) -> None:
    """Stop a job (it is settled for what it used)."""
    data, js = call(ctx, as_json, "POST", f"/api/v1/jobs/{job_id}/stop")
    emit(data, as_json=js, human=_bill(data))


@job_app.command("list")
def job_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Your jobs, newest first (an operator: every SME's, each with its SME; queued ones with why they wait)."""
    data, js = call(ctx, as_json, "GET", "/api/v1/jobs")
    emit(data, as_json=js, human="\n".join(f"[{j['org_id']}] {_bill(j)}" for j in data) or "(no jobs)")


def _pending(job: dict[str, Any]) -> str:
    """Why a queued job waits and its place in the fair order (Kueue's pending reason), or a refusal."""
    if job["state"] == "rejected" and job.get("pending_detail"):
        return f"\n  refused: {job['pending_detail']}"
    if job["state"] != "queued":
        return ""
    place = f"#{job['queue_position']} in the fair order" if job.get("queue_position") else "not yet placed"
    why = job.get("pending_detail") or "waiting for the next admission pass"
    return f"\n  waits: {why} ({place})"


@ratecard_app.command("show")
def ratecard_show(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The current rate card."""
    data, js = call(ctx, as_json, "GET", "/api/v1/rate-card")
    emit(data, as_json=js)


@ratecard_app.command("set")
def ratecard_set(
    ctx: typer.Context,
    cpu: Annotated[str, typer.Option(help="Credits per CPU-second (e.g. 10 or 21/2).")],
    gpu: Annotated[str, typer.Option(help="Credits per GPU-second.")],
    gib: Annotated[str, typer.Option(help="Credits per GiB-second.")],
    as_json: JsonOpt = False,
) -> None:
    """Publish a new rate-card version (operators)."""
    body = {"credits_per_cpu_second": cpu, "credits_per_gpu_second": gpu, "credits_per_gib_second": gib}
    data, js = call(ctx, as_json, "PUT", "/api/v1/rate-card", body=body)
    emit(data, as_json=js)


@quota_app.command("show")
def quota_show(
    ctx: typer.Context,
    org: Annotated[str | None, typer.Option(help="SME id (operators).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """An SME's quota."""
    data, js = call(ctx, as_json, "GET", "/api/v1/quota", params={"org_id": org})
    emit(data, as_json=js)


@quota_app.command("set")
def quota_set(
    ctx: typer.Context,
    org_arg: Annotated[str | None, typer.Argument(metavar="[ORG]", help="SME id (or --org).")] = None,
    org: Annotated[str | None, typer.Option("--org", help="SME id (the one convention: --org).")] = None,
    *,
    cpus: Annotated[float, typer.Option(help="Concurrent CPUs.")],
    gpus: Annotated[int, typer.Option(help="Concurrent GPUs.")] = 0,
    memory_mib: Annotated[int, typer.Option(help="Concurrent memory (MiB).")] = 8192,
    running: Annotated[int, typer.Option(help="Running jobs at once.")] = 4,
    queued: Annotated[int, typer.Option(help="Queued jobs at once.")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Set an SME's quota (operators)."""
    target = _one_org(org_arg, org)
    body = {
        "max_milli_cpu": round(cpus * 1000),
        "max_gpus": gpus,
        "max_memory_mib": memory_mib,
        "max_running_jobs": running,
        "max_queued_jobs": queued,
    }
    data, js = call(ctx, as_json, "PUT", f"/api/v1/orgs/{target}/quota", body=body)
    emit(data, as_json=js)


def _one_org(positional: str | None, option: str | None) -> str:
    """The organisation a command acts on: ``--org`` (or, as before, the positional argument); one of them."""
    if positional is not None and option is not None:
        fail("give the organisation once: --org ORG", EXIT_USAGE)
    chosen = option or positional
    if chosen is None:
        fail("give the organisation: --org ORG", EXIT_USAGE)
    return chosen


@quota_app.command("copay")
def quota_copay(
    ctx: typer.Context,
    org: Annotated[str, typer.Option("--org", help="SME id.")],
    credits: Annotated[int | None, typer.Option(help="Limit in the smallest unit (fen).")] = None,
    yuan: Annotated[str | None, typer.Option(help="Limit in yuan (12.34), instead of --credits.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Set how much an SME may co-pay beyond its vouchers (operators); refused below what it already uses."""
    limit = yuan_option(yuan, "--yuan", "CNY", credits)
    if limit is None:
        fail("give the limit: --credits (smallest unit) or --yuan", EXIT_USAGE)
    data, js = call(ctx, as_json, "PUT", f"/api/v1/orgs/{org}/copay-limit", body={"copay_limit": limit})
    emit(data, as_json=js, human=f"{data['org_id']}: co-payment limit {data['copay_limit']} credits")


@meter_app.command("check")
def meter_check(
    ctx: typer.Context,
    hours: Annotated[float, typer.Option(help="Check the last this many hours.")] = 24.0,
    as_json: JsonOpt = False,
) -> None:
    """Check that metered resource-time never exceeds the cluster's capacity × window (operators)."""
    end = int(time.time() * 1000)
    data, js = call(
        ctx,
        as_json,
        "GET",
        "/api/v1/meter/check",
        params={"start_ms": end - int(hours * 3_600_000), "end_ms": end},
    )
    emit(
        data,
        as_json=js,
        human=(
            f"metering conserved over {data['records']} records"
            if data["ok"]
            else "VIOLATIONS:\n" + "\n".join(data["violations"])
        ),
    )
    if not data["ok"]:
        raise typer.Exit(EXIT_VERIFY_FAILED)
