"""The Babel catalogues are complete and current: a fresh extraction (Babel's API, as ``pybabel extract``)
equals the committed ``.po``, every message is translated with the same placeholders, and the committed
``.mo`` is exactly the ``.po`` compiled. Language negotiation and error-detail translation."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from broker.i18n import accepted, gettext, negotiate, normalise
from broker.messages import translate_detail
from common.uscc import InvalidUscc, validate

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import i18n as catalogues

_PLACEHOLDER = re.compile(r"\{\w+\}|%\(\w+\)s")


@pytest.fixture(scope="module")
def extracted() -> set[str]:
    return catalogues.extract()


@pytest.mark.parametrize("locale", catalogues.LOCALES)
def test_catalogue_has_every_message_and_nothing_stale(locale: str, extracted: set[str]) -> None:
    committed = {m.id for m in catalogues.read(locale) if m.id}
    missing, stale = sorted(extracted - committed), sorted(committed - extracted)
    assert not missing, f"run `make i18n` and translate: {missing}"
    assert not stale, f"run `make i18n` (messages no longer in the code): {stale}"


@pytest.mark.parametrize("locale", catalogues.LOCALES)
def test_every_message_is_translated_with_its_placeholders(locale: str) -> None:
    for message in catalogues.read(locale):
        if not message.id:
            continue
        assert message.string, f"untranslated: {message.id!r}"
        assert sorted(_PLACEHOLDER.findall(str(message.id))) == sorted(
            _PLACEHOLDER.findall(str(message.string))
        )


@pytest.mark.parametrize("locale", catalogues.LOCALES)
def test_compiled_catalogue_is_current(locale: str) -> None:
    mo = catalogues.po_path(locale).with_suffix(".mo").read_bytes()
    assert mo == catalogues.compiled(catalogues.read(locale)), "stale .mo: run `make i18n`"


def test_negotiation_order() -> None:
    assert normalise("zh-CN") == normalise("zh_CN.UTF-8") == normalise("zh-Hans") == "zh_CN"
    assert normalise("en-GB") == "en" and normalise("fr") is None
    assert accepted("fr;q=1, en;q=0.5, zh-CN;q=0.8") == ["zh_CN", "en"]
    assert negotiate("en", accept_language="zh-CN") == "en"  # an explicit choice wins
    assert negotiate(None, "", accept_language="zh-CN,zh;q=0.9") == "zh_CN"
    assert negotiate(accept_language="de", default="zh_CN") == "zh_CN"  # then the programme's default
    assert negotiate() == "en"
    assert (
        gettext("zh_CN", "Subsidy report") == "补贴报告"
        and gettext("en", "Subsidy report") == "Subsidy report"
    )


def test_error_details_are_translated_with_their_values() -> None:
    with pytest.raises(InvalidUscc) as info:
        validate("91440300192203821O")
    detail = info.value.detail
    assert translate_detail(detail, "en") == detail
    chinese = translate_detail(detail, "zh_CN")
    assert "第 18 位" in chinese and "91440300192203821O" in chinese
    assert translate_detail("no organisation org_x", "zh_CN") == "没有机构 org_x"
    assert translate_detail("something nobody catalogued", "zh_CN") == "something nobody catalogued"
