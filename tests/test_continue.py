"""Continue on a messenger: the widget's WhatsApp, Messenger and Telegram links keep a web visitor one lead."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st
from playwright.async_api import expect

from bot.channels.continuation import build_payload, claim_code, find_code, parse_payload, read_payload
from bot.config import ConfigError, settings_from
from bot.intake.inbound import Touch
from storage.models import ContinueCode, Identity, Lead

from conftest import API_KEY, rows, services_of
from fake_graph import meta_settings
from fake_telegram import TOKEN
from test_browser import browser, new_page, open_chat  # noqa: F401  (the browser fixtures)
from test_meta import payload as whatsapp_payload
from test_meta import post as whatsapp_post
from test_telegram import SECRET, payload, post
from test_webchat import hello

PAGE = "https://shop.example/pricing?utm_source=google&utm_medium=cpc&utm_campaign=spring"
NUMBER = "15550100199"
WA_ID = "16505551234"  # a WhatsApp sender's id (their number), as the Cloud API gives it


@pytest.fixture
def everywhere(settings):  # type: ignore[no-untyped-def]
    """Settings with every link configured, the way an admin writes them."""
    continue_on = settings_from(
        {
            "channels": {
                "whatsapp": {"number": "+1 555 010 0199"},
                "messenger": {"page": "acme"},
                "telegram": {"username": "@acme_bot"},
            }
        },
        env={},
    ).continue_on
    return settings.with_(continue_on=continue_on)


@pytest.fixture
async def client(make_client, everywhere):  # type: ignore[no-untyped-def]
    return await make_client(everywhere)


async def welcome_of(client, url=PAGE):  # type: ignore[no-untyped-def]
    ws = await client.ws_connect("/chat/ws")
    welcome = await hello(ws, url=url)
    await ws.close()
    return welcome


def by_channel(frame: dict) -> dict[str, str]:
    """The links of a welcome frame (`continue`) or of a later `continue` frame (`links`), by channel."""
    return {link["channel"]: link["url"] for link in frame["continue" if frame["type"] == "welcome" else "links"]}


async def click_whatsapp(client, welcome: dict):  # type: ignore[no-untyped-def]
    """Follow the widget's WhatsApp link as the browser does (relative to the server); the wa.me text."""
    response = await client.get("/" + by_channel(welcome)["whatsapp"], allow_redirects=False)
    assert response.status == 302, await response.text()
    location = urlsplit(response.headers["Location"])
    assert (location.scheme, location.netloc, location.path) == ("https", "wa.me", f"/{NUMBER}")
    return parse_qs(location.query)["text"][0]


async def claim(db, text: str, now, by: str = WA_ID):  # type: ignore[no-untyped-def]
    """What the WhatsApp channel does with a lead's first message."""
    async with db() as session:
        found = await claim_code(session, text, by, now)
        await session.commit()
    return found


async def test_the_welcome_offers_each_configured_channel_with_the_visitor_and_the_pages_source(client):
    welcome = await welcome_of(client)

    assert [link["label"] for link in welcome["continue"]] == ["WhatsApp", "Messenger", "Telegram"]
    start = f"v-{welcome['link']}_s-google_m-cpc_c-spring"
    links = by_channel(welcome)
    assert links["telegram"] == f"https://t.me/acme_bot?start={start}"
    assert links["messenger"] == f"https://m.me/acme?ref={start}"
    assert links["whatsapp"].startswith("continue/whatsapp?")


async def test_no_channel_configured_no_links(make_client, settings):
    client = await make_client(settings)

    assert (await welcome_of(client))["continue"] == []
    assert (await client.get("/continue/whatsapp?p=x&sig=y", allow_redirects=False)).status == 404


async def test_only_the_configured_channels_are_offered(make_client, settings):
    only_messenger = settings_from({"channels": {"messenger": {"page": "acme"}}}, env={}).continue_on
    client = await make_client(settings.with_(continue_on=only_messenger))

    assert [link["channel"] for link in (await welcome_of(client))["continue"]] == ["messenger"]


async def test_with_a_public_url_the_whatsapp_link_is_absolute(make_client, everywhere):
    client = await make_client(everywhere.with_(public_url="https://chat.acme.example"))

    assert by_channel(await welcome_of(client))["whatsapp"].startswith("https://chat.acme.example/continue/whatsapp?")


async def test_a_page_view_with_a_new_source_updates_the_links(client):
    ws = await client.ws_connect("/chat/ws")
    welcome = await hello(ws, url="https://shop.example/")
    assert by_channel(welcome)["telegram"].endswith("_s-www-google-com_m-referral")  # the hello's referrer
    view = {"id": str(uuid.uuid4()), "url": "https://shop.example/sale?utm_source=newsletter", "referrer": ""}

    await ws.send_json({"type": "page_view", "view": view})

    frame = await ws.receive_json(timeout=5)
    assert frame["type"] == "continue"
    assert by_channel(frame)["telegram"].endswith(f"?start=v-{welcome['link']}_s-newsletter")
    await ws.close()


