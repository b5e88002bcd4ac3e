"""The widget's settings and texts (`[widget]`, `templates/_widget/*.toml`, `GET /widget/config.json`), the
pre-chat form's frame, and the demo site's pages."""

from __future__ import annotations

import uuid

import pytest

from bot.channels.widget_config import WidgetTextError
from bot.config import ConfigError, WidgetSettings, load_settings, settings_from
from storage.models import Event, Lead

from conftest import ROOT, rows, templates_with
from test_webchat import hello


async def widget_config(client, **query):  # type: ignore[no-untyped-def]
    answer = await client.get("/widget/config.json", params=query)
    assert answer.status == 200, await answer.text()
    return await answer.json()


async def test_the_widget_gets_its_settings_and_english_texts_by_default(client):
    answer = await client.get("/widget/config.json")
    config = await answer.json()
    assert answer.headers["Cache-Control"] == "public, max-age=300"
    assert answer.headers["Access-Control-Allow-Origin"] == "*"  # the widget runs on the customer's site
    assert config["language"] == "en" and config["title"] == "Chat with us"
    assert config["color"] == "#4f46e5" and config["position"] == "bottom-right" and config["prechat"] == []
    assert config["texts"]["placeholder"] == "Type a message…"


async def test_the_language_is_the_pages_then_the_configs_then_the_browsers(client, make_client, settings):
    russian = await widget_config(client, browser="ru-RU")
    assert (russian["language"], russian["locale"]) == ("ru", "ru-RU")  # the hello's locale keeps the region
    assert russian["title"] == "Напишите нам" and russian["texts"]["send"] == "Отправить"
    chinese = await widget_config(client, lang="zh-CN", browser="ru-RU")  # the page's data-lang wins
    assert (chinese["language"], chinese["locale"]) == ("zh", "zh-CN") and chinese["texts"]["send"] == "发送"
    german = await widget_config(client, browser="de-DE")  # no texts file: English, and the hello says so
    assert (german["language"], german["locale"]) == ("en", "en")

    configured = await make_client(settings.with_(widget=WidgetSettings(language="ru", title="Acme")))
    answer = await widget_config(configured, browser="zh-CN")
    assert answer["language"] == "ru" and answer["title"] == "Acme"  # a configured title is every language's
    assert answer["subtitle"] == "Здравствуйте! Спросите нас о чём угодно, мы с радостью поможем."

    russian_default = await make_client(settings.with_(default_locale="ru"))
    answer = await widget_config(russian_default, browser="de-DE")  # as the bot's messages to them will be
    assert (answer["language"], answer["locale"]) == ("ru", "ru") and answer["texts"]["send"] == "Отправить"


async def test_a_language_tag_that_is_not_one_is_refused(client):
    answer = await client.get("/widget/config.json", params={"lang": "<script>"})
    assert answer.status == 400
    assert "lang: a language tag like ru or zh-CN" in (await answer.json())["error"]


async def test_adding_a_language_is_adding_a_file(make_client, settings, tmp_path):
    templates = templates_with(tmp_path / "templates", {})
    (templates / "_widget" / "de.toml").write_text('title = "Schreiben Sie uns"\nsend = "Senden"\n')
    client = await make_client(settings.with_(templates=templates))
    german = await widget_config(client, browser="de-AT")
    assert german["language"] == "de" and german["title"] == "Schreiben Sie uns"
    assert german["texts"]["send"] == "Senden" and german["texts"]["close"] == "Close chat"  # the rest: English


async def test_a_texts_file_with_a_text_the_widget_does_not_have_stops_start_up(make_client, settings, tmp_path):
    templates = templates_with(tmp_path / "templates", {})
    (templates / "_widget" / "de.toml").write_text('sned = "Senden"\n')
    with pytest.raises(WidgetTextError, match=r"de\.toml: unknown text 'sned'"):
        await make_client(settings.with_(templates=templates))


async def test_templates_without_the_widgets_texts_stop_start_up_saying_which_file(make_client, settings, tmp_path):
    templates = templates_with(tmp_path / "templates", {})
    (templates / "_widget" / "en.toml").unlink()  # an older templates folder, kept through an upgrade
    with pytest.raises(WidgetTextError, match=r"_widget/en\.toml: missing; Kindling ships it in templates/_widget/"):
        await make_client(settings.with_(templates=templates))


async def test_a_configured_language_without_texts_stops_start_up(make_client, settings):
    with pytest.raises(WidgetTextError, match="widget.language = 'de'"):
        await make_client(settings.with_(widget=WidgetSettings(language="de")))


