"""Telegram: updates posted to the webhook are stored once, and the bot answers through the (fake) Bot API."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from bot.channels.telegram import callback_data, parse_deep_link
from storage.models import Conversation, Delivery, Event, Identity, Lead, Message

from conftest import API_KEY, ROOT, rows, services_of
from fake_telegram import TOKEN

PAYLOADS = Path(__file__).parent / "payloads" / "telegram"
SECRET = "test-telegram-secret"
CHAT = 5550001
HEADERS = {"X-Telegram-Bot-Api-Secret-Token": SECRET}


def payload(name: str, update_id: int | None = None, text: str | None = None) -> dict:
    """A captured update, with a fresh update_id or text if given."""
    data = json.loads((PAYLOADS / f"{name}.json").read_text(encoding="utf-8"))
    if update_id is not None:
        data["update_id"] = update_id
    if text is not None:
        data["message"]["text"] = text
    return data


@pytest.fixture
def telegram_settings(settings, fake_telegram):  # type: ignore[no-untyped-def]
    return settings.with_(telegram_token=TOKEN, telegram_secret=SECRET, telegram_api_url=fake_telegram.url)


@pytest.fixture
async def client(make_client, telegram_settings):  # type: ignore[no-untyped-def]
    return await make_client(telegram_settings)


async def post(client, update: dict, headers: dict | None = HEADERS):  # type: ignore[no-untyped-def]
    """Post an update as Telegram does, then wait for the replies to go out."""
    response = await client.post("/webhooks/telegram", json=update, headers=headers)
    await services_of(client).drain()
    return response


async def nothing_stored(db) -> bool:  # type: ignore[no-untyped-def]
    return not await rows(db, Lead) and not await rows(db, Event)


async def test_a_text_message_becomes_a_lead_and_its_question_goes_to_a_person(client, db, fake_telegram):
    response = await post(client, payload("message_text"))

    assert response.status == 200 and await response.json() == {"ok": True}
    [lead] = await rows(db, Lead)
    assert (lead.first_name, lead.last_name, lead.locale) == ("Ann", "Lee", "en")
    assert [(i.kind, i.value) for i in await rows(db, Identity)] == [("telegram", str(CHAT))]
    [message] = await rows(db, Message, Message.direction == "in")
    assert message.text == "Hi, do you ship to Canada?" and message.lead_id == lead.id
    [conversation] = await rows(db, Conversation)
    assert (conversation.channel, conversation.external_id) == ("telegram", str(CHAT))
    # A question: a person will answer (the greeting does not come as well).
    assert fake_telegram.texts(CHAT) == ["Thanks, Ann! A person from our team will reply here within 5 minutes."]
    [delivery] = await rows(db, Delivery)
    assert delivery.status == "sent" and delivery.provider_message_id == "1001"


async def test_a_message_the_bot_api_accepted_is_delivered_and_never_claims_to_be_seen(
    client, db, fake_telegram, clock, run_kindling
):
    fake_telegram.fail_next("sendMessage", CHAT, 502, "Bad Gateway")
    await post(client, payload("message_text"))
    [delivery] = await rows(db, Delivery)
    assert (delivery.status, delivery.delivered_at) == ("pending", None)  # not accepted: not delivered

    clock.advance(delivery.not_before - clock.now())
    await services_of(client).dispatcher.dispatch_due()
    [delivery] = await rows(db, Delivery)
    assert (delivery.status, delivery.delivered_at, delivery.seen_at) == ("sent", clock.now(), None)
    status, out, _ = await run_kindling("lead", "show", str(delivery.lead_id))
    # No read receipts for bots.
    assert status == 0 and f"#{delivery.id} telegram system delivered: 'Thanks, Ann!" in out


async def test_an_update_sent_twice_is_stored_and_answered_once(client, db, fake_telegram):
    first, second = payload("message_text", text="Hi"), payload("message_text", update_id=730118099, text="Hello?")

    assert (await post(client, first)).status == 200
    assert (await post(client, first)).status == 200
    responses = await asyncio.gather(*(post(client, second) for _ in range(2)))

    assert [r.status for r in responses] == [200, 200]
    assert [m.text for m in await rows(db, Message, Message.direction == "in")] == ["Hi", "Hello?"]
    assert len(await rows(db, Event)) == 2
    greetings = [text for text in fake_telegram.texts(CHAT) if text.startswith("Hi Ann!")]
    assert len(greetings) == 1
    assert len(fake_telegram.texts(CHAT)) == 3  # greeting; then "got it" and the contact request, once


@pytest.mark.parametrize("headers", [{}, {"X-Telegram-Bot-Api-Secret-Token": "guess"}])
async def test_an_update_without_the_secret_is_refused(client, db, fake_telegram, headers):
    response = await post(client, payload("message_text"), headers=headers)

    assert response.status == 403
    assert "X-Telegram-Bot-Api-Secret-Token" in (await response.json())["error"]
    assert await nothing_stored(db) and not fake_telegram.sent_messages()


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"update_id": 1, "message": ', 400),
        (b"\xff\xfe not even text", 400),
        (b'{"hello": "world"}', 400),
        (b"[1, 2, 3]", 400),
        (b'{"update_id": 8, "message": "' + b"x" * 300_000 + b'"}', 413),
    ],
    ids=["malformed", "not-utf8", "not-an-update", "array", "oversized"],
)
async def test_bodies_that_are_not_usable_updates_are_refused(client, db, body, status):
    response = await client.post(
        "/webhooks/telegram", data=body, headers={**HEADERS, "Content-Type": "application/json"}
    )

    assert response.status == status
    assert (await response.json())["error"]
    assert await nothing_stored(db)


@pytest.mark.parametrize("name", ["message_sticker", "group_message"])
async def test_messages_the_bot_cannot_read_are_acknowledged_but_not_stored(client, db, fake_telegram, name):
    response = await post(client, payload(name))

    # 200, or Telegram would deliver the same sticker again and again.
    assert response.status == 200 and (await response.json())["ignored"]
    assert await nothing_stored(db) and not fake_telegram.sent_messages()


async def web_visitor(client) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """A visitor who came to the site from a Google spring campaign; returns their id and deep-link value."""
    ws = await client.ws_connect("/chat/ws")
    url = "https://shop.example/pricing?utm_source=google&utm_campaign=spring"
    view = {"id": str(uuid.uuid4()), "url": url}
    await ws.send_json({"type": "hello", "visitor": None, "token": None, "since": 0, "view": view})
    welcome = await ws.receive_json()
    await ws.close()
    return welcome["visitor"], welcome["link"]


async def test_a_web_visitor_following_the_deep_link_stays_one_lead(client, db, fake_telegram):
    visitor, link = await web_visitor(client)

    start = payload("message_start", text=f"/start v-{link}_m-widget")
    assert (await post(client, start)).status == 200

    [lead] = await rows(db, Lead, Lead.merged_into_id.is_(None))
    assert lead.first_touch["source"] == "google" and lead.first_touch["channel"] == "webchat"
    assert lead.last_touch["medium"] == "widget" and lead.last_touch["channel"] == "telegram"
    identities = {(i.kind, i.value) for i in await rows(db, Identity, Identity.lead_id == lead.id)}
    assert identities == {("visitor", visitor), ("telegram", str(CHAT))}
    conversations = await rows(db, Conversation, Conversation.lead_id == lead.id)
    assert {c.channel for c in conversations} == {"webchat", "telegram"}
    assert [e.type for e in await rows(db, Event) if e.type != "flow_enrolled"] == ["page_view", "start"]
    assert fake_telegram.texts(CHAT) == ["Hi Ann! Thanks for reaching out. How can we help you today?"]


async def test_a_telegram_lead_who_was_a_web_visitor_is_merged_into_one(client, db, fake_telegram):
    visitor, link = await web_visitor(client)
    await post(client, payload("message_text"))

    await post(client, payload("message_start", text=f"/start v-{link}"))

    [lead] = await rows(db, Lead, Lead.merged_into_id.is_(None))
    assert lead.first_touch["source"] == "google"
    assert {i.kind for i in await rows(db, Identity, Identity.lead_id == lead.id)} == {"visitor", "telegram"}


async def test_a_deep_link_with_a_guessed_visitor_id_does_not_join_that_visitor(client, db, fake_telegram):
    visitor, link = await web_visitor(client)
    forged = f"{visitor}-{'0' * 12}"

    await post(client, payload("message_start", text=f"/start v-{forged}"))

    leads = await rows(db, Lead, Lead.merged_into_id.is_(None))
    assert len(leads) == 2
    visitor_lead = next(lead for lead in leads if lead.first_touch.get("channel") == "webchat")
    kinds = {i.kind for i in await rows(db, Identity, Identity.lead_id == visitor_lead.id)}
    assert kinds == {"visitor"}


async def test_a_deep_link_records_where_the_lead_came_from(client, db):
    await post(client, payload("message_start", text="/start s-google_c-spring"))

    [lead] = await rows(db, Lead)
    assert lead.first_touch["source"] == "google" and lead.first_touch["campaign"] == "spring"
    assert lead.first_touch["channel"] == "telegram"


@pytest.mark.parametrize(
    ("text", "visitor", "touch"),
    [
        (
            "v-0123456789abcdef-0a1b2c3d4e5f_s-google_c-spring",
            "0123456789abcdef-0a1b2c3d4e5f",
            {"source": "google", "campaign": "spring"},
        ),
        ("v-0123456789abcdef", None, {}),
        ("s-google-ads_m-cpc_x-unknown", None, {"source": "google-ads", "medium": "cpc"}),
        ("v-NOT-A-VISITOR", None, {}),
        ("v-0123456789abcdef!", None, {}),
        ("x" * 65, None, {}),
        ("", None, {}),
        ("__-_s", None, {}),
    ],
)
def test_deep_link_payloads(text, visitor, touch):
    found_visitor, found_touch = parse_deep_link(text)

    assert found_visitor == visitor
    assert (found_touch.as_dict() if found_touch else {}) == touch


async def test_a_malformed_deep_link_is_still_a_start(client, db, fake_telegram):
    await post(client, payload("message_start", text="/start not a payload!"))

    [lead] = await rows(db, Lead)
    assert lead.first_touch == {}
    assert [e.type for e in await rows(db, Event)] == ["start"]
    assert fake_telegram.texts(CHAT)[0].startswith("Hi Ann!")


async def test_the_bot_asks_for_a_phone_number_and_stores_the_shared_contact(client, db, fake_telegram):
    await post(client, payload("message_text", text="Hi"))  # small talk: a question would go to a person
    await post(client, payload("message_text", update_id=730118010, text="ok"))

    request = fake_telegram.sent_messages(CHAT)[-1]
    assert request["text"].startswith("So we can follow up")
    assert request["reply_markup"] == {
        "keyboard": [[{"text": "Share my phone number", "request_contact": True}]],
        "one_time_keyboard": True,
        "resize_keyboard": True,
    }

    assert (await post(client, payload("message_contact"))).status == 200

    [lead] = await rows(db, Lead)
    assert lead.phone == "+4915112345678" and lead.stage == "lead"
    shared = await rows(db, Event, Event.type == "contact_shared")
    assert [event.payload["value"] for event in shared] == ["+4915112345678"]
    assert ("phone", "+4915112345678") in {(i.kind, i.value) for i in await rows(db, Identity)}
    assert fake_telegram.texts(CHAT)[-1] == "Thanks! We'll reach you at +4915112345678."


async def test_someone_elses_contact_card_is_not_taken_as_the_leads_phone(client, db):
    card = payload("message_contact")
    card["message"]["contact"] = {"phone_number": "+14155552671", "first_name": "Bob", "user_id": 777}

    await post(client, card)

    [lead] = await rows(db, Lead)
    assert lead.first_name == "Ann" and lead.phone is None
    [event] = await rows(db, Event, Event.type == "message")  # a person sees it: someone else's card is a question
    assert event.payload["contact_card"] == {"first_name": "Bob", "phone": "+14155552671"}


async def test_a_button_press_is_stored_and_acknowledged(client, db, fake_telegram):
    response = await post(client, payload("callback_query"))

    assert response.status == 200
    [event] = await rows(db, Event)
    assert event.type == "button" and event.payload["value"] == "Send me a summary"
    [message] = await rows(db, Message, Message.direction == "in")
    assert message.text == "Send me a summary"
    assert fake_telegram.called("answerCallbackQuery") == [{"callback_query_id": "2386412347123412345"}]


async def test_reply_buttons_are_sent_as_inline_buttons(client, db, fake_telegram, clock):
    await post(client, payload("message_text", text="Hi"))  # the bot holds the chat: nurture may go
    [conversation] = await rows(db, Conversation)
    long_label = "Ä" * 40  # 80 bytes in UTF-8
    async with db() as session, session.begin():
        session.add(
            Delivery(
                lead_id=conversation.lead_id,
                conversation_id=conversation.id,
                channel="telegram",
                address=str(CHAT),
                kind="nurture",
                text="Want a summary?",
                idempotency_key="test:buttons",
                buttons=[{"type": "reply", "text": "Send me a summary"}, {"type": "reply", "text": long_label}],
                not_before=clock.now(),
                created_at=clock.now(),
            )
        )

    assert await services_of(client).dispatcher.dispatch_due() == 1

    markup = fake_telegram.sent_messages(CHAT)[-1]["reply_markup"]
    assert markup == {
        "inline_keyboard": [
            [{"text": "Send me a summary", "callback_data": "Send me a summary"}],
            [{"text": long_label, "callback_data": "Ä" * 32}],
        ]
    }
    assert len(callback_data(long_label).encode()) == 64


async def test_with_a_public_url_the_webhook_is_registered_on_start(make_client, telegram_settings, fake_telegram):
    await make_client(telegram_settings.with_(public_url="https://bot.example.com"))

    assert fake_telegram.called("setWebhook") == [
        {
            "url": "https://bot.example.com/webhooks/telegram",
            "secret_token": SECRET,
            "allowed_updates": ["message", "callback_query", "my_chat_member"],
        }
    ]


async def test_without_a_public_url_no_webhook_is_registered(client, fake_telegram):
    assert fake_telegram.called("getMe") and not fake_telegram.called("setWebhook")


async def test_a_user_who_blocked_the_bot_gets_nothing_more(client, db, fake_telegram):
    fake_telegram.blocked_by(CHAT)

    await post(client, payload("message_text"))

    [delivery] = await rows(db, Delivery)
    assert delivery.status == "dead" and "blocked by the user" in delivery.last_error
    assert not fake_telegram.sent_messages(CHAT)
    [lead] = await rows(db, Lead)
    assert lead.opted_out_at is not None  # blocking the bot is an opt-out: no more nurture anywhere
    [opt_out] = await rows(db, Event, Event.type == "opt_out")
    assert opt_out.payload["reason"] == "blocked us on telegram"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # PTB 22 warns from RetryAfter's own constructor
async def test_flood_control_waits_as_long_as_telegram_asks(client, db, fake_telegram, clock):
    fake_telegram.flood(CHAT, retry_after=7)

    await post(client, payload("message_text"))

    [delivery] = await rows(db, Delivery)
    assert delivery.status == "pending" and delivery.not_before == clock.now() + timedelta(seconds=7)
    assert await services_of(client).dispatcher.dispatch_due() == 0
    clock.advance(timedelta(seconds=8))
    assert await services_of(client).dispatcher.dispatch_due() == 1
    [delivery] = await rows(db, Delivery)
    assert delivery.status == "sent"
    assert len(fake_telegram.sent_messages(CHAT)) == 1


async def test_a_rejected_token_does_not_stop_the_server(make_client, telegram_settings, db, caplog):
    caplog.set_level(logging.ERROR)
    client = await make_client(telegram_settings.with_(telegram_token="42:wrong-token"))

    response = await post(client, payload("message_text"))

    assert response.status == 200
    [delivery] = await rows(db, Delivery)
    assert delivery.status == "pending" and "token was rejected" in delivery.last_error
    errors = [r.getMessage() for r in caplog.records if r.name == "bot.channels.telegram"]
    assert len(errors) == 1 and "token was rejected" in errors[0]
    assert "wrong-token" not in caplog.text


async def test_an_unreachable_bot_api_leaves_replies_pending(make_client, telegram_settings, db):
    unreachable = telegram_settings.with_(telegram_api_url="http://127.0.0.1:1")
    client = await make_client(unreachable)

    response = await post(client, payload("message_text"))

    assert response.status == 200
    [delivery] = await rows(db, Delivery)
    assert delivery.status == "pending" and "unavailable" in delivery.last_error


async def test_a_webhook_without_the_database_answers_503_so_telegram_retries(make_client, telegram_settings):
    nowhere = "postgresql+asyncpg://postgres@127.0.0.1:1/x"  # a closed port
    broken = telegram_settings.with_(database_url=nowhere, secret_key="x")  # so start-up needs no DB
    client = await make_client(broken)

    response = await post(client, payload("message_text"))

    assert response.status == 503
    assert "database" in (await response.json())["error"]


async def test_without_a_webhook_secret_every_update_is_refused(make_client, telegram_settings, db):
    client = await make_client(telegram_settings.with_(telegram_secret=None))

    response = await post(client, payload("message_text"), headers={"X-Telegram-Bot-Api-Secret-Token": ""})

    assert response.status == 403 and await nothing_stored(db)


async def test_a_bot_api_server_error_is_retried_later_and_sent_once(client, db, fake_telegram, clock):
    fake_telegram.fail_next("sendMessage", CHAT, 502, "Bad Gateway")

    await post(client, payload("message_text"))

    [delivery] = await rows(db, Delivery)
    assert delivery.status == "pending" and delivery.not_before > clock.now()  # backed off, not dropped
    assert "Bad Gateway" in delivery.last_error
    assert await services_of(client).dispatcher.dispatch_due() == 0  # not before its time
    clock.advance(delivery.not_before - clock.now())
    assert await services_of(client).dispatcher.dispatch_due() == 1
    assert [d.status for d in await rows(db, Delivery)] == ["sent"]
    assert len(fake_telegram.sent_messages(CHAT)) == 1


FOLLOW_UP = """+++
name = "Follow up"
trigger = "message"
+++
{% step "nudge", after="10m" %}Did that answer your question?{% endstep %}
"""


async def test_a_permanent_error_for_one_lead_never_holds_up_the_others(
    make_client, telegram_settings, db, fake_telegram, clock, tmp_path
):
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    for shipped in (templates / "flows").glob("*.j2"):
        shipped.unlink()
    (templates / "flows" / "follow-up.j2").write_text(FOLLOW_UP)
    client = await make_client(telegram_settings.with_(templates=templates))
    other = payload("message_text", update_id=730118002, text="Hi")  # small talk: nurture goes on
    other["message"]["from"]["id"] = other["message"]["chat"]["id"] = CHAT + 1
    await post(client, payload("message_text", text="Hi"))
    await post(client, other)
    fake_telegram.fail_next("sendMessage", CHAT, 400, "Bad Request: chat not found")

    clock.advance(timedelta(hours=1))  # 13:00 UTC, outside quiet hours
    await services_of(client).runner.run_due()
    assert await services_of(client).dispatcher.dispatch_due() == 2

    nudges = {d.address: d for d in await rows(db, Delivery, Delivery.kind == "nurture")}
    assert nudges[str(CHAT)].status == "dead" and "Chat not found" in nudges[str(CHAT)].last_error
    assert nudges[str(CHAT + 1)].status == "sent"
    assert fake_telegram.texts(CHAT + 1)[-1] == "Did that answer your question?"
    shown = await client.get(f"/api/leads/{nudges[str(CHAT)].lead_id}", headers={"Authorization": f"Bearer {API_KEY}"})
    [why] = [d for d in (await shown.json())["deliveries"] if d["step"] == "nudge"]
    assert why["status"] == "dead" and "Chat not found" in why["error"]
