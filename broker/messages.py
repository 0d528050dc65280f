"""Error ``detail`` texts in the reader's language, translated at the edge; error ``code`` s never change.

Domain code raises errors with English details (often f-strings with ids and numbers in them). The edges —
the API's error handlers (``broker.app``) and the CLI client — call :func:`translate_detail`, which finds
the catalogued template the detail was made from and renders its translation with the same values. A detail
no template matches stays English (the code is what programs switch on; the text is for people).

:data:`TEMPLATES` lists the messages the API emits most: authentication and roles, missing objects, money
and budgets, unified social credit codes, periods and bounded input. Placeholders are ``{name}``; on
matching, each takes the shortest text that lets the whole detail match.
"""

from __future__ import annotations

import functools
import re

from broker.i18n import DEFAULT_LOCALE, _, gettext

TEMPLATES: tuple[str, ...] = (
    _("send `Authorization: Bearer <token>`; `sbx token create` makes one"),
    _("the token is unknown, expired or revoked"),
    _("this needs the role {roles}; your token is for a {role}"),
    _("cross-site form posts are refused"),
    _("the broker failed to handle this request; nothing was changed"),
    _("no organisation {org_id}"),
    _("no organisation with uscc {uscc}"),
    _("no programme {org_id}"),
    _("no dataset {dataset_id}"),
    _("no job {job_id}"),
    _("no token {token_id}"),
    _("an organisation named {name} already exists"),
    _("an organisation with uscc {uscc} already exists"),
    _("an organisation needs a non-empty name"),
    _("an issuer needs --year-budget and --sme-cap (credits)"),
    _("budgets cannot be negative"),
    _("uscc {value}: a code has 18 characters, not {length}"),
    _("uscc {value}: character {position} ({char}) is not in the code's alphabet (no I, O, S, V, Z)"),
    _("uscc {value}: character 1 ({char}) is no registration authority"),
    _("uscc {value}: character 2 ({char}) is no organisation category of authority {authority}"),
    _("uscc {value}: character {position} ({char}) must be a digit (division code, positions 3-8)"),
    _("uscc {value}: check character (18) is {char}, the first 17 characters give {expected}"),
    _("unknown time zone {zone} (IANA, e.g. Asia/Shanghai)"),
    _("unknown currency {currency} (ISO 4217, e.g. CNY)"),
    _("{field}: {value} is not a whole number of fen"),
    _("period {label}: write a month (2026-11), a year (2026) or a range (2026-01..2026-06)"),
    _("period {label} ends before it starts"),
    _("there are {count} programmes; name one with issuer_org ({ids})"),
    _("{field}: {value} is outside {interval}"),
    _("{field}: expected an integer, got {type}"),
    _("cannot reach the broker at {url} ({error}); is `sbx serve` running? Set --url or SBX_URL."),
    # the CLI's own refusals (broker.cli)
    _("--format xlsx writes a file: give --out report.xlsx"),
    _("give the amount: --credits (smallest unit) or --yuan"),
    _("{option} and the amount in the smallest unit were both given; give one"),
)


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(
        re.escape(part) if index % 2 == 0 else f"(?P<{part}>.+?)" for index, part in enumerate(parts)
    )
    return re.compile(regex, re.DOTALL)


@functools.cache
def _compiled() -> tuple[tuple[str, re.Pattern[str]], ...]:
    """The templates as patterns, the most specific (most literal text) first: ``no organisation with uscc
    {uscc}`` must win over ``no organisation {org_id}``."""
    ordered = sorted(TEMPLATES, key=lambda t: -len(re.sub(r"\{\w+\}", "", t)))
    return tuple((template, _pattern(template)) for template in ordered)


def translate_detail(detail: str, locale: str) -> str:
    """``detail`` in ``locale`` when a catalogued template made it (its values carried over), else as is."""
    if locale == DEFAULT_LOCALE or len(detail) > 2000:
        return detail
    exact = gettext(locale, detail)
    if exact != detail:
        return exact
    for template, pattern in _compiled():
        match = pattern.fullmatch(detail)
        if match is not None:
            return gettext(locale, template).format(**match.groupdict())
    return detail
