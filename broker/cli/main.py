"""``sbx``: the broker's command line. Local commands (init, serve, migrate, demo) act on the state
directory; every other command talks to a running broker over its REST API with a bearer token."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from broker.cli.client import (
    EXIT_CODES_HELP,
    EXIT_VERIFY_FAILED,
    CliError,
    call,
    emit,
    fail,
    read_input,
)
from broker.cli.data import access_app, dataset_app, query_app
from broker.cli.doctor import doctor
from broker.cli.jobs import job_app, meter_app, quota_app, ratecard_app
from broker.cli.orgs import org_line, yuan_option
from broker.cli.reports import report_app
from broker.cli.training import train_app

app = typer.Typer(
    help="sandbox-broker: voucher-paid compute and private data access for SMEs.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
)
org_app = typer.Typer(help="Organisations (operators).", no_args_is_help=True)
token_app = typer.Typer(help="Bearer tokens.", no_args_is_help=True)
issuer_app = typer.Typer(help="Issuer keys and programmes.", no_args_is_help=True)
key_app = typer.Typer(help="Issuer signing keys (rotation, revocation).", no_args_is_help=True)
voucher_app = typer.Typer(help="Innovation vouchers.", no_args_is_help=True)
keys_app = typer.Typer(help="Keys the broker holds (local: KEK rotation).", no_args_is_help=True)
hold_app = typer.Typer(help="Credit holds (normally placed by jobs).", no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
app.add_typer(org_app, name="org")
app.add_typer(token_app, name="token")
app.add_typer(issuer_app, name="issuer")
issuer_app.add_typer(key_app, name="key")
app.add_typer(voucher_app, name="voucher")
app.add_typer(keys_app, name="keys")
app.add_typer(hold_app, name="hold")
app.add_typer(audit_app, name="audit")
app.add_typer(job_app, name="job")
app.add_typer(ratecard_app, name="ratecard")
app.add_typer(quota_app, name="quota")
app.add_typer(meter_app, name="meter")
app.add_typer(train_app, name="train")
app.add_typer(report_app, name="report")
app.add_typer(dataset_app, name="dataset")
app.add_typer(access_app, name="access")
app.add_typer(query_app, name="query")
app.command("doctor")(doctor)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
DAY_S = 24 * 3600


@dataclass
class CliState:
    """Options shared by every command."""

    url: str
    token: str | None
    as_json: bool
    lang: str | None = None  # zh-CN or en (--lang, SBX_LANG): the language of the broker's error details


@app.callback()
def main_options(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(envvar="SBX_URL", help="Broker URL.")] = "http://127.0.0.1:8750",
    token: Annotated[str | None, typer.Option(envvar="SBX_TOKEN", help="Bearer token.")] = None,
    as_json: JsonOpt = False,
    lang: Annotated[str | None, typer.Option(envvar="SBX_LANG", help="zh-CN or en.")] = None,
) -> None:
    """Global options: where the broker is and who you are."""
    ctx.obj = CliState(url, token, as_json, lang)


def _state(ctx: typer.Context, as_json: bool) -> CliState:
    state: CliState = ctx.obj
    if as_json:
        state.as_json = True
    return state


# -- local commands -------------------------------------------------------------------------------
@app.command()
def init(
    state_dir: Annotated[Path, typer.Option(envvar="SBX_STATE_DIR", help="State directory.")] = Path(".sbx"),
    operator_name: Annotated[str, typer.Option(help="Name of the first operator organisation.")] = "operator",
    token_file: Annotated[
        Path | None,
        typer.Option(help="Also write the operator token to this file (0600); default: print only."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create the state directory, the KEK (SBX_KEK_FILE, outside it), the broker's wrapped Ed25519 key, the
    schema and the first operator token (printed once)."""
    from broker.bootstrap import initialise

    result = initialise(state_dir, operator_name=operator_name, token_file=token_file)
    emit(
        result,
        as_json=as_json,
        human=(
            f"state directory: {result['state_dir']}\nbroker key: {result['broker_key']} (wrapped)\n"
            f"key-encryption key: {result['kek_file']} (0600; keep it out of backups of the state dir)\n"
            f"database: {result['database']}\noperator token (shown once, keep it secret):\n{result['token']}"
            if result["token"]
            else f"state directory {result['state_dir']} was already initialised; nothing changed"
        ),
    )


