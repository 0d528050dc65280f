"""The message catalogues: extract every marked string, update ``broker/locale/zh_CN``'s ``.po``, compile ``.mo``.

``python scripts/i18n.py`` (``make i18n``) re-extracts with Babel (``babel.cfg``: Python ``_()`` and Jinja2
``{% trans %}``/``_()``), merges into the ``.po`` (new messages get an empty translation, which
``tests/unit/test_i18n.py`` refuses until a translator fills it; vanished ones are dropped) and compiles the
``.mo`` the broker loads. The test imports :func:`extract` and :func:`compiled` to check the committed files.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po

ROOT = Path(__file__).resolve().parent.parent
LOCALE_DIR = ROOT / "broker" / "locale"
LOCALES = ("zh_CN",)
_METHODS = [
    ("broker/**.py", "python"),
    ("broker/web/templates/**.html", "jinja2"),
]
_OPTIONS = {
    "broker/web/templates/**.html": {
        "extensions": "jinja2.ext.i18n",
        "trim_blocks": "True",
        "lstrip_blocks": "True",
    }
}


def extract() -> set[str]:
    """Every message id marked in the broker's code and templates (Babel's extraction, as ``pybabel``)."""
    found: set[str] = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
        str(ROOT), method_map=_METHODS, options_map=_OPTIONS, keywords={"_": None}
    ):
        if isinstance(message, str) and message:
            found.add(message)
    return found


def po_path(locale: str) -> Path:
    """Where a locale's ``.po`` lives (its ``.mo`` is beside it)."""
    return LOCALE_DIR / locale / "LC_MESSAGES" / "messages.po"


def read(locale: str) -> Catalog:
    """The committed catalogue of ``locale``."""
    with po_path(locale).open("rb") as handle:
        return read_po(handle, locale=locale)


def compiled(catalog: Catalog) -> bytes:
    """The ``.mo`` bytes of ``catalog`` (what the committed ``.mo`` must equal)."""
    out = io.BytesIO()
    write_mo(out, catalog)
    return out.getvalue()


def update(locale: str, translations: dict[str, str] | None = None) -> Catalog:
    """Merge a fresh extraction into ``locale``'s ``.po`` (optionally adding ``translations``), write both."""
    old = read(locale) if po_path(locale).exists() else Catalog(locale=locale)
    catalog = Catalog(locale=locale, project="sandbox-broker", charset="utf-8", fuzzy=False)
    for message_id in sorted(extract()):
        existing = old.get(message_id)
        text = (translations or {}).get(message_id) or (str(existing.string) if existing else "")
        catalog.add(message_id, text)
    po_path(locale).parent.mkdir(parents=True, exist_ok=True)
    with po_path(locale).open("wb") as handle:
        write_po(handle, catalog, omit_header=False, sort_output=True, width=110)
    po_path(locale).with_suffix(".mo").write_bytes(compiled(read(locale)))
    return catalog


def main() -> int:
    """Update and compile every catalogue; exit 1 when a message still lacks its translation."""
    missing = 0
    for locale in LOCALES:
        catalog = update(locale)
        empty = [m.id for m in catalog if m.id and not m.string]
        for message_id in empty:
            print(f"{locale}: untranslated: {message_id}", file=sys.stderr)
        missing += len(empty)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
