"""The CLI's HTTP client: one place that turns broker errors into messages and exit codes."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NoReturn

import httpx
import typer

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
    """Calls the broker's REST API with the caller's bearer token."""

    def __init__(
        self, url: str, token: str | None, *, timeout_s: float = 60.0, lang: str | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.locale = cli_locale(lang)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers["Accept-Language"] = self.locale.replace("_", "-")  # the broker translates error details
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

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
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(method, path, json=body, params=clean, headers=headers)
        except httpx.TransportError as exc:
            raise CliError(
                translate_detail(
                    f"cannot reach the broker at {self.url} ({type(exc).__name__}); is `sbx serve` running? "
                    "Set --url or SBX_URL.",
                    self.locale,
                ),
                exit_code=2,
            ) from exc
        if response.status_code >= 400:
            try:
                payload = response.json()
                message = f"{payload['error']}: {translate_detail(str(payload['detail']), self.locale)}"
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {response.status_code}"
            raise CliError(message, exit_code=1)
        if not response.content:
            return None
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    def download(self, path: str) -> bytes:
        """GET a binary resource (weights, reports); errors as :meth:`call`."""
        try:
            response = self._http.get(path)
        except httpx.TransportError as exc:
            raise CliError(
                f"cannot reach the broker at {self.url} ({type(exc).__name__})", exit_code=2
            ) from exc
        if response.status_code >= 400:
            try:
                payload = response.json()
                raise CliError(f"{payload['error']}: {payload['detail']}")
            except (ValueError, KeyError, TypeError):
                raise CliError(f"HTTP {response.status_code}") from None
        return response.content

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()


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
