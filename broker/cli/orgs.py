"""CLI helpers for organisations: amounts typed in yuan, and one line that names an organisation."""

from __future__ import annotations

from typing import Any

from broker.cli.client import cli_locale, fail
from broker.messages import translate_detail
from common.errors import InvalidInput
from common.money import to_minor


def yuan_option(text: str | None, option: str, currency: str | None, minor: int | None) -> int | None:
    """The amount in the currency's smallest unit: ``text`` (major units, e.g. yuan, read by the bounded number
    parser) when given, else ``minor`` (already in the smallest unit). Giving both is an error."""
    if text is None:
        return minor
    if minor is not None:
        fail(f"{option} and the amount in the smallest unit were both given; give one")
    try:
        return to_minor(text, option, currency)
    except InvalidInput as exc:
        fail(f"{exc.code}: {translate_detail(exc.detail, cli_locale())}")


def org_line(org: dict[str, Any]) -> str:
    """``org_… role name (中文名 / English name) uscc`` for a human reader."""
    names = " / ".join(n for n in (org.get("name_zh"), org.get("name_en")) if n)
    parts = [org["id"], org["role"], org["name"]]
    if names:
        parts.append(f"({names})")
    if org.get("uscc"):
        parts.append(org["uscc"])
    return "  ".join(parts)
