"""Initialising a state directory, and local (server-less) maintenance commands."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from broker.container import build_container
from broker.db import orgs
from broker.db import vouchers as vouchers_db
from broker.db.migrate import upgrade
from broker.keys import (
    Kek,
    KekUnavailable,
    create_broker_key,
    create_kek,
    default_kek_path,
    issuer_key_label,
    load_kek,
    new_kek,
    read_kek_file,
    rewrap_broker_keys,
    rotate_broker_key,
    write_kek_file,
)
from broker.services.registry import build_services
from broker.settings import Settings
from common.clock import SystemClock


def initialise(
    state_dir: Path,
    *,
    operator_name: str = "operator",
    settings: Settings | None = None,
    token_file: Path | None = None,
) -> dict[str, Any]:
    """Create the state dir, the KEK (outside it), the wrapped broker key, the schema, the first operator.

    The first operator's token is returned once (``token``) and written to ``token_file`` (mode 0600) only
    when one is named: a plaintext token beside the database is what a job escaping its sandbox, or a copy
    of the state dir, would look for. Running it again changes nothing and returns ``token: None``.
    """
    settings = (settings or Settings(state_dir=state_dir)).model_copy(update={"state_dir": state_dir})
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    kek_path = _ensure_kek(settings)
    kek = load_kek(kek_path, production=settings.environment == "production", state_dir=state_dir)
    key_path = create_broker_key(settings.keys_dir, kek, now_ms=SystemClock().now_ms())
    upgrade(settings.resolved_database_url)
    token, org_id = _first_operator(settings.model_copy(update={"kek_file": kek_path}), operator_name)
    if token is not None and token_file is not None:
        _write_secret(token_file, token)
    return {
        "state_dir": str(state_dir.resolve()),
        "broker_key": str(key_path.resolve()),
        "kek_file": str(kek_path.resolve()),
        "database": settings.resolved_database_url,
        "operator_org": org_id,
        "token": token,
        "token_file": str(token_file.resolve()) if token is not None and token_file is not None else None,
    }


def _ensure_kek(settings: Settings) -> Path:
    """The KEK file: embedded, made at ``SBX_KEK_FILE`` or the default path; production, it must exist."""
    path = settings.kek_file or default_kek_path()
    if settings.environment != "production":
        create_kek(path, state_dir=settings.state_dir)
    return path


def _first_operator(settings: Settings, operator_name: str) -> tuple[str | None, str | None]:
    """Create the first operator and its token, unless there is an operator already."""
    container = build_container(settings, group_commit=False)
    try:
        if container.db.read(lambda conn: bool(orgs.list_orgs(conn, role="operator"))):
            return None, None
        services = build_services(container)
        org = services.orgs.create(None, name=operator_name, role="operator")
        token = services.orgs.create_token(None, org_id=org["id"], label="first operator token")["token"]
        return str(token), str(org["id"])
    finally:
        container.close()


def verify_local(settings: Settings | None = None) -> dict[str, Any]:
    """Verify the audit chain straight from the database and the checkpoint file."""
    container = build_container(settings or Settings(), group_commit=False)
    try:
        return build_services(container).audit.verify(None)
    finally:
        container.close()


def rotate_keys(settings: Settings | None = None, *, broker_key: bool = False) -> dict[str, Any]:
    """``sbx keys rotate``: a new KEK re-wraps every key the broker holds; ``broker_key`` also makes a new
    broker signing key (the old one retires and still verifies what it signed).

    Crash-safe by construction: the KEK file first holds the new key *and* the old one, then every key is
    re-wrapped (the database in one transaction), then the old KEK is dropped from the file. At every step
    some line of the file unwraps every stored key. A running broker re-reads the file when it needs to.
    """
    settings = settings or Settings()
    path = settings.kek_file or default_kek_path()
    old = load_kek(path, production=settings.environment == "production", state_dir=settings.state_dir)
    fresh = new_kek()
    try:
        write_kek_file(path, [fresh, *read_kek_file(path)])
    except OSError as exc:  # production: a read-only Secret mount
        raise KekUnavailable(
            f"cannot rewrite the KEK file {path} ({exc.strerror}); run `sbx keys rotate` where SBX_KEK_FILE "
            "is a writable copy, then put the new file into the KEK Secret"
        ) from exc
    both = Kek([fresh, *old.keys], path)
    rewrapped = rewrap_broker_keys(settings.keys_dir, old, both) + _rewrap_issuer_keys(settings, old, both)
    write_kek_file(path, [fresh])
    out: dict[str, Any] = {"kek_file": str(path), "kek_id": both.current_id, "rewrapped": rewrapped}
    if broker_key:
        out["broker_kid"] = rotate_broker_key(
            settings.keys_dir, Kek([fresh], path), now_ms=SystemClock().now_ms()
        )
    return out


def _rewrap_issuer_keys(settings: Settings, old: Kek, new: Kek) -> int:
    container = build_container(settings.model_copy(update={"kek_file": old.path}), group_commit=False)

    def tx(conn: Any) -> int:
        held = vouchers_db.wrapped_keys(conn)
        for kid, wrapped in held:
            pem = old.unwrap(wrapped, label=issuer_key_label(kid))
            vouchers_db.set_wrapped(conn, kid=kid, private_wrapped=new.wrap(pem, label=issuer_key_label(kid)))
        return len(held)

    try:
        return container.db.write(tx)
    finally:
        container.close()


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")