@keys_app.command("rotate")
def keys_rotate(
    broker_key: Annotated[
        bool, typer.Option(help="Also make a new broker signing key (the old one retires, still verifies).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Re-wrap every key the broker holds under a new key-encryption key (SBX_KEK_FILE is rewritten)."""
    from broker.bootstrap import rotate_keys
    from common.errors import DomainError

    try:
        result = rotate_keys(broker_key=broker_key)
    except DomainError as exc:
        fail(exc.detail)
    except FileNotFoundError as exc:  # no key set: a broker key mounted from a Secret rotates there
        fail(str(exc))
    human = f"re-wrapped {result['rewrapped']} keys under KEK {result['kek_id']} ({result['kek_file']})"
    if broker_key:
        human += f"\nnew broker signing key {result['broker_kid']}"
    emit(result, as_json=as_json, human=human)


@app.command()
def migrate(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Apply database migrations (SBX_DATABASE_URL or the state directory's SQLite)."""
    from broker.db.migrate import upgrade
    from broker.settings import Settings

    settings = Settings()
    upgrade(settings.resolved_database_url)
    as_json = as_json or bool(getattr(ctx.find_root().obj, "as_json", False))
    emit({"schema": "latest"}, as_json=as_json, human="database is at the latest schema")


@app.command("backup")
def backup_cmd(
    file: Annotated[Path, typer.Argument(help="Where to write the backup (never overwritten).")],
    as_json: JsonOpt = False,
) -> None:
    """Copy the embedded SQLite database to FILE while the broker serves (SQLite's online backup API: a
    consistent snapshot). PostgreSQL: a base backup with WAL archiving (docs/deploy.md). The key-encryption
    key (SBX_KEK_FILE) is not in the backup: keep it in your secret store."""
    from broker.db.backup import backup
    from broker.settings import Settings
    from common.errors import DomainError

    try:
        info = backup(Settings().resolved_database_url, file)
    except DomainError as exc:
        fail(exc.detail)
    result = {"file": str(info.path), "bytes": info.bytes, "audit_size": info.audit_size}
    human = f"backup {info.path}: {info.bytes} bytes, {info.audit_size} audit entries"
    emit(result, as_json=as_json, human=human)


@app.command("restore")
def restore_cmd(
    file: Annotated[Path, typer.Argument(help="A backup written by `sbx backup`.")],
    accept_loss: Annotated[
        bool,
        typer.Option(
            "--accept-loss",
            help="Restore a backup older than the last signed audit checkpoint, and record the rollback.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Put a backup back in place of the embedded database (stop the broker first). Refused when the backup
    is older than the last signed audit checkpoint, unless --accept-loss, which appends a signed "restored at
    size N" record to the state dir's audit/restores.jsonl."""
    from broker.services.maintenance import restore_from
    from broker.settings import Settings
    from common.errors import DomainError

    try:
        result = restore_from(Settings(), file, accept_loss=accept_loss)
    except DomainError as exc:
        fail(exc.detail)
    human = f"restored {file}: {result['audit_size']} audit entries"
    if result["record"] is not None:
        human += f" (rolled back from {result['last_checkpoint_size']}: recorded in audit/restores.jsonl)"
    emit(result, as_json=as_json, human=human)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default SBX_HOST or 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default SBX_PORT or 8750).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the broker (uvicorn) on 127.0.0.1:8750 by default; says on stderr where it listens (--json: as
    one object ``{"listening", "state_dir"}``)."""
    import json

    from broker.server import run
    from broker.settings import Settings

    settings = Settings()
    where = f"http://{host or settings.host}:{port or settings.port}"
    if as_json:
        typer.echo(json.dumps({"listening": where, "state_dir": str(settings.state_dir)}), err=True)
    else:
        typer.echo(f"sbx: serving on {where} (state {settings.state_dir}); stop with Ctrl-C", err=True)
    run(host=host, port=port, settings=settings)


# -- organisations and tokens ---------------------------------------------------------------------
@org_app.command("create")
def org_create(
    ctx: typer.Context,
    name: str,
    role: Annotated[str, typer.Option(help="operator, issuer, custodian or sme.")],
    year_budget: Annotated[int | None, typer.Option(help="Issuer: credits per year.")] = None,
    sme_cap: Annotated[int | None, typer.Option(help="Issuer: credits per SME.")] = None,
    copay_limit: Annotated[int, typer.Option(help="SME: co-payment limit in credits.")] = 0,
    uscc: Annotated[str | None, typer.Option(help="Unified social credit code (18 characters).")] = None,
    name_zh: Annotated[str | None, typer.Option(help="Registered Chinese name.")] = None,
    name_en: Annotated[str | None, typer.Option(help="English name.")] = None,
    currency: Annotated[str, typer.Option(help="Issuer: ISO 4217 currency, or 'credits'.")] = "CNY",
    time_zone: Annotated[str | None, typer.Option(help="Issuer: IANA zone (CNY: Asia/Shanghai).")] = None,
    budget_yuan: Annotated[str | None, typer.Option(help="Issuer: yearly budget in yuan (12.34).")] = None,
    cap_yuan: Annotated[str | None, typer.Option(help="Issuer: per-SME cap in yuan.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an organisation (budgets in the currency's smallest unit, or in yuan with --budget-yuan)."""
    money = None if currency == "credits" else currency
    body = {
        "name": name,
        "role": role,
        "year_budget": yuan_option(budget_yuan, "--budget-yuan", money, year_budget),
        "sme_cap": yuan_option(cap_yuan, "--cap-yuan", money, sme_cap),
        "copay_limit": copay_limit,
        "uscc": uscc,
        "name_zh": name_zh,
        "name_en": name_en,
        "currency": money,
        "time_zone": time_zone,
    }
    data, js = call(ctx, as_json, "POST", "/api/v1/orgs", body=body)
    emit(data, as_json=js, human=f"created {data['role']} {data['name']}: {data['id']}")


@org_app.command("show")
def org_show(
    ctx: typer.Context,
    uscc: Annotated[str, typer.Option(help="Find the organisation by its unified social credit code.")],
    as_json: JsonOpt = False,
) -> None:
    """Show an organisation found by its unified social credit code."""
    data, js = call(ctx, as_json, "GET", f"/api/v1/orgs/by-uscc/{uscc.strip()}")
    emit(data, as_json=js, human=org_line(data))


@org_app.command("list")
def org_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List organisations."""
    data, js = call(ctx, as_json, "GET", "/api/v1/orgs")
    emit(data, as_json=js)


@token_app.command("create")
def token_create(
    ctx: typer.Context,
    org_id: str,
    label: Annotated[str, typer.Option(help="What the token is for.")] = "",
    ttl_days: Annotated[int | None, typer.Option(help="Lifetime in days (default: no expiry).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a bearer token for an organisation (shown once)."""
    body = {"label": label, "ttl_s": ttl_days * DAY_S if ttl_days else None}
    data, js = call(ctx, as_json, "POST", f"/api/v1/orgs/{org_id}/tokens", body=body)
    emit(data, as_json=js, human=data["token"])


@token_app.command("list")
def token_list(
    ctx: typer.Context,
    org: Annotated[str | None, typer.Option(help="Operators: one organisation's tokens.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List tokens (ids, labels, expiry, state; never secrets): your organisation's, or all for operators."""
    path = f"/api/v1/orgs/{org}/tokens" if org else "/api/v1/tokens"
    data, js = call(ctx, as_json, "GET", path)
    lines = [f"{t['id']}  {t['org_id']}  {t['state']:<8} {t['label']}" for t in data]
    emit(data, as_json=js, human="\n".join(lines) or "no tokens")


@token_app.command("revoke")
def token_revoke(ctx: typer.Context, token_id: str, as_json: JsonOpt = False) -> None:
    """Revoke a token (by its id, ``tok_...``); the broker refuses it from the next request on."""
    data, js = call(ctx, as_json, "POST", f"/api/v1/tokens/{token_id}/revoke")
    emit(data, as_json=js, human=f"revoked {data['id']}")


# -- issuers --------------------------------------------------------------------------------------
@issuer_app.command("programme")
def issuer_programme(
    ctx: typer.Context,
    org_id: str,
    year_budget: Annotated[int, typer.Option(help="Credits per year.")],
    sme_cap: Annotated[int, typer.Option(help="Credits per SME.")],
    as_json: JsonOpt = False,
) -> None:
    """Set an issuer's yearly budget and per-SME cap (operators)."""
    body = {"year_budget": year_budget, "sme_cap": sme_cap}
    data, js = call(ctx, as_json, "PUT", f"/api/v1/orgs/{org_id}/programme", body=body)
    emit(data, as_json=js)


@key_app.command("create")
def key_create(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Create a new signing key; earlier active keys retire (they still verify what they signed)."""
    data, js = call(ctx, as_json, "POST", "/api/v1/issuer/keys")
    emit(data, as_json=js, human=f"active key {data['kid']}")


@key_app.command("generate")
def key_generate(
    out: Annotated[Path, typer.Option(help="Write the new private key (PEM) here, mode 0600.")],
    as_json: JsonOpt = False,
) -> None:
    """Offline: make your own Ed25519 signing key; register its public part with `sbx issuer key register`."""
    from broker.cli.offline import generate_key

    jwk = generate_key(out)
    emit(jwk, as_json=as_json, human=f"private key {out} (0600), kid {jwk['kid']}")


@key_app.command("register")
def key_register(
    ctx: typer.Context,
    key: Annotated[
        Path, typer.Option(help="Your public key: a JWK (JSON) or a PEM (only its public part is sent).")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Register your own public key; the broker never sees the private key (sign with `sbx voucher sign`)."""
    from broker.cli.offline import public_jwk_of

    data, js = call(
        ctx, as_json, "POST", "/api/v1/issuer/keys/register", body={"public_jwk": public_jwk_of(key)}
    )
    emit(data, as_json=js, human=f"registered key {data['kid']} (active; held by you)")


@key_app.command("list")
def key_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List your keys."""
    data, js = call(ctx, as_json, "GET", "/api/v1/issuer/keys")
    emit(
        [{k: v for k, v in item.items() if k != "public_jwk"} for item in data] if not js else data,
        as_json=js,
    )


@key_app.command("retire")
def key_retire(ctx: typer.Context, kid: str, as_json: JsonOpt = False) -> None:
    """Retire a key: it signs nothing new but still verifies what it signed."""
    data, js = call(ctx, as_json, "PATCH", f"/api/v1/issuer/keys/{kid}", body={"status": "retired"})
    emit(data, as_json=js)


@key_app.command("revoke")
def key_revoke(ctx: typer.Context, kid: str, as_json: JsonOpt = False) -> None:
    """Revoke a key: nothing it signed can be redeemed any more."""
    data, js = call(ctx, as_json, "PATCH", f"/api/v1/issuer/keys/{kid}", body={"status": "revoked"})
    emit(data, as_json=js)


# -- vouchers -------------------------------------------------------------------------------------
@voucher_app.command("issue")
def voucher_issue(
    ctx: typer.Context,
    sme: Annotated[str, typer.Option(help="Beneficiary SME organisation id.")],
    coverage: Annotated[
        int, typer.Option(help="Share of cost the programme pays, basis points (5000 = 50%).")
    ],
    credits: Annotated[int | None, typer.Option(help="Amount in the smallest unit (fen).")] = None,
    yuan: Annotated[str | None, typer.Option(help="Amount in yuan (12.34), instead of --credits.")] = None,
    valid_days: Annotated[int, typer.Option(help="Days the voucher can be redeemed.")] = 30,
    credit_days: Annotated[int, typer.Option(help="Days the credit lasts after issuance.")] = 365,
    resources: Annotated[str, typer.Option(help="Comma-separated resource classes.")] = "cpu,memory",
    out: Annotated[Path | None, typer.Option(help="Write the token to this file.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Issue a signed voucher to an SME (amount in fen with --credits, or in yuan with --yuan)."""
    now = int(time.time())
    credits = yuan_option(yuan, "--yuan", "CNY", credits)
    if credits is None:
        fail("give the amount: --credits (smallest unit) or --yuan")
    body = {
        "sme_org": sme,
        "credits": credits,
        "coverage_bps": coverage,
        "resources": [r.strip() for r in resources.split(",") if r.strip()],
        "valid_until_s": now + valid_days * DAY_S,
        "credit_expires_s": now + credit_days * DAY_S,
    }
    data, js = call(ctx, as_json, "POST", "/api/v1/vouchers", body=body)
    if out is not None:
        out.write_text(data["token"] + "\n")
    emit(data, as_json=js, human=f"voucher {data['jti']} ({credits} credits)\n{data['token']}")


@voucher_app.command("sign")
def voucher_sign(
    key: Annotated[Path, typer.Option(help="Your Ed25519 private key (PEM), registered with the broker.")],
    issuer: Annotated[str, typer.Option(help="Your issuer organisation id (the `iss` claim).")],
    sme: Annotated[str, typer.Option(help="Beneficiary SME organisation id.")],
    credits: Annotated[int, typer.Option(help="Credits (smallest unit).")],
    coverage: Annotated[int, typer.Option(help="Share of cost the programme pays, basis points.")],
    valid_days: Annotated[int, typer.Option(help="Days the voucher can be redeemed.")] = 30,
    credit_days: Annotated[int, typer.Option(help="Days the credit lasts after issuance.")] = 365,
    resources: Annotated[str, typer.Option(help="Comma-separated resource classes.")] = "cpu,memory",
    out: Annotated[Path | None, typer.Option(help="Write the token to this file.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Offline (no server): sign a voucher with your own key, the same compact JWS the broker issues.

    Register it with `sbx voucher register` before the SME can redeem it.
    """
    from broker.cli.offline import sign_offline

    data = sign_offline(
        key,
        issuer=issuer,
        sme=sme,
        credits=credits,
        coverage_bps=coverage,
        valid_days=valid_days,
        credit_days=credit_days,
        resources=[r.strip() for r in resources.split(",") if r.strip()],
    )
    if out is not None:
        out.write_text(data["token"] + "\n")
    emit(data, as_json=as_json, human=data["token"])


@voucher_app.command("register")
def voucher_register(
    ctx: typer.Context,
    token: Annotated[str | None, typer.Argument(help="The signed voucher (or use --file).")] = None,
    file: Annotated[Path | None, typer.Option(help="Read the token from a file.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Record a voucher you signed offline; the broker checks its signature, your budget and the SME cap."""
    if file is not None:
        token = read_input(file, "the voucher file").strip()
    if not token:
        fail("give the voucher token as an argument or with --file")
    data, js = call(ctx, as_json, "POST", "/api/v1/vouchers/register", body={"token": token})
    emit(data, as_json=js, human=f"registered voucher {data['jti']} ({data['claims']['credits']} credits)")


@voucher_app.command("redeem")
def voucher_redeem(
    ctx: typer.Context,
    token: Annotated[
        str | None, typer.Argument(help="The voucher token (or use --file, or - for stdin).")
    ] = None,
    file: Annotated[Path | None, typer.Option(help="Read the token from a file.")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Retry-safe key.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Redeem a voucher into a credit grant."""
    if file is not None:
        token = read_input(file, "the voucher file").strip()
    elif token == "-":  # noqa: S105 - "-" means stdin
        token = sys.stdin.read().strip()
    if not token:
        fail("give the voucher token as an argument, with --file, or - to read stdin")
    data, js = call(
        ctx,
        as_json,
        "POST",
        "/api/v1/vouchers/redeem",
        body={"token": token},
        idempotency_key=idempotency_key,
    )
    grant = data["grant"]
    emit(
        data,
        as_json=js,
        human=f"redeemed: grant {grant['id']} with {grant['amount']} credits, coverage {grant['coverage_bps']} bps",
    )


@voucher_app.command("revoke")
def voucher_revoke(ctx: typer.Context, jti: str, as_json: JsonOpt = False) -> None:
    """Revoke an unredeemed voucher."""
    data, js = call(ctx, as_json, "POST", f"/api/v1/vouchers/{jti}/revoke")
    emit(data, as_json=js)


@voucher_app.command("show")
def voucher_show(ctx: typer.Context, jti: str, as_json: JsonOpt = False) -> None:
    """Show a voucher."""
    data, js = call(ctx, as_json, "GET", f"/api/v1/vouchers/{jti}")
    emit(data, as_json=js)


@voucher_app.command("list")
def voucher_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List vouchers you issued or received."""
    data, js = call(ctx, as_json, "GET", "/api/v1/vouchers")
    emit(data, as_json=js)


@app.command()
def whoami(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Who your token belongs to: organisation, role and token id (checks the token and the URL)."""
    data, js = call(ctx, as_json, "GET", "/api/v1/me")
    state: CliState = ctx.find_root().obj
    emit(
        data,
        as_json=js,
        human=f"{data['org_id']} ({data['role']}) via token {data['token_id']} at {state.url}",
    )


# -- money ----------------------------------------------------------------------------------------
@app.command()
def balance(
    ctx: typer.Context,
    org: Annotated[str | None, typer.Option(help="SME id (operators).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show an SME's credit: available voucher credit, held, co-payment, grants."""
    data, js = call(ctx, as_json, "GET", "/api/v1/balance", params={"org_id": org})
    lines = [
        f"available: {data['available']} credits   held: {data['held']}   "
        f"co-payment used: {data['copay_used']} of {data['copay_limit']}"
    ]
    for g in data["grants"]:
        lines.append(
            f"  grant {g['id']}: {g['balance']}/{g['amount']} credits, coverage {g['coverage_bps']} bps, "
            f"expires {time.strftime('%Y-%m-%d', time.gmtime(g['expires_ms'] / 1000))} ({g['status']})"
        )
    emit(data, as_json=js, human="\n".join(lines))


@app.command()
def ledger(
    ctx: typer.Context,
    what: Annotated[
        str | None,
        typer.Argument(help="`verify`: check balances against entries and the audit log (operators)."),
    ] = None,
    org: Annotated[str | None, typer.Option(help="Organisation id (operators).")] = None,
    after: Annotated[int, typer.Option(help="Only entries after this id.")] = 0,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 200,
    as_json: JsonOpt = False,
) -> None:
    """List ledger entries; `sbx ledger verify` checks the ledger proves itself."""
    if what == "verify":
        _ledger_verify(ctx, as_json)
        return
    if what is not None:
        fail(f"unknown ledger command {what!r} (try `sbx ledger verify`)")
    data, js = call(
        ctx,
        as_json,
        "GET",
        "/api/v1/ledger/entries",
        params={"org_id": org, "after_id": after, "limit": limit},
    )
    emit(data, as_json=js)


@hold_app.command("place")
def hold_place(
    ctx: typer.Context,
    amount: int,
    org: Annotated[str | None, typer.Option(help="SME id (operators).")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Retry-safe key.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Hold credits."""
    data, js = call(
        ctx,
        as_json,
        "POST",
        "/api/v1/holds",
        body={"amount": amount, "org_id": org},
        idempotency_key=idempotency_key,
    )
    emit(data, as_json=js)


@hold_app.command("show")
def hold_show(ctx: typer.Context, hold_id: str, as_json: JsonOpt = False) -> None:
    """One hold: its amount, voucher and co-payment shares, what was settled or released, and its state."""
    data, js = call(ctx, as_json, "GET", f"/api/v1/holds/{hold_id}")
    emit(data, as_json=js)


@hold_app.command("settle")
def hold_settle(ctx: typer.Context, hold_id: str, cost: int, as_json: JsonOpt = False) -> None:
    """Settle a hold for its cost (operators)."""
    data, js = call(ctx, as_json, "POST", f"/api/v1/holds/{hold_id}/settle", body={"cost": cost})
    emit(data, as_json=js)


@hold_app.command("release")
def hold_release(ctx: typer.Context, hold_id: str, as_json: JsonOpt = False) -> None:
    """Release a hold."""
    data, js = call(ctx, as_json, "POST", f"/api/v1/holds/{hold_id}/release")
    emit(data, as_json=js)


# -- audit ----------------------------------------------------------------------------------------
@audit_app.command("list")
def audit_list(
    ctx: typer.Context,
    after: Annotated[int, typer.Option(help="Only entries after this sequence number.")] = 0,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 200,
    as_json: JsonOpt = False,
) -> None:
    """List audit entries you may read."""
    data, js = call(ctx, as_json, "GET", "/api/v1/audit", params={"after_seq": after, "limit": limit})
    emit(
        [{k: v for k, v in e.items() if k != "body"} for e in data] if not js else data,
        as_json=js,
    )


@audit_app.command("verify")
def audit_verify(
    ctx: typer.Context,
    local: Annotated[
        bool, typer.Option(help="Verify the local state directory directly (no server).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Verify the hash chain against the signed checkpoints; names the first bad entry."""
    if local:
        from broker.bootstrap import verify_local

        data = verify_local()
        js = _state(ctx, as_json).as_json
    else:
        data, js = call(ctx, as_json, "POST", "/api/v1/audit/verify")
    if data["ok"]:
        human = f"audit chain valid: {data['checked']} entries"
    elif data.get("first_bad_seq") is None:  # the chain held; the ledger (or the record) did not
        human = f"audit verification FAILED: {data['reason']}"
    else:
        human = f"audit chain BROKEN at entry {data['first_bad_seq']}: {data['reason']}"
    emit(data, as_json=js, human=human)
    if not data["ok"]:
        raise typer.Exit(EXIT_VERIFY_FAILED)


@audit_app.command("checkpoints")
def audit_checkpoints(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The signed checkpoints of the log (size, root, time, cosignatures)."""
    data, js = call(ctx, as_json, "GET", "/api/v1/audit/checkpoints")
    emit(data, as_json=js)


@audit_app.command("checkpoint")
def audit_checkpoint(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Sign the current head of the log into the checkpoint file (operators)."""
    data, js = call(ctx, as_json, "POST", "/api/v1/audit/checkpoint")
    emit(data, as_json=js)


def _ledger_verify(ctx: typer.Context, as_json: bool) -> None:
    """`sbx ledger verify`: balances = sum of entries, sum = 0, holds consistent, transfers as recorded."""
    data, js = call(ctx, as_json, "POST", "/api/v1/audit/ledger")
    human = (
        f"ledger consistent: {data['transfers']} transfers ({data['unfolded']} not yet in the audit log)"
        if data["ok"]
        else "ledger INCONSISTENT:\n" + "\n".join(f"  {p}" for p in data["problems"])
    )
    emit(data, as_json=js, human=human)
    if not data["ok"]:
        raise typer.Exit(EXIT_VERIFY_FAILED)


@audit_app.command("prove")
def audit_prove(
    ctx: typer.Context,
    seq: int,
    tree_size: Annotated[
        int | None, typer.Option(help="Prove in this signed tree size (default: newest).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the proof to this file.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """An entry's inclusion proof in a signed checkpoint (check it offline with `sbx audit check-proof`)."""
    from broker.cli.witness import write_json

    data, js = call(
        ctx, as_json, "GET", f"/api/v1/audit/proofs/inclusion/{seq}", params={"tree_size": tree_size}
    )
    if out is not None:
        write_json(out, data)
    emit(
        data,
        as_json=js,
        human=f"entry {seq} in the signed tree of {data['tree_size']}: {len(data['proof'])} hashes",
    )


@audit_app.command("consistency")
def audit_consistency(
    ctx: typer.Context,
    old: int,
    new: int,
    out: Annotated[Path | None, typer.Option(help="Also write the proof to this file.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """A consistency proof that the signed tree of NEW entries extends the one of OLD."""
    from broker.cli.witness import write_json

    data, js = call(ctx, as_json, "GET", "/api/v1/audit/proofs/consistency", params={"old": old, "new": new})
    if out is not None:
        write_json(out, data)
    emit(data, as_json=js, human=f"tree {old} -> {new}: {len(data['proof'])} hashes")


@audit_app.command("check-proof")
def audit_check_proof(
    proof: Path,
    broker_key: Annotated[Path, typer.Option(help="The broker's JWK or JWK Set (JSON).")],
    witness: Annotated[list[str] | None, typer.Option(help="A witness verifier key (repeatable).")] = None,
    witnesses_required: Annotated[int, typer.Option(help="Cosignatures to demand.")] = 0,
    old_checkpoint: Annotated[Path | None, typer.Option(help="Your copy of the older checkpoint.")] = None,
) -> None:
    """Check a proof file offline (no broker, no database): `python -m broker.audit.verify_proof` does the same."""
    from broker.audit.verify_proof import main as verify_main

    args = [str(proof), "--broker-key", str(broker_key), "--witnesses-required", str(witnesses_required)]
    for key in witness or []:
        args += ["--witness", key]
    if old_checkpoint is not None:
        args += ["--old-checkpoint", str(old_checkpoint)]
    outcome = verify_main(args)  # 3: the proof does not hold
    raise typer.Exit(EXIT_VERIFY_FAILED if outcome == 3 else outcome)


@audit_app.command("witness")
def audit_witness(
    ctx: typer.Context,
    key: Annotated[Path, typer.Option(help="The witness's Ed25519 private key (PEM); created with --init.")],
    name: Annotated[
        str, typer.Option(help="The witness's name (a schema-less URL, e.g. funder.example/w1).")
    ],
    state: Annotated[
        Path, typer.Option(help="The witness's own state file (last co-signed tree head).")
    ] = Path("witness-state.json"),
    broker_key: Annotated[Path | None, typer.Option(help="The broker's JWK or JWK Set (JSON).")] = None,
    origin: Annotated[str, typer.Option(help="The log's origin line.")] = "sandbox-broker.local/audit",
    init: Annotated[
        bool, typer.Option(help="Create the key and print the verifier key for the operator.")
    ] = False,
    once: Annotated[bool, typer.Option(help="Co-sign the newest checkpoint once and exit.")] = False,
    interval_s: Annotated[int, typer.Option(help="Seconds between polls.")] = 30,
) -> None:
    """Run a witness: check each new checkpoint against the last one it co-signed, co-sign it, send it back."""
    from broker.cli.witness import init_key, run_witness

    if init:
        typer.echo(init_key(key, name))
        return
    if broker_key is None:
        fail("--broker-key is required to run a witness")
    cli: CliState = ctx.obj
    run_witness(
        key, name, state, broker_key, origin, url=cli.url, token=cli.token, once=once, interval_s=interval_s
    )


@app.command()
def demo(
    ctx: typer.Context,
    state_dir: Annotated[Path, typer.Option(help="Where the demo keeps its state.")] = Path(".sbx-demo"),
    fresh: Annotated[bool, typer.Option(help="Start from an empty state directory.")] = True,
    lang: Annotated[
        str | None, typer.Option("--lang", help="zh-CN: the Chinese programme, in Chinese.")
    ] = None,
) -> None:
    """Run the main job end to end on the embedded default (SQLite, local Ray, local object store)."""
    from broker.cli.client import cli_locale
    from broker.demo import run_demo

    run_demo(state_dir, fresh=fresh, locale=cli_locale(lang or getattr(ctx.find_root().obj, "lang", None)))


def main() -> None:
    """Console entry point: CLI errors become one line on stderr and a non-zero exit."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        app()
    except CliError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug of ours: one line, not a traceback (SBX_DEBUG=1 shows it)
        if os.environ.get("SBX_DEBUG"):
            raise
        typer.echo(
            f"error: sbx failed unexpectedly ({type(exc).__name__}: {exc}); SBX_DEBUG=1 shows where", err=True
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
