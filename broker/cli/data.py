"""``sbx dataset``, ``sbx access`` and ``sbx query``: the data foundation's commands (over the REST API).

ε is given on the command line as a decimal (``--epsilon 0.5``) and sent as exact micro-ε integers; more
than six decimals is refused rather than rounded.
"""

from __future__ import annotations

import base64
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any

import typer

from broker.cli.client import EXIT_USAGE, call, emit, fail, read_json_input
from broker.client import delta_e12
from common.errors import DomainError

dataset_app = typer.Typer(
    help="Datasets (custodians register; everyone lists what they may see).", no_args_is_help=True
)
access_app = typer.Typer(help="Access requests and decisions.", no_args_is_help=True)
query_app = typer.Typer(help="Differentially private queries.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
DAY_S = 24 * 3600


def epsilon_micro(text: str) -> int:
    """Parse a decimal ε (e.g. ``0.25``) into exact micro-ε; refuse what micro-ε cannot hold exactly."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        fail(f"epsilon must be a decimal number, got {text!r}")
    micro = value * 1_000_000
    if not value.is_finite() or value <= 0 or micro != micro.to_integral_value():
        fail(f"epsilon must be positive with at most 6 decimals, got {text!r}")
    return int(micro)


def delta_units(text: str) -> int:
    """Parse a decimal δ (``1e-5``, ``0.00001``) into exact 10⁻¹² units, or a usage error."""
    try:
        return delta_e12(text)
    except DomainError as exc:
        fail(f"--delta: {exc.detail}", EXIT_USAGE)


DeltaOpt = Annotated[
    str | None, typer.Option(help="δ, e.g. 1e-5 (private training needs one; queries do not).")
]


def _eps(cost: dict[str, Any]) -> str:
    return str(cost.get("display") or f"{cost['epsilon_micro']} micro-ε")


def _upload_body(file: Path | None, object_key: str | None, policy: Path, fmt: str | None) -> dict[str, Any]:
    if (file is None) == (object_key is None):
        fail("give exactly one of --file (upload) or --object-key (an object under incoming/<your org>/)")
    body: dict[str, Any] = {"policy": read_json_input(policy, "the policy")}
    source = str(file or object_key)
    chosen = fmt or ("csv" if source.endswith(".csv") else "parquet")
    body["format"] = chosen
    if file is not None:
        try:
            body["content_b64"] = base64.b64encode(file.read_bytes()).decode()
        except OSError as exc:
            fail(f"cannot read the data file {file}: {exc.strerror or type(exc).__name__}", EXIT_USAGE)
    else:
        body["object_key"] = object_key
    return body


FileOpt = Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="Parquet or CSV file.")]
KeyOpt = Annotated[str | None, typer.Option(help="An object already in the store, under incoming/<org>/.")]
PolicyOpt = Annotated[Path, typer.Option(exists=True, dir_okay=False, help="The policy as a JSON file.")]
FormatOpt = Annotated[str | None, typer.Option("--format", help="parquet or csv (default: from the name).")]


# -- datasets -------------------------------------------------------------------------------------
@dataset_app.command("register")
def dataset_register(
    ctx: typer.Context,
    name: str,
    policy: PolicyOpt,
    file: FileOpt = None,
    object_key: KeyOpt = None,
    fmt: FormatOpt = None,
    description: Annotated[str, typer.Option(help="What the data is.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Register a dataset (custodians): the broker keeps only its bounded version."""
    body = _upload_body(file, object_key, policy, fmt) | {"name": name, "description": description}
    out, js = call(ctx, as_json, "POST", "/api/v1/datasets", body=body)
    v = out["versions"][-1]
    emit(out, as_json=js, human=f"dataset {out['id']} version {v['version']} sha256 {v['content_hash']}")


@dataset_app.command("version")
def dataset_version(
    ctx: typer.Context,
    dataset_id: str,
    policy: PolicyOpt,
    file: FileOpt = None,
    object_key: KeyOpt = None,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a version to one's dataset (budget already spent carries over)."""
    body = _upload_body(file, object_key, policy, fmt)
    out, js = call(ctx, as_json, "POST", f"/api/v1/datasets/{dataset_id}/versions", body=body)
    v = out["versions"][-1]
    emit(out, as_json=js, human=f"dataset {out['id']} version {v['version']} sha256 {v['content_hash']}")


@dataset_app.command("list")
def dataset_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Datasets you may see."""
    out, js = call(ctx, as_json, "GET", "/api/v1/datasets")
    lines = [f"{d['id']}  v{d['latest_version']}  {d['name']}  ({d['custodian_org']})" for d in out]
    emit(out, as_json=js, human="\n".join(lines) or "no datasets")


@dataset_app.command("show")
def dataset_show(ctx: typer.Context, dataset_id: str, as_json: JsonOpt = False) -> None:
    """Schema, policy and versions of a dataset (never values)."""
    out, js = call(ctx, as_json, "GET", f"/api/v1/datasets/{dataset_id}")
    latest = out["versions"][-1]
    cols = ", ".join(f"{c['name']}:{c['kind']}" for c in latest["policy"]["columns"])
    text = (
        f"{out['id']} {out['name']} v{out['latest_version']} sha256 {latest['content_hash']}\ncolumns: {cols}"
    )
    if "budget" in out:
        text += f"\nbudget left: {_eps(out['budget']['remaining'])} of {_eps(out['budget']['total'])}"
    emit(out, as_json=js, human=text)


@dataset_app.command("budget")
def dataset_budget(ctx: typer.Context, dataset_id: str, as_json: JsonOpt = False) -> None:
    """The privacy-budget ledger of a dataset (yours, as you may see it)."""
    out, js = call(ctx, as_json, "GET", f"/api/v1/datasets/{dataset_id}/budget")
    if "remaining" in out:
        text = (
            f"spent {_eps(out['spent'])}, remaining {_eps(out['remaining'])}, {len(out['charges'])} charges"
        )
    else:
        text = f"your spend {_eps(out['sme_cap']['spent'])} of {_eps(out['sme_cap']['cap'])}"
    emit(out, as_json=js, human=text)


@dataset_app.command("audit")
def dataset_audit(
    ctx: typer.Context,
    dataset_id: str,
    after_seq: Annotated[int, typer.Option(help="Only entries after this sequence number.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Audit entries of one of your datasets (custodians, operators)."""
    out, js = call(
        ctx, as_json, "GET", f"/api/v1/datasets/{dataset_id}/audit", params={"after_seq": after_seq}
    )
    lines = [f"{e['seq']}  {e['action']}  {e['object_id']}  by {e.get('actor_org')}" for e in out]
    emit(out, as_json=js, human="\n".join(lines) or "no entries")


# -- access ---------------------------------------------------------------------------------------
def _request_line(r: dict[str, Any]) -> str:
    grant = r.get("grant")
    left = f", {_eps(grant['remaining'])} left" if grant else ""
    return (
        f"{r['id']}  {r['status']}  {r['dataset_id']} v{r['dataset_version']}  asked {_eps(r['asked'])}{left}"
    )


@access_app.command("request")
def access_request(
    ctx: typer.Context,
    dataset_id: str,
    purpose: Annotated[str, typer.Option(help="What the data will be used for.")],
    epsilon: Annotated[str, typer.Option(help="The ε asked for, e.g. 1.5.")],
    kind: Annotated[list[str] | None, typer.Option(help="Release kinds: query, training.")] = None,
    version: Annotated[int | None, typer.Option(help="Dataset version (default: latest).")] = None,
    delta: DeltaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ask a dataset's custodian for access (SMEs); private training needs --kind training and --delta."""
    body: dict[str, Any] = {
        "purpose": purpose,
        "epsilon_micro": epsilon_micro(epsilon),
        "kinds": kind or ["query"],
    }
    if delta is not None:
        body["delta_e12"] = delta_units(delta)
    if version is not None:
        body["version"] = version
    out, js = call(ctx, as_json, "POST", f"/api/v1/datasets/{dataset_id}/access-requests", body=body)
    emit(out, as_json=js, human=_request_line(out))


@access_app.command("approve")
def access_approve(
    ctx: typer.Context,
    request_id: str,
    valid_days: Annotated[int, typer.Option(help="Days the approval is valid.")] = 30,
    epsilon: Annotated[str | None, typer.Option(help="Grant less ε than asked.")] = None,
    kind: Annotated[list[str] | None, typer.Option(help="Grant fewer release kinds.")] = None,
    delta: Annotated[str | None, typer.Option(help="Grant less δ than asked, e.g. 1e-6.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Approve a request on your dataset (custodians)."""
    body: dict[str, Any] = {"valid_for_s": valid_days * DAY_S}
    if epsilon is not None:
        body["epsilon_micro"] = epsilon_micro(epsilon)
    if delta is not None:
        body["delta_e12"] = delta_units(delta)
    if kind:
        body["kinds"] = kind
    out, js = call(ctx, as_json, "POST", f"/api/v1/access-requests/{request_id}/approve", body=body)
    emit(out, as_json=js, human=_request_line(out))


def _close_request(ctx: typer.Context, request_id: str, reason: str, how: str, as_json: bool) -> None:
    out, js = call(
        ctx, as_json, "POST", f"/api/v1/access-requests/{request_id}/{how}", body={"reason": reason}
    )
    emit(out, as_json=js, human=_request_line(out))


@access_app.command("refuse")
def access_refuse(
    ctx: typer.Context,
    request_id: str,
    reason: Annotated[str, typer.Option(help="The reason the SME reads.")],
    as_json: JsonOpt = False,
) -> None:
    """Refuse a pending request (custodians)."""
    _close_request(ctx, request_id, reason, "refuse", as_json)


@access_app.command("revoke")
def access_revoke(
    ctx: typer.Context,
    request_id: str,
    reason: Annotated[str, typer.Option(help="The reason the SME reads.")],
    as_json: JsonOpt = False,
) -> None:
    """Revoke an approval; its queued work is cancelled with it (custodians)."""
    _close_request(ctx, request_id, reason, "revoke", as_json)


@access_app.command("list")
def access_list(
    ctx: typer.Context,
    dataset_id: Annotated[str | None, typer.Option("--dataset", help="Only this dataset.")] = None,
    status: Annotated[str | None, typer.Option(help="Only this status.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Requests you may see (SMEs: yours; custodians: on your datasets)."""
    params = {"dataset_id": dataset_id, "status": status}
    out, js = call(ctx, as_json, "GET", "/api/v1/access-requests", params=params)
    emit(out, as_json=js, human="\n".join(_request_line(r) for r in out) or "no requests")


@access_app.command("show")
def access_show(ctx: typer.Context, request_id: str, as_json: JsonOpt = False) -> None:
    """One request and what is left of its grant."""
    out, js = call(ctx, as_json, "GET", f"/api/v1/access-requests/{request_id}")
    emit(out, as_json=js, human=_request_line(out))


# -- queries --------------------------------------------------------------------------------------
@query_app.command("run")
def query_run(
    ctx: typer.Context,
    dataset_id: str,
    kind: Annotated[str | None, typer.Option(help="count, sum, mean, quantile or histogram.")] = None,
    epsilon: Annotated[str | None, typer.Option(help="ε for this query, e.g. 0.1.")] = None,
    column: Annotated[str | None, typer.Option(help="The column (sum, mean, quantile, histogram).")] = None,
    group_by: Annotated[str | None, typer.Option(help="A categorical column to group by.")] = None,
    quantile: Annotated[list[str] | None, typer.Option(help="Quantile levels, e.g. 0.5.")] = None,
    batch: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="A JSON list of query objects.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only price it: the exact ε and credit hold, spending nothing.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run one DP query (options) or a batch (--batch file) within your grant (SMEs)."""
    if batch is not None:
        queries = read_json_input(batch, "the query batch")
        if not isinstance(queries, list) or not all(isinstance(q, dict) for q in queries):
            fail(f"the query batch {batch} must be a JSON list of query objects", EXIT_USAGE)
    elif kind is not None and epsilon is not None:
        one: dict[str, Any] = {"kind": kind, "epsilon_micro": epsilon_micro(epsilon)}
        for name, value in (("column", column), ("group_by", group_by)):
            if value is not None:
                one[name] = value
        if quantile:
            one["quantiles"] = quantile
        queries = [one]
    else:
        fail("give --kind and --epsilon, or --batch FILE")
    path = f"/api/v1/datasets/{dataset_id}/queries"
    params = {"dry_run": "true"} if dry_run else None
    out, js = call(ctx, as_json, "POST", path, body={"queries": queries}, params=params)
    if dry_run:
        human = (
            f"would charge {_eps(out['charged'])} (grant left after it: {_eps(out['grant_remaining'])}); "
            f"holds up to {out['credits_hold']} credits; nothing was spent"
        )
        emit(out, as_json=js, human=human)
        return
    lines = []
    for r in out["results"]:
        values = ", ".join(f"{k}={v:.6g}" for k, v in r["values"].items())
        lines.append(f"{r['kind']} ({_eps(r['charged'])}): {values}")
    lines.append(
        f"charged {_eps(out['charged'])}; grant left {_eps(out['grant_remaining'])}; {out['credits']} credits"
    )
    emit(out, as_json=js, human="\n".join(lines))


@query_app.command("list")
def query_list(
    ctx: typer.Context,
    dataset_id: Annotated[str | None, typer.Option("--dataset", help="Only this dataset.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Your past DP queries and training runs: what each cost (ε, δ, credits) and how it ended (SMEs)."""
    out, js = call(ctx, as_json, "GET", "/api/v1/queries", params={"dataset_id": dataset_id, "limit": limit})
    lines = [
        f"{h['id']}  {h['kind']}  {h['dataset_id']} v{h['dataset_version']}  {h['status']}  "
        f"{_eps(h['charged'])}  {'-' if h['credits'] is None else h['credits']} credits"
        for h in out
    ]
    emit(out, as_json=js, human="\n".join(lines) or "no queries yet")
