"""Two languages, one code path: Simplified Chinese (``zh_CN``) and English (``en``) through Babel catalogues.

Every human-facing string is an English message id marked with ``_()`` (Python) or ``{% trans %}`` /
``_()`` (Jinja2); ``broker/locale/<locale>/LC_MESSAGES/messages.po`` holds the translations and the compiled
``messages.mo`` beside it is what runs (``make i18n`` re-extracts and compiles; ``tests/unit/test_i18n.py``
fails when a catalogue misses a message or its ``.mo`` is stale). English needs no catalogue: a message id
is its own English text.

Which language: the user's explicit choice (``?lang=``/cookie in the dashboard, ``--lang``/``SBX_LANG`` in
the CLI, the organisation's setting), then the browser's ``Accept-Language``, then the programme's default,
then English (:func:`negotiate`). Error ``code`` s never change; only ``detail`` texts are translated, at the
edge (``broker.app``'s handlers and the CLI client), from :mod:`broker.messages`.
"""

from __future__ import annotations

import functools
import gettext as _gettext
from pathlib import Path

from babel.support import NullTranslations, Translations

LOCALE_DIR = Path(__file__).parent / "locale"
DOMAIN = "messages"
LOCALES = ("zh_CN", "en")
DEFAULT_LOCALE = "en"
_ALIASES = {"zh": "zh_CN", "zh_cn": "zh_CN", "zh_hans": "zh_CN", "zh_hans_cn": "zh_CN", "zh_sg": "zh_CN"}


def normalise(tag: str | None) -> str | None:
    """``zh-CN``, ``zh_CN``, ``zh``, ``zh-Hans`` -> ``zh_CN``; ``en``, ``en-GB`` -> ``en``; others ``None``."""
    if not tag:
        return None
    key = tag.strip().replace("-", "_").lower()
    if key in _ALIASES:
        return _ALIASES[key]
    if key == "en" or key.startswith("en_"):
        return "en"
    if key.startswith("zh_"):
        return "zh_CN"  # zh-TW readers are served Simplified rather than English: the closer of the two
    return None


def accepted(header: str | None) -> list[str]:
    """The locales of an ``Accept-Language`` header we speak, best first (q-values honoured; bounded)."""
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate((header or "")[:500].split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:6])
            except ValueError:
                quality = 0.0
        locale = normalise(tag)
        if locale is not None and quality > 0:
            ranked.append((-quality, index, locale))
    return list(dict.fromkeys(locale for _, _, locale in sorted(ranked)))


def negotiate(*choices: str | None, accept_language: str | None = None, default: str | None = None) -> str:
    """The first of ``choices`` we speak (explicit choices, most specific first), else the best of
    ``accept_language``, else ``default`` (the programme's), else English."""
    for choice in choices:
        locale = normalise(choice)
        if locale is not None:
            return locale
    for locale in accepted(accept_language):
        return locale
    return normalise(default) or DEFAULT_LOCALE


@functools.cache
def translations(locale: str) -> NullTranslations:
    """The compiled catalogue of ``locale`` (English: none, message ids are English). Immutable, so cached."""
    if locale == DEFAULT_LOCALE:
        return NullTranslations()
    path = LOCALE_DIR / locale / "LC_MESSAGES" / f"{DOMAIN}.mo"
    with path.open("rb") as handle:
        return Translations(handle, domain=DOMAIN)


def gettext(locale: str, message: str) -> str:
    """``message`` (an English message id) in ``locale``."""
    return translations(locale).gettext(message)


def translator(locale: str) -> _gettext.NullTranslations:
    """The ``gettext``/``ngettext`` object of ``locale`` (for Jinja2's i18n extension)."""
    return translations(locale)


def _(message: str) -> str:
    """Mark ``message`` for extraction; the text is translated later, where the viewer's locale is known."""
    return message
