"""Initialising a state directory, and local (server-less) maintenance commands."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from broker.container import build_container
from broker.db import orgs
from broker.db.migrate import upgrade
from broker.keys import create_broker_key
from broker.services.registry import build_services
from broker.settings import Settings

TOKEN_FILE = "operator.token"  # noqa: S105 - a file name, not a secret


def initialise(
    state_dir: Path, *, operator_name: str = "operator", settings: Settings | None = None
) -> dict[str, Any]:
    """Create the state dir, broker key (0600), schema, the first operator and its token (once).

    Running it again on an initialised directory changes nothing and returns ``token: None``.
    """
    settings = settings or Settings(state_dir=state_dir)
    settings = settings.model_copy(update={"state_dir": state_dir})
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    key_path = create_broker_key(settings.keys_dir)
    upgrade(settings.resolved_database_url)
    container = build_container(settings, group_commit=False)
    try:
        has_operator = container.db.read(lambda conn: bool(orgs.list_orgs(conn, role="operator")))
        token: str | None = None
        org_id: str | None = None
        if not has_operator:
            services = build_services(container)
            org = services.orgs.create(None, name=operator_name, role="operator")
            org_id = org["id"]
            token = services.orgs.create_token(None, org_id=org["id"], label="first operator token")["token"]
            _write_secret(state_dir / TOKEN_FILE, token)
    finally:
        container.close()
    return {
        "state_dir": str(state_dir.resolve()),
        "broker_key": str(key_path.resolve()),
        "database": settings.resolved_database_url,
        "operator_org": org_id,
        "token": token,
    }


def verify_local(settings: Settings | None = None) -> dict[str, Any]:
    """Verify the audit chain straight from the database and the checkpoint file."""
    container = build_container(settings or Settings(), group_commit=False)
    try:
        return build_services(container).audit.verify(None)
    finally:
        container.close()


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")
