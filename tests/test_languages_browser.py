"""Languages in a real browser (headless Chromium): a Russian browser gets the bot's Russian texts in the widget,
and the console shows dates in the operator's language and time zone."""

from __future__ import annotations

import re
from zoneinfo import ZoneInfo

from playwright.async_api import expect

from storage.models import Lead

from conftest import PASSWORD, rows
from test_browser import browser, new_page  # noqa: F401  (fixtures)
from test_console_browser import log_in

GREETING = "Здравствуйте! Спасибо, что написали нам. Как вас зовут? И чем можем помочь?"


async def test_a_russian_browser_gets_the_bots_russian_texts_and_console_dates(client, db, new_page, add_operator):  # noqa: F811
    site = await new_page(locale="ru-RU", timezone_id="Europe/Moscow")  # a browser set to Russian, in Moscow
    await site.goto(str(client.make_url("/")))
    await site.get_by_role("button", name=re.compile("^Открыть чат")).click()  # the widget's own texts: Russian
    chat = site.get_by_role("dialog", name="Напишите нам")
    box = chat.get_by_role("textbox", name="Сообщение")
    await box.fill("Здравствуйте")
    await box.press("Enter")
    await expect(chat.locator(".kindling-bubble")).to_have_text(["Здравствуйте", GREETING])

    await add_operator("ann", "operator")
    console = await new_page(locale="ru-RU", timezone_id="Europe/Moscow")
    await log_in(console, str(client.make_url("/console")), "ann", PASSWORD)
    await console.goto(str(client.make_url("/console/leads")))
    [lead] = await rows(db, Lead)
    moscow = lead.updated_at.astimezone(ZoneInfo("Europe/Moscow"))
    shown = console.locator("table time").first  # the lead's last activity, as Intl formats it in Russian
    await expect(shown).to_have_text(re.compile(rf"^{moscow.day} [а-я]+\.? {moscow.year} г\., {moscow:%H:%M}$"))
    assert await shown.get_attribute("title") == lead.updated_at.isoformat()