async def test_page_views_make_no_codes_a_click_makes_one_that_names_the_visitor_and_the_source(client, db, clock):
    welcome = await welcome_of(client)
    assert await rows(db, ContinueCode) == []

    text = await click_whatsapp(client, welcome)

    [row] = await rows(db, ContinueCode)
    assert text == f"Hi! (ref {row.code})"
    assert re.fullmatch(r"[2-9A-HJKMNP-Z]{8}", row.code) and re.search(r"[2-9]", row.code)
    assert row.expires_at == clock.now() + timedelta(days=7)
    visitor, touch = await claim(db, text, clock.now())
    assert visitor == welcome["visitor"]
    assert touch == Touch(source="google", medium="cpc", campaign="spring")


async def test_clicking_again_gives_the_same_code(client, db):
    welcome = await welcome_of(client)

    first, again = await click_whatsapp(client, welcome), await click_whatsapp(client, welcome)

    assert first == again and len(await rows(db, ContinueCode)) == 1


async def test_a_code_typed_in_lower_case_inside_other_words_is_still_found(client, db, clock):
    welcome = await welcome_of(client)
    code = find_code(await click_whatsapp(client, welcome))

    visitor, _ = await claim(db, f"hello, my ref is {code.lower()}, can you help?", clock.now())

    assert visitor == welcome["visitor"]


async def test_a_code_expires(client, db, clock):
    welcome = await welcome_of(client)
    text = await click_whatsapp(client, welcome)

    clock.advance(timedelta(days=7, seconds=1))

    assert await claim(db, text, clock.now()) == (None, None)
    assert await click_whatsapp(client, welcome) != text  # a click now makes a new one


async def test_one_whatsapp_number_claims_a_code_and_meta_redelivering_its_message_changes_nothing(client, db, clock):
    welcome = await welcome_of(client)
    text = await click_whatsapp(client, welcome)

    first = await claim(db, text, clock.now())
    redelivered = await claim(db, text, clock.now())
    someone_else = await claim(db, text, clock.now(), by="447700900123")

    assert first == redelivered and first[0] == welcome["visitor"]
    assert someone_else == (None, None)


async def test_a_made_up_code_names_nobody(client, db, clock):
    await click_whatsapp(client, await welcome_of(client))

    assert await claim(db, "Hi! (ref K7QM4XPA)", clock.now()) == (None, None)
    assert await claim(db, "REMEMBER me? 12345678", clock.now()) == (None, None)
    assert find_code("Hi! REMEMBER me") is None


async def test_erasing_the_visitor_erases_their_codes_and_their_link_then_leads_nowhere(client, db):
    welcome = await welcome_of(client)
    await click_whatsapp(client, welcome)

    erased = await client.delete(f"/api/leads/{welcome['lead']}", headers={"Authorization": f"Bearer {API_KEY}"})

    assert erased.status == 200 and (await erased.json())["removed"]["continue_code"] == 1
    assert await rows(db, ContinueCode) == []
    again = await client.get("/" + by_channel(welcome)["whatsapp"], allow_redirects=False)
    assert again.status == 410


async def test_a_changed_whatsapp_link_is_refused_and_makes_no_code(client, db):
    first, second = await welcome_of(client), await welcome_of(client)
    query = parse_qs(urlsplit(by_channel(first)["whatsapp"]).query)
    p, sig = query["p"][0], query["sig"][0]
    other_visitor = p.replace(first["link"], second["link"])
    changed = [
        f"p={p.replace('s-google', 's-bing')}&sig={sig}",  # another source
        f"p={other_visitor}&sig={sig}",  # another visitor's link, with this one's signature
        f"p={p}&sig={'0' * 16}",
        f"p={p}",
        "",
        "p=v-0123456789abcdef-0a1b2c3d4e5f&sig=0123456789abcdef",
    ]
    for query_string in changed:
        response = await client.get(f"/continue/whatsapp?{query_string}", allow_redirects=False)
        assert response.status == 403, query_string
        assert "changed" in (await response.json())["error"]
    assert await rows(db, ContinueCode) == []


async def test_the_messenger_ref_gives_back_the_signed_visitor_and_the_source(client):
    welcome = await welcome_of(client)
    ref = unquote(urlsplit(by_channel(welcome)["messenger"]).query.removeprefix("ref="))
    secret = services_of(client).secret_key

    assert read_payload(secret, ref) == (welcome["visitor"], Touch(source="google", medium="cpc", campaign="spring"))
    forged = ref.replace(welcome["link"], f"{'0' * 16}{welcome['link'][16:]}")
    assert read_payload(secret, forged) == (None, Touch(source="google", medium="cpc", campaign="spring"))