@pytest.mark.parametrize(
    ("widget", "message"),
    [
        ({"color": "blue"}, "widget.color: a CSS hex colour like #4f46e5 or #0a7, got 'blue'"),
        ({"color": "#12345"}, "widget.color"),
        ({"position": "top-left"}, "widget.position: bottom-right or bottom-left, got 'top-left'"),
        ({"avatar": "javascript:alert(1)"}, "widget.avatar: an image's http(s) URL or a path"),
        ({"language": "Russian please"}, 'widget.language: "auto"'),
        ({"prechat": ["name", "phone"]}, 'widget.prechat: "off" or a list of name, email, consent'),
        ({"prechat": ["consent"]}, 'widget.prechat: "consent" is consent to email: it needs "email"'),
        ({"prechat": "yes"}, "widget.prechat"),
        ({"title": "x" * 81}, "widget.title: at most 80 characters"),
        ({"colour": "#fff"}, "widget.colour: unknown setting"),
    ],
)
def test_a_bad_widget_setting_is_named(widget, message):
    with pytest.raises(ConfigError) as error:
        settings_from({"widget": widget}, env={})
    assert message in str(error.value)


def test_a_bad_colour_in_config_toml_stops_loading_with_the_key(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text((ROOT / "config.toml").read_text().replace('color = "#4f46e5"', 'color = "indigo"'))
    with pytest.raises(ConfigError, match="widget.color: a CSS hex colour like #4f46e5 or #0a7, got 'indigo'"):
        load_settings(path, env={})


def test_widget_settings_load_from_config_toml():
    widget = settings_from(
        {"widget": {"color": "#0a7", "position": "bottom-left", "prechat": ["email", "name"], "avatar": "/logo.png"}},
        env={},
    ).widget
    assert (widget.color, widget.position, widget.avatar) == ("#0a7", "bottom-left", "/logo.png")
    assert widget.prechat == ("name", "email")  # in the form's order
    assert settings_from({"widget": {"prechat": "off"}}, env={}).widget.prechat == ()


# The pre-chat form's frame


async def prechat(ws, **fields):  # type: ignore[no-untyped-def]
    frame_id = str(uuid.uuid4())
    await ws.send_json({"type": "prechat", "id": frame_id, **fields})
    answer = await ws.receive_json(timeout=5)
    assert answer["id"] == frame_id
    return answer


async def test_the_prechat_form_names_the_lead_and_claims_its_email_with_consent(client, db):
    ws = await client.ws_connect("/chat/ws")
    await hello(ws)
    answer = await prechat(ws, name="  Max   Turner ", email="Max@Example.com", consent=True)
    assert answer["type"] == "ack"
    [lead] = await rows(db, Lead)
    assert (lead.first_name, lead.last_name, lead.email) == ("Max", "Turner", "max@example.com")
    assert lead.email_consent_at is not None and lead.email_consent_source == "widget"
    [shared] = await rows(db, Event, Event.type == "contact_shared")
    assert shared.payload["value"] == "max@example.com" and shared.payload["verified"] is False  # a claim
    [form] = await rows(db, Event, Event.type == "prechat")
    assert form.payload["name"] == "Max Turner"


@pytest.mark.parametrize(
    ("fields", "field", "error"),
    [
        ({"name": "Max", "email": "max@exa..mple.com", "consent": True}, "email", "email: not a valid email address"),
        ({"name": "", "email": "max@example.com"}, "name", "name: 1 to 100 characters"),
        ({"name": "M" * 101}, "name", "name: 1 to 100 characters"),
        ({"name": "Max", "consent": True}, "consent", "true only with an email address"),
        ({"email": "max@example.com", "consent": "yes"}, "consent", "consent: true or false"),
        ({}, "name", "a prechat frame needs a name and/or an email"),
    ],
)
async def test_a_prechat_form_the_server_cannot_take_stores_nothing(client, db, fields, field, error):
    ws = await client.ws_connect("/chat/ws")
    await hello(ws)
    answer = await prechat(ws, **fields)
    assert answer["type"] == "error" and answer["field"] == field and error in answer["error"]
    [lead] = await rows(db, Lead)
    assert (lead.first_name, lead.email, lead.email_consent_at) == (None, None, None)
    assert await rows(db, Event, Event.type.in_(["prechat", "contact_shared", "email_consent"])) == []


# The demo site


@pytest.mark.parametrize(
    ("path", "content_type", "holds"),
    [
        ("/", "text/html", 'href="/pricing'),
        ("/pricing", "text/html", "Simple pricing"),
        ("/demo.css", "text/css", ".tour"),
        ("/demo.js", "text/javascript", "Look at pricing"),
        ("/favicon.ico", "image/svg+xml", "<svg"),
    ],
)
async def test_the_demo_sites_files(client, path, content_type, holds):
    answer = await client.get(path)
    assert answer.status == 200 and answer.content_type == content_type
    assert holds in await answer.text()
