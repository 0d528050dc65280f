"""Every API operation has an ``sbx`` command (issue 17.2): the (method, path) pairs the CLI's source
sends, compared with the OpenAPI description. A new route without a command fails here; so does a gap
listed below once it is closed (the list only shrinks)."""

from __future__ import annotations

import re
from pathlib import Path

from broker.app import create_app
from broker.services.registry import Services

CLI = Path(__file__).resolve().parents[2] / "broker" / "cli"
_CALL = re.compile(r'"(GET|POST|PUT|PATCH|DELETE)",\s*f?"(/api/v1/[^"?]*)')
_PATH = re.compile(r'f?"(/api/v1/[^"?]*)')
Op = tuple[str, str]

# Not commands by design: a job's code archive is fetched by the job's own pod with a one-time token.
EXEMPT: dict[Op, str] = {("GET", "/api/v1/archives/{}.zip"): "fetched by the job's pod, not a person"}
# Operations without a command yet; the list only shrinks (a closed gap listed here fails the test).
KNOWN_GAPS: set[Op] = {("PUT", "/api/v1/orgs/{}/locale")}


def _template(path: str) -> str:
    """``/api/v1/jobs/{job_id}`` and ``/api/v1/jobs/{jid}`` alike: parameters blanked."""
    return re.sub(r"\{[^}]*\}", "{}", path).rstrip("/")


def cli_operations() -> tuple[set[Op], set[str]]:
    """The operations the CLI's modules call: literal method and path in ``call(...)``, and every other path
    literal (held in a variable, or fetched) as a path any method may use."""
    source = "\n".join(p.read_text() for p in sorted(CLI.glob("*.py")))
    calls = {(m, _template(p)) for m, p in _CALL.findall(source)}
    paths = {_template(p) for p in _PATH.findall(_CALL.sub("", source))}
    return calls, paths


def covered(op: Op, calls: set[Op], paths: set[str]) -> bool:
    """Whether the CLI sends ``op``: a ``{}`` segment of a CLI path (``/{how}``) matches any segment."""
    method, path = op
    for cli_method, cli_path in [*calls, *(("*", p) for p in paths)]:
        if cli_method not in (method, "*"):
            continue
        mine, theirs = cli_path.split("/"), path.split("/")
        if len(mine) == len(theirs) and all(a in ("{}", b) for a, b in zip(mine, theirs, strict=True)):
            return True
    return False


def api_operations(services: Services) -> set[Op]:
    """Every documented operation of the API (``/api/v1``), by method and path template."""
    document = create_app(services).openapi()
    return {
        (method.upper(), _template(path))
        for path, item in document["paths"].items()
        if path.startswith("/api/v1/")
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }


def test_every_api_operation_has_a_command(services: Services) -> None:
    calls, paths = cli_operations()
    api = api_operations(services) - set(EXEMPT)
    missing = {op for op in api if not covered(op, calls, paths)} - KNOWN_GAPS
    assert not missing, f"API operations without an sbx command: {sorted(missing)}"
    closed = {op for op in KNOWN_GAPS if covered(op, calls, paths)}
    assert not closed, f"remove these from KNOWN_GAPS, they have commands now: {sorted(closed)}"
    every = api_operations(services)
    unknown = {call for call in calls if not any(covered(op, {call}, set()) for op in every)}
    assert not unknown, f"the CLI calls operations the API does not have: {sorted(unknown)}"


def test_the_check_catches_a_route_without_a_command() -> None:
    """Negative control: an operation no CLI source names is reported as missing."""
    calls, paths = cli_operations()
    assert not covered(("DELETE", "/api/v1/jobs/{}"), calls, paths)
    assert not covered(("GET", "/api/v1/no-such-route"), calls, paths)
    assert covered(("POST", "/api/v1/access-requests/{}/revoke"), calls, paths)


# Commands without --json, and why: the demo narrates a walkthrough for a person; check-proof's output is
# broker.audit.verify_proof's; the witness is a long-running daemon that logs.
NO_JSON = {"demo", "audit check-proof", "audit witness"}


def test_every_command_takes_json() -> None:
    from typer.main import get_command

    from broker.cli.main import app

    def leaves(command: object, prefix: tuple[str, ...]) -> list[tuple[str, object]]:
        subs: dict[str, object] = getattr(command, "commands", {}) or {}
        if not subs:
            return [(" ".join(prefix), command)]
        return [leaf for name, sub in subs.items() for leaf in leaves(sub, (*prefix, name))]

    without = {
        name
        for name, command in leaves(get_command(app), ())
        if not any("--json" in (getattr(p, "opts", None) or []) for p in getattr(command, "params", []))
    }
    assert without == NO_JSON, f"commands without --json: {sorted(without - NO_JSON)}"
