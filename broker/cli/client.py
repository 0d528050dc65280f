"""The CLI's HTTP client: one place that turns broker errors into messages and exit codes."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NoReturn

import typer

from broker.client import BrokerError, Client, Unreachable
from broker.i18n import negotiate
from broker.messages import translate_detail


class CliError(Exception):
    """A failure the CLI reports as one line on stderr and a non-zero exit."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def fail(message: str, exit_code: int = 1) -> NoReturn:
    """Print ``error: message`` on stderr (in the CLI's language when catalogued) and exit non-zero."""
    typer.echo(f"error: {translate_detail(message, cli_locale())}", err=True)
    raise typer.Exit(exit_code)


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
        if isinstance(exc, Unreachable):
            return CliError(detail, exit_code=2)
        return CliError(f"{exc.code}: {detail}" if exc.structured else detail, exit_code=1)

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()


def emit(data: Any, *, as_json: bool, human: str | None = None) -> None:
    """Print ``data`` as JSON (``--json``) or as the given human text (or a readable default)."""
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return
    if human is not None:
        typer.echo(human)
        return
    if isinstance(data, list):
        for item in data:
            typer.echo(_line(item))
        if not data:
            typer.echo("(none)")
        return
    if isinstance(data, dict):
        for key, value in data.items():
            typer.echo(f"{key}: {value if not isinstance(value, dict | list) else json.dumps(value)}")
        return
    typer.echo(str(data))


def _line(item: Any) -> str:
    if isinstance(item, dict):
        return "  ".join(f"{k}={v}" for k, v in item.items() if not isinstance(v, dict | list))
    return str(item)


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
        fail(str(exc), exc.exit_code)
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
        fail(str(exc), exc.exit_code)
    finally:
        client.close()
