"""Languages: the bot answers in the lead's language (Telegram's `language_code`, the browser's), else in
`server.default_locale`; a missing translation is sent in English; flow steps go in the lead's language where
the flow has a locale variant, and lint names the file and line of a bad one."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from bot.config import ConfigError, settings_from
from bot.intake.messages import MessageError
from flows.hours import BusinessHours
from storage.models import Delivery, Enrollment, Lead

from conftest import TELEGRAM_SECRET, rows, services_of, templates_with
from fake_telegram import TOKEN
from test_email_out import email_lead, email_settings, parts, queue, send_due  # noqa: F401  (a fixture)
from test_webchat import next_from, say

PAYLOADS = Path(__file__).parent / "payloads" / "telegram"
CHAT = 5550001
RUSSIAN_HELLO = "Здравствуйте, Ann! Спасибо, что написали нам. Чем можем помочь?"
CHINESE_HELLO = "您好，Ann！感谢您联系我们。请问有什么可以帮您？"
ENGLISH_GOT_IT = "Got it, thanks! We'll get back to you shortly."
RUSSIAN_GOT_IT = "Спасибо, получили! Скоро вам ответим."
RUSSIAN_CONTACT_REQUEST = "Напишите, пожалуйста, ваш email или номер телефона"
# Monday 12 January 2026, 18:30 in Berlin: the Berlin team (Mon-Fri 09:00-18:00) has gone home.
BERLIN_EVENING = datetime(2026, 1, 12, 17, 30, tzinfo=UTC)

TWO_LANGUAGES = """+++
name = "Hello in two languages"
trigger = "page_view"
exit = ["opt_out"]
+++
{% step "hello", after="10m", buttons=["Yes", "Not now"] %}Hello {{ lead.first_name or "there" }}!{% endstep %}
{% step "hello", after="10m", buttons=["Да", "Не сейчас"], locale="ru" %}Здравствуйте!{% endstep %}
{% step "bye", after="1h" %}Bye.{% endstep %}
"""
BAD_VARIANTS = """+++
name = "Bad variants"
trigger = "page_view"
+++
{% step "one", after="10m", buttons=["Yes", "No"] %}One.{% endstep %}
{% step "one", after="1h", buttons=["Да", "Нет"], locale="ru" %}Один.{% endstep %}
{% step "one", after="10m", buttons=["是"], locale="zh" %}一。{% endstep %}
{% step "two", after="1d", action="tag:two" %}Two.{% endstep %}
{% step "two", after="1d", locale="ru" %}Два.{% endstep %}
{% step "three", after="1d", locale="ru" %}Три.{% endstep %}
{% step "two", after="1d", action="tag:two", locale="de" %}Zwei.{% endstep %}
{% step "two", after="1d", action="tag:two", locale="zh" %}二。{% endstep %}
{% step "two", after="1d", action="tag:two", locale="zh" %}二。{% endstep %}
{% step "two", after="1d", action="tag:two", locale="Russian" %}Два.{% endstep %}
"""


def update_from(language_code: str | None, update_id: int = 730118001, text: str = "Hello!"):
    """A text message update as the Bot API sends it, from a user whose app is set to `language_code`."""
    data = json.loads((PAYLOADS / "message_text.json").read_text(encoding="utf-8"))
    data["update_id"], data["message"]["text"] = update_id, text
    if language_code is None:
        del data["message"]["from"]["language_code"]
    else:
        data["message"]["from"]["language_code"] = language_code
    return data


async def post(client, update: dict) -> None:
    """Post an update as Telegram does, then let the replies go out."""
    headers = {"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET}
    response = await client.post("/webhooks/telegram", json=update, headers=headers)
    assert response.status == 200
    await services_of(client).drain()


async def browser(client, locale: str, url: str = "https://shop.example/"):
    """A widget visitor whose browser's language is `locale` (the widget sends navigator.language)."""
    ws = await client.ws_connect("/chat/ws")
    view = {"id": str(uuid.uuid4()), "url": url, "referrer": "", "title": "Shop"}
    await ws.send_json({"type": "hello", "visitor": None, "since": 0, "view": view, "locale": locale})
    assert (await ws.receive_json())["type"] == "welcome"
    return ws


def copy_of_templates(tmp_path: Path, flows: dict[str, str] | None = None) -> Path:
    return templates_with(tmp_path / "templates", flows or {})


# --- the bot's own messages -----------------------------------------------------------------------


@pytest.mark.parametrize(("language_code", "greeting"), [("ru", RUSSIAN_HELLO), ("zh-hans", CHINESE_HELLO)])
async def test_a_telegram_user_is_greeted_once_in_their_apps_language(
    telegram_client, db, fake_telegram, language_code, greeting
):
    await post(telegram_client, update_from(language_code))

    assert fake_telegram.texts(CHAT) == [greeting]
    [lead] = await rows(db, Lead)
    assert lead.locale == language_code


