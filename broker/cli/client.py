"""The CLI's HTTP client: one place that turns broker errors into messages and exit codes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer

from broker.cli import render
from broker.client import BrokerError, Client, Unreachable
from broker.i18n import negotiate
from broker.messages import translate_detail

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_VERIFY_FAILED = 4
EXIT_CODES_HELP = (
    "Exit codes: 0 done; 1 refused by the broker (its code on stderr); 2 usage (bad arguments, an unreadable "
    "file); 3 broker unreachable or unavailable (5xx, 503: retry later); 4 verification failed (audit, ledger, "
    'report). With --json an error is one JSON object on stderr: {"error": code, "detail": reason}.'
)


class CliError(Exception):
    """A failure the CLI reports as one line on stderr and a non-zero exit (``code``: the broker's)."""

    def __init__(
        self, message: str, exit_code: int = 1, *, code: str | None = None, detail: str | None = None
    ) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.code = code
        self.detail = message if detail is None else detail  # the reason without its code


def fail(message: str, exit_code: int = 1, *, code: str | None = None) -> NoReturn:
    """Print the error on stderr and exit non-zero: ``error: [code: ]message`` (in the CLI's language when
    catalogued), or under ``--json`` one object ``{"error": code, "detail": message}``."""
    detail = translate_detail(message, cli_locale())
    if json_mode():
        error = code or ("usage" if exit_code == EXIT_USAGE else "cli_error")
        payload = json.dumps({"error": error, "detail": detail}, ensure_ascii=False)
        typer.echo(payload, err=True)
    else:
        typer.echo(f"error: {code}: {detail}" if code else f"error: {detail}", err=True)
    raise typer.Exit(exit_code)


def json_mode() -> bool:
    """Whether the running command was given ``--json`` (on the root command or the subcommand)."""
    ctx = _current_context()
    if ctx is None:
        return False
    return bool(ctx.params.get("as_json") or getattr(ctx.find_root().obj, "as_json", False))


def read_input(path: Path, what: str) -> str:
    """A user's input file as text, or a usage error naming it (never a traceback)."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        fail(f"cannot read {what} {path}: {reason}", EXIT_USAGE)


def read_json_input(path: Path, what: str) -> Any:
    """A user's JSON input file, or a usage error naming it and where it is malformed."""
    text = read_input(path, what)
    try:
        return json.loads(text)
    except ValueError as exc:
        fail(f"{what} {path} is not valid JSON: {exc}", EXIT_USAGE)


def cli_locale(lang: str | None = None) -> str:
    """The CLI's language: ``lang``, the running command's ``--lang``, then ``SBX_LANG``, then ``LANG``
    (``zh_CN.UTF-8``), else English."""
    return negotiate(lang, _command_lang(), os.environ.get("SBX_LANG"), os.environ.get("LANG"))


def _command_lang() -> str | None:
    """The ``--lang`` of the command being run (``None`` outside one)."""
    try:  # Typer 0.2x runs on its own copy of Click
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - a Typer on the public Click
        from click import get_current_context  # type: ignore[no-redef]
    ctx = get_current_context(silent=True)
    return getattr(ctx.find_root().obj, "lang", None) if ctx is not None else None


def _current_context() -> Any:
    """The Click context of the command being run (``None`` outside one)."""
    try:  # Typer 0.2x runs on its own copy of Click
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - a Typer on the public Click
        from click import get_current_context  # type: ignore[no-redef]
    return get_current_context(silent=True)


class BrokerClient:
    """The CLI's view of :class:`broker.client.Client` (every request goes through it, so the CLI and the
    Python client never drift): refusals become :class:`CliError` with the broker's code, its reason in
    the CLI's language, and the exit code (1 refused, 2 unreachable)."""

    def __init__(
        self, url: str, token: str | None, *, timeout_s: float = 60.0, lang: str | None = None
    ) -> None:
        self.locale = cli_locale(lang)
        self.client = Client(url, token, timeout_s=timeout_s, language=self.locale)
        self.url = self.client.url

    def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        """Send one request; return the decoded JSON, or raise :class:`CliError` with the broker's reason."""
        try:
            return self.client.request(
                method, path, body=body, params=params, idempotency_key=idempotency_key
            )
        except BrokerError as exc:
            raise self._cli_error(exc) from exc

    def download(self, path: str) -> bytes:
        """GET a binary resource (weights, reports); errors as :meth:`call`."""
        try:
            return self.client.download(path)
        except BrokerError as exc:
            raise self._cli_error(exc) from exc

    def _cli_error(self, exc: BrokerError) -> CliError:
        """One line for stderr: ``code: detail`` (translated), or the bare reason when there is no code."""
        detail = translate_detail(exc.detail, self.locale)
        exit_code = EXIT_UNAVAILABLE if exc.unavailable else EXIT_REFUSED
        if isinstance(exc, Unreachable) or not exc.structured:
            return CliError(detail, exit_code=exit_code, code=exc.code)
        return CliError(f"{exc.code}: {detail}", exit_code=exit_code, code=exc.code, detail=detail)

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()


def emit(data: Any, *, as_json: bool, human: str | None = None) -> None:
    """Print ``data`` as JSON (``--json``) or as the given human text (or a readable default)."""
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        return
    if human is not None:
        typer.echo(human)
        return
    if isinstance(data, list):
        render.print_list(data)  # a rich table, dates and amounts readable
        return
    if isinstance(data, dict):
        render.print_object(data)
        return
    typer.echo(str(data))


def call(ctx: typer.Context, as_json: bool, method: str, path: str, **kwargs: Any) -> tuple[Any, bool]:
    """Call the broker with the global options (url, token, --json on the root command or the subcommand).

    Returns the decoded answer and whether to print JSON; a refusal prints one line on stderr and exits
    non-zero with the broker's code and reason.
    """
    state = ctx.find_root().obj
    client = BrokerClient(state.url, state.token, lang=getattr(state, "lang", None))
    try:
        return client.call(method, path, **kwargs), bool(as_json or state.as_json)
    except CliError as exc:
        fail(exc.detail, exc.exit_code, code=exc.code)
    finally:
        client.close()


def fetch_bytes(ctx: typer.Context, path: str) -> bytes:
    """GET a binary resource (weights, job output, reports) with the global options; a refusal prints one
    line on stderr and exits non-zero, as :func:`call` does."""
    state = ctx.find_root().obj
    client = BrokerClient(state.url, state.token)
    try:
        return client.download(path)
    except CliError as exc:
        fail(exc.detail, exc.exit_code, code=exc.code)
    finally:
        client.close()


def download_to(
    ctx: typer.Context, path: str, out: Path, *, as_json: bool, ident: tuple[str, str], what: str
) -> None:
    """Fetch ``path`` into ``out`` and report it (``ident``: the id's JSON name and value; ``what`` names the
    content in the human line): the one download command body the CLI's download commands share."""
    data = fetch_bytes(ctx, path)
    out.write_bytes(data)
    summary = {ident[0]: ident[1], "path": str(out), "bytes": len(data)}
    as_json = as_json or bool(ctx.find_root().obj.as_json)
    emit(summary, as_json=as_json, human=f"wrote {len(data)} bytes of {what} to {out}")