async def test_the_telegram_link_makes_the_visitor_one_lead_with_their_source(
    make_client, everywhere, db, fake_telegram
):
    client = await make_client(
        everywhere.with_(telegram_token=TOKEN, telegram_secret=SECRET, telegram_api_url=fake_telegram.url)
    )
    welcome = await welcome_of(client, url="https://shop.example/?utm_source=newsletter&utm_campaign=june")
    start = parse_qs(urlsplit(by_channel(welcome)["telegram"]).query)["start"][0]

    await post(client, payload("message_start", text=f"/start {start}"))

    [lead] = await rows(db, Lead)
    assert {(i.kind, i.value) for i in await rows(db, Identity)} >= {("visitor", welcome["visitor"])}
    assert {i.kind for i in await rows(db, Identity)} == {"visitor", "telegram"}
    assert lead.last_touch["source"] == "newsletter" and lead.last_touch["campaign"] == "june"


async def test_the_widget_shows_the_links_and_its_whatsapp_link_leads_to_wa_me(client, new_page):  # noqa: F811
    page = await new_page()
    await page.goto(str(client.make_url("/?utm_source=newsletter")))
    panel = await open_chat(page)

    links = panel.get_by_role("link")
    await expect(links).to_have_text(["WhatsApp", "Messenger", "Telegram"])
    await expect(panel.locator(".kindling-continue")).to_have_text(
        "Continue on WhatsApp \u00b7 Messenger \u00b7 Telegram"
    )
    start = await page.evaluate("Kindling.telegramStart()")  # v-<signed visitor link>
    await expect(links.nth(2)).to_have_attribute("href", f"https://t.me/acme_bot?start={start}_s-newsletter")
    whatsapp = await links.nth(0).get_attribute("href")
    assert whatsapp.startswith(str(client.make_url("/continue/whatsapp?")))
    response = await page.request.get(whatsapp, max_redirects=0)
    location = urlsplit(response.headers["location"])
    assert response.status == 302 and location.netloc == "wa.me"
    assert re.fullmatch(r"Hi! \(ref [2-9A-Z]{8}\)", parse_qs(location.query)["text"][0])


@pytest.mark.parametrize(
    "touch",
    [
        Touch(source="google.com", medium="cpc", campaign="spring sale 2026 and a very long campaign name"),
        Touch(source="x" * 100),
        Touch(campaign="_-_weird__"),
        None,
    ],
)
def test_a_payload_fits_telegrams_64_characters_of_a_to_z_digits_dash_and_underscore(touch):
    link = "0123456789abcdef-0a1b2c3d4e5f"

    made = build_payload(link, touch)

    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", made)
    assert made.startswith(f"v-{link}")


@given(st.text(max_size=80), st.text(max_size=80), st.text(max_size=80))
def test_any_source_medium_and_campaign_come_back_as_a_prefix_of_what_telegram_can_carry(source, medium, campaign):
    link, sent = "0123456789abcdef-0a1b2c3d4e5f", Touch(source=source, medium=medium, campaign=campaign)

    found_link, found = parse_payload(build_payload(link, sent))

    assert found_link == link
    for name, value in (found.as_dict() if found else {}).items():
        carried = re.sub(r"[^A-Za-z0-9-]+", "-", getattr(sent, name)).strip("-")
        assert carried.startswith(value) and re.fullmatch(r"[A-Za-z0-9-]+", value)


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"channels": {"whatsapp": {"number": "555-CALL-NOW"}}}, "channels.whatsapp.number"),
        ({"channels": {"whatsapp": {"prefilled_text": "Hi there"}}}, "channels.whatsapp.prefilled_text"),
        ({"channels": {"whatsapp": {"code_lifetime": "soon"}}}, "channels.whatsapp.code_lifetime"),
        ({"channels": {"messenger": {"page": "https://facebook.com/acme"}}}, "channels.messenger.page"),
        ({"channels": {"telegram": {"username": "a b"}}}, "channels.telegram.username"),
    ],
)
def test_a_bad_continue_setting_names_its_key(config, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        settings_from(config, env={})


async def test_a_visitor_who_continues_on_whatsapp_with_the_code_is_one_lead_with_the_pages_source(
    make_client, everywhere, fake_graph, db
):  # type: ignore[no-untyped-def]
    client = await make_client(everywhere.with_(meta=meta_settings(fake_graph)))
    welcome = await welcome_of(client)
    text = await click_whatsapp(client, welcome)
    message = whatsapp_payload("text")
    [change] = message["entry"][0]["changes"]
    change["value"]["messages"][0]["text"]["body"] = text  # what wa.me prefilled, sent as it was

    await whatsapp_post(client, message)

    [lead] = await rows(db, Lead, Lead.merged_into_id.is_(None))
    kinds = {(i.kind, i.value) for i in await rows(db, Identity, Identity.lead_id == lead.id)}
    assert {("visitor", welcome["visitor"]), ("whatsapp", WA_ID)} <= kinds
    assert (lead.first_touch["source"], lead.first_touch["campaign"]) == ("google", "spring")