async def test_the_contact_request_and_its_button_are_in_the_leads_language(telegram_client, fake_telegram):
    await post(telegram_client, update_from("ru"))
    await post(telegram_client, update_from("ru", 730118002, "Хорошо"))  # small talk: "got it", no person

    got_it, request = fake_telegram.sent_messages(CHAT)[1:]
    assert got_it["text"] == RUSSIAN_GOT_IT
    assert request["text"].startswith(RUSSIAN_CONTACT_REQUEST)
    assert request["reply_markup"]["keyboard"] == [[{"text": "Поделиться номером телефона", "request_contact": True}]]


async def test_a_russian_browser_gets_russian_system_texts(client):
    ws = await browser(client, "ru-RU")
    await say(client, ws, "Здравствуйте!")
    greeting = "Здравствуйте! Спасибо, что написали нам. Как вас зовут? И чем можем помочь?"  # a nameless visitor
    assert (await next_from(ws, "bot"))["text"] == greeting
    await say(client, ws, "Окей")
    assert (await next_from(ws, "bot"))["text"] == RUSSIAN_GOT_IT
    assert (await next_from(ws, "bot"))["text"].startswith(RUSSIAN_CONTACT_REQUEST)
    await say(client, ws, "А счёт для юрлица в Казахстане выставите?")  # a question for a person
    received = "Спасибо! Вам ответит сотрудник нашей команды здесь в течение 5 мин."
    assert (await next_from(ws, "bot"))["text"] == received


@pytest.mark.parametrize("locale", ["zh-CN", "zh-Hans-CN", "zh-TW"])
async def test_every_chinese_browser_gets_simplified_chinese(client, locale):
    ws = await browser(client, locale)
    await say(client, ws, "你好")
    assert (await next_from(ws, "bot"))["text"] == "您好！感谢您联系我们。请问怎么称呼您？有什么可以帮您？"


async def test_a_language_we_do_not_have_gets_the_default_locale(make_client, settings, fake_telegram):
    english = await make_client(telegram(settings, fake_telegram))
    await post(english, update_from("de"))
    assert fake_telegram.texts(CHAT) == ["Hi Ann! Thanks for reaching out. How can we help you today?"]

    russian = await make_client(telegram(settings, fake_telegram).with_(default_locale="ru"))
    await post(russian, update_from("de", 730118002))
    await post(russian, update_from(None, 730118003))  # no language_code at all
    answers = fake_telegram.texts(CHAT)[1:]
    assert answers[0] == answers[2] == RUSSIAN_GOT_IT and answers[1].startswith(RUSSIAN_CONTACT_REQUEST)


def telegram(settings, fake_telegram):
    """Settings with Telegram on, on the fake Bot API."""
    return settings.with_(telegram_token=TOKEN, telegram_secret=TELEGRAM_SECRET, telegram_api_url=fake_telegram.url)


def test_server_default_locale_is_read_and_checked():
    assert settings_from({}, {}).default_locale == "en"
    assert settings_from({"server": {"default_locale": "RU"}}, {}).default_locale == "ru"
    with pytest.raises(ConfigError, match="server.default_locale"):
        settings_from({"server": {"default_locale": "Russian"}}, {})


async def test_a_default_locale_the_templates_do_not_have_stops_start_up(make_client, settings):
    with pytest.raises(MessageError, match=r"server.default_locale: no language 'de'"):
        await make_client(settings.with_(default_locale="de"))


@pytest.mark.parametrize(
    ("language_code", "opens"),
    [("ru", "Вам ответят здесь, когда мы вернёмся: во вторник в 09:00 (Europe/Berlin)."),
     ("zh-hans", "上班后会有同事在这里回复您：周二 09:00（Europe/Berlin）。")],
)  # fmt: skip
async def test_out_of_hours_the_lead_is_told_the_day_in_its_language(
    make_client, settings, fake_telegram, clock, language_code, opens
):
    hours = BusinessHours.parse("Mon-Fri 09:00-18:00", "Europe/Berlin")
    app = await make_client(telegram(settings, fake_telegram).with_(handoff=replace(settings.handoff, hours=hours)))
    clock.advance(BERLIN_EVENING - clock.now())
    await post(app, update_from(language_code, text="позвоните мне" if language_code == "ru" else "转人工"))
    [notice] = fake_telegram.texts(CHAT)
    assert notice.endswith(opens)


async def test_a_missing_translation_is_sent_in_english_and_lint_says_so(
    make_client, settings, fake_telegram, tmp_path, run_kindling, monkeypatch
):
    templates = copy_of_templates(tmp_path)
    (templates / "_system" / "ru" / "got_it.j2").unlink()
    app = await make_client(telegram(settings, fake_telegram).with_(templates=templates))
    await post(app, update_from("ru"))
    await post(app, update_from("ru", 730118002, "Спасибо"))
    greeting, got_it, request = fake_telegram.texts(CHAT)
    assert greeting == RUSSIAN_HELLO and got_it == ENGLISH_GOT_IT and request.startswith(RUSSIAN_CONTACT_REQUEST)

    monkeypatch.setenv("KINDLING_TEMPLATES", str(templates))
    status, out, err = await run_kindling("lint")
    assert status == 0, out + err
    assert "warning: _system/ru/got_it.j2: no translation, ru leads get _system/got_it.j2" in err


