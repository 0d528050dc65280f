"""The dashboard in Chinese and English in a real browser (Debian's Chromium with fonts-noto-cjk, driven by
Playwright): a browser that asks for zh-CN gets Chinese labels and yuan amounts, the language switch turns
the page English and is remembered, live refresh keeps amounts as money, and the printable subsidy report
renders (and prints to A4 PDF) in both languages. Screenshots go to ``artifacts/screenshots/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.db import vouchers as vouchers_db
from broker.db.orgs import Identity
from broker.server import serve_in_thread
from broker.services.registry import Services
from tests.conftest import World
from tests.e2e.test_dashboard_browser import SHOTS, browser  # noqa: F401  (the module's Chromium fixture)

pytestmark = pytest.mark.browser
HUAWEI = "914403001922038216"  # a real published code (tests/unit/test_uscc.py)


def _chinese_programme(services: Services, world: World) -> None:
    """The world's issuer counts in yuan in Beijing time; its SME holds ¥12,345.67 of voucher credit."""
    services.container.db.write(
        lambda conn: vouchers_db.set_programme(
            conn,
            org_id=world.issuer.org_id,
            year_budget=10**9,
            sme_cap=10**8,
            settings=vouchers_db.ProgrammeSettings(),
        )
    )
    world.credit(1_234_567)
    identity = Identity(uscc=HUAWEI, name_zh="深圳市示例智能科技有限公司")
    services.orgs.create(world.operator, name="示例智能", role="sme", identity=identity)


def _login(chromium: Any, url: str, token: str, shot: str) -> tuple[Any, Any]:
    context = chromium.new_context(
        viewport={"width": 1280, "height": 900},
        locale="zh-CN",
        extra_http_headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5"},
    )
    page = context.new_page()
    page.goto(f"{url}/ui/login")
    assert page.locator("label[for=token]").inner_text() == "访问令牌"
    page.screenshot(path=str(SHOTS / f"{shot}-login.png"), full_page=True)
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/ui")
    return context, page


def test_dashboard_speaks_chinese_and_english(browser: Any, services: Services, world: World) -> None:  # noqa: F811
    SHOTS.mkdir(parents=True, exist_ok=True)
    _chinese_programme(services, world)
    server = serve_in_thread(services, loops=False)
    try:
        context, page = _login(browser, server.url, world.tokens["sme-a"], "i18n-sme-zh")
        assert page.locator("html").get_attribute("lang") == "zh-CN"
        body = page.inner_text("body")
        assert "企业控制台" in body and "可用创新券额度" in body and "创新券额度" in body
        assert "¥12,345.67" in body and "CST" in body  # money in yuan, times in Beijing time
        page.wait_for_timeout(5_500)  # one live refresh: the amount stays money
        assert page.inner_text("[data-live=available]") == "¥12,345.67"
        page.screenshot(path=str(SHOTS / "i18n-sme-zh.png"), full_page=True)

        page.click("text=English")
        page.wait_for_load_state()
        body = page.inner_text("body")
        assert "SME dashboard" in body and "Voucher credit available" in body and "企业控制台" not in body
        assert "CN¥12,345.67" in body
        page.screenshot(path=str(SHOTS / "i18n-sme-en.png"), full_page=True)
        page.goto(f"{server.url}/ui")  # the choice is remembered over the browser's Accept-Language
        assert "SME dashboard" in page.inner_text("body")
        context.close()

        context, page = _login(browser, server.url, world.tokens["op2"], "i18n-operator-zh")
        assert "运维控制台" in page.inner_text("body") and HUAWEI in page.inner_text("body")
        page.screenshot(path=str(SHOTS / "i18n-operator-zh.png"), full_page=True)
        context.close()

        context, page = _login(browser, server.url, world.tokens["issuer"], "i18n-issuer-zh")
        assert "发券机构控制台" in page.inner_text("body")
        for lang, title, money in (
            ("zh-CN", "补贴报告", "¥12,345.67"),
            ("en", "Subsidy report", "CN¥12,345.67"),
        ):
            page.goto(f"{server.url}/ui/report?lang={lang}")
            text = page.inner_text("body")
            assert title in text and money in text and "Asia/Shanghai" in text, text[:400]
            page.screenshot(path=str(SHOTS / f"i18n-report-{lang}.png"), full_page=True)
            page.emulate_media(media="print")
            page.pdf(path=str(SHOTS / f"i18n-report-{lang}.pdf"), format="A4", landscape=True)
            page.emulate_media(media="screen")
        context.close()
    finally:
        server.stop()


def test_cjk_font_is_installed_for_the_screenshots() -> None:
    fonts = [
        p
        for d in ("/usr/share/fonts/opentype/noto", "/usr/share/fonts/truetype/noto")
        for p in Path(d).glob("*CJK*")
    ]
    if not fonts:
        pytest.skip(
            "fonts-noto-cjk is not installed (apt-get install -y fonts-noto-cjk); Chinese renders as boxes"
        )
    assert fonts