async def test_a_broken_translation_fails_lint_and_start_up_naming_the_file(
    make_client, settings, tmp_path, run_kindling, monkeypatch
):
    templates = copy_of_templates(tmp_path)
    (templates / "_system" / "zh" / "greeting.j2").write_text("您好\n{{ lead.first_name }\n", encoding="utf-8")

    monkeypatch.setenv("KINDLING_TEMPLATES", str(templates))
    status, out, err = await run_kindling("lint")
    assert status == 1 and "_system/zh/greeting.j2:2: " in out, out + err
    with pytest.raises(MessageError, match=r"_system/zh/greeting\.j2:2"):
        await make_client(settings.with_(templates=templates))


async def test_a_new_language_is_a_folder_of_files(make_client, settings, fake_telegram, tmp_path):
    templates = copy_of_templates(tmp_path)
    (templates / "_system" / "de").mkdir()
    (templates / "_system" / "de" / "greeting.j2").write_text("Hallo {{ lead.first_name }}!\n", encoding="utf-8")
    app = await make_client(telegram(settings, fake_telegram).with_(templates=templates))
    await post(app, update_from("de-AT"))
    assert fake_telegram.texts(CHAT) == ["Hallo Ann!"]


# --- flow steps -----------------------------------------------------------------------------------


async def test_a_step_goes_in_the_leads_language_where_the_flow_has_it(make_client, settings, tmp_path, clock, db):
    app = await make_client(settings.with_(templates=copy_of_templates(tmp_path, {"hello": TWO_LANGUAGES})))
    russian, english = await browser(app, "ru-RU"), await browser(app, "en-GB")
    for _ in range(2):
        clock.advance(timedelta(hours=1))
        await services_of(app).runner.run_due()
        await services_of(app).dispatcher.dispatch_due()

    hello = await next_from(russian, "bot")
    assert (hello["text"], hello["buttons"]) == ("Здравствуйте!", ["Да", "Не сейчас"])
    assert (await next_from(russian, "bot"))["text"] == "Bye."  # no Russian variant: the default
    assert (await next_from(english, "bot"))["text"] == "Hello there!"
    assert (await next_from(english, "bot"))["text"] == "Bye."
    steps = [(d.lead_id, d.step, d.idempotency_key) for d in await rows(db, Delivery, Delivery.kind == "nurture")]
    enrollments = {e.lead_id: e for e in await rows(db, Enrollment)}
    expected = [(lead, step, f"flow:{e.id}:{e.flow_version}:{step}") for lead, e in enrollments.items()
                for step in ("hello", "bye")]  # fmt: skip
    assert sorted(steps) == sorted(expected)  # each step once per lead, keyed as ever


async def test_lint_names_file_and_line_of_each_bad_locale_variant(tmp_path, run_kindling):
    flow = copy_of_templates(tmp_path, {"bad": BAD_VARIANTS}) / "flows" / "bad.j2"
    status, out, err = await run_kindling("lint", str(flow))
    assert status == 1
    lines = out.splitlines()
    expected = {
        6: "locale 'ru' of step 'one': must have the same after/at as the default block at line 5",
        7: "locale 'zh' of step 'one': must have as many buttons (2, each translated)",
        9: "locale 'ru' of step 'two': must have the same action",
        10: "locale 'ru' of step 'three': no such step to translate",
        11: "step 'two': unknown locale 'de': the languages here are en, ru, zh",
        13: "step 'two' has locale 'zh' twice",
        14: "`locale` 'Russian' is not a language code",
    }
    for line, message in expected.items():
        assert any(text.startswith(f"{flow}:{line}: ") and message in text for text in lines), (line, lines)


async def test_preview_and_simulate_show_a_leads_language(tmp_path, run_kindling):
    flow = copy_of_templates(tmp_path, {"hello": TWO_LANGUAGES}) / "flows" / "hello.j2"
    status, out, err = await run_kindling("preview", str(flow), "--locale", "ru-RU")
    assert status == 0, err
    assert "== hello (locale ru)" in out and "Здравствуйте!" in out and "[Да] [Не сейчас]" in out
    status, out, err = await run_kindling("preview", str(flow))
    assert "Hello Ann!" in out and "Здравствуйте" not in out
    status, out, err = await run_kindling("simulate", str(flow), "--locale", "ru", "--days", "1")
    assert status == 0, err
    assert "hello: 'Здравствуйте!'" in out and "bye: 'Bye.'" in out


# --- email ----------------------------------------------------------------------------------------


async def test_a_nurture_emails_unsubscribe_line_is_in_the_leads_language(make_client, email_settings, db, fake_smtp):  # noqa: F811
    app = await make_client(email_settings)
    lead = await email_lead(db)
    async with db() as session, session.begin():
        await session.exec(update(Lead).values(locale="ru-RU"))
    await queue(db, lead, "nurture")
    await send_due(app)

    text, html = parts(fake_smtp.messages[0].message)
    assert "--\nОтписаться: https://kindling.example/" in text
    assert "Вы получаете эти письма, потому что общались с нами." in html and ">Отписаться</a>" in html
    assert '<html lang="ru">' in html and "Unsubscribe" not in text + html
