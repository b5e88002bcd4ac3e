"""Every kind of Telegram update, posted through the real webhook: none is refused, what a person says is answered once.

The payloads (tests/payloads/telegram/*.json) follow the Bot API's `Update` object: one for each of its
fields, and the messages people send (text, photo with a caption, voice, sticker, location, contact,
poll, forwarded, reply, commands, deep links), in private chats, groups and channels. Telegram sends again,
for hours, whatever is not answered 2xx: so every well-formed update gets a 200, an update python-telegram-bot
cannot read is kept as it came, and only a body that is no update at all is refused.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from telegram import TelegramObject, Update

from storage.models import Delivery, Enrollment, Event, InboxEntry, Lead, Message

from conftest import TELEGRAM_SECRET, rows, services_of, templates_with
from fake_telegram import TOKEN
from test_telegram import CHAT, nothing_stored

HEADERS = {"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET}

PAYLOADS = {path.stem: path for path in sorted((Path(__file__).parent / "payloads" / "telegram").glob("*.json"))}
SPOKEN = {  # a person saying something to the bot in its private chat: a lead, and one reply
    "message_text": "message",
    "message_photo_caption": "message",
    "message_contact": "message",
    "message_forwarded": "message",
    "message_reply": "message",
    "message_command": "message",
    "message_start": "start",
    "message_start_deep_link": "start",
    "callback_query": "button",
}
STATUS = {"my_chat_member_blocked": "blocked", "my_chat_member_unblocked": "unblocked"}  # recorded, not answered
UNREADABLE = {"message_poll_unreadable"}  # python-telegram-bot refuses it: kept in the inbox
NOT_IN_BOT_API = {"future_update_type", *UNREADABLE}  # deliberately beyond what python-telegram-bot knows
FOLLOW_UP = """+++
name = "Follow up"
trigger = "message"
+++
{% step "nudge", after="10m" %}Did that answer your question?{% endstep %}
"""


@pytest.fixture
async def app(make_client, settings, fake_telegram, tmp_path):  # type: ignore[no-untyped-def]
    """The app on the fake Bot API, with one flow: any message enrolls the lead, a nudge follows 10 minutes later."""
    templates = templates_with(tmp_path / "templates", {"follow-up": FOLLOW_UP})
    telegram = {"telegram_token": TOKEN, "telegram_secret": TELEGRAM_SECRET, "telegram_api_url": fake_telegram.url}
    return await make_client(settings.with_(templates=templates, **telegram))


async def post(app, update: dict):  # type: ignore[no-untyped-def]
    """Post an update as Telegram does, then wait for the replies to go out."""
    response = await app.post("/webhooks/telegram", json=update, headers=HEADERS)
    await services_of(app).drain()
    return response


def payload(name: str, **changes: object) -> dict:
    data = json.loads(PAYLOADS[name].read_text(encoding="utf-8"))
    data.update(changes)
    return data


def small_talk(text: str = "Thanks!") -> dict:
    """The documented text message, saying something that needs no person (its own text is a question)."""
    data = payload("message_text")
    data["message"] = {**data["message"], "text": text}
    return data


def unknown_fields(value: object, path: str = "update") -> list[str]:
    """Where python-telegram-bot found fields it does not know (it keeps them in `api_kwargs`)."""
    if isinstance(value, list | tuple):
        return [found for index, item in enumerate(value) for found in unknown_fields(item, f"{path}[{index}]")]
    if not isinstance(value, TelegramObject):
        return []
    here = [f"{path}.{name}" for name in value.api_kwargs]
    attributes = value._get_attrs(recursive=False).items()  # noqa: SLF001 (PTB's own walk over its fields)
    return here + [found for name, item in attributes for found in unknown_fields(item, f"{path}.{name}")]


async def scrape(app, name: str) -> float:  # type: ignore[no-untyped-def]
    text = await (await app.get("/metrics")).text()
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def test_there_is_a_payload_for_every_field_of_the_update_object():
    kinds = {key for path in PAYLOADS.values() for key in json.loads(path.read_text(encoding="utf-8"))}
    assert set(Update.ALL_TYPES) <= kinds


@pytest.mark.parametrize("name", sorted(set(PAYLOADS) - NOT_IN_BOT_API))
def test_each_payload_has_only_fields_the_bot_api_defines(name):
    update = Update.de_json(payload(name), None)

    assert unknown_fields(update) == []


@pytest.mark.parametrize("name", sorted(PAYLOADS))
async def test_every_update_is_answered_200_and_only_what_a_person_says_is_answered(app, db, fake_telegram, name):
    response = await post(app, payload(name))

    assert response.status == 200, await response.text()
    answer = await response.json()
    if name in SPOKEN:
        assert answer == {"ok": True}
        [lead] = await rows(db, Lead)
        [event] = await rows(db, Event, Event.type == SPOKEN[name])
        assert event.lead_id == lead.id
        assert len(fake_telegram.texts(CHAT)) == 1  # one reply
    elif name in STATUS:
        assert [event.type for event in await rows(db, Event, Event.type == STATUS[name])] == [STATUS[name]]
        assert not fake_telegram.sent_messages()
    elif name in UNREADABLE:
        assert answer["kept"] and await nothing_stored(db) and not fake_telegram.sent_messages()
    else:
        assert answer["ignored"] and await nothing_stored(db) and not fake_telegram.sent_messages()


async def test_an_update_python_telegram_bot_cannot_read_is_kept_once_counted_and_erased_with_the_person(
    app, db, fake_telegram, caplog, run_kindling
):
    caplog.set_level(logging.WARNING)
    await post(app, small_talk())
    [lead] = await rows(db, Lead)
    unreadable = payload("message_poll_unreadable")

    answers = [await post(app, unreadable) for _ in range(2)]  # Telegram's resend changes nothing

    assert [response.status for response in answers] == [200, 200]
    assert "members_only" in (await answers[0].json())["kept"]
    inbox = services_of(app).inbox
    [entry] = await rows(inbox.sessions, InboxEntry)
    assert entry.inbound["raw"] == unreadable and "members_only" in (entry.error or "")
    assert await scrape(app, "kindling_inbox_held") == 1
    assert len([record for record in caplog.records if "kept unread" in record.getMessage()]) == 1
    assert [event.type for event in await rows(db, Event, Event.lead_id == lead.id)] == ["message", "flow_enrolled"]

    status, _, err = await run_kindling("lead", "erase", str(lead.id), "--yes")

    assert status == 0, err
    assert not await rows(inbox.sessions, InboxEntry)
    assert await scrape(app, "kindling_inbox_held") == 0


@pytest.mark.parametrize(
    "body",
    [b'{"message": {"text": "no update_id"}}', b'{"update_id": "7", "message": {}}', b"update_id=7"],
    ids=["no-update-id", "update-id-not-a-number", "not-json"],
)
async def test_a_body_that_is_no_update_at_all_is_still_a_400(app, db, body):
    headers = {**HEADERS, "Content-Type": "application/json"}
    response = await app.post("/webhooks/telegram", data=body, headers=headers)

    assert response.status == 400 and await nothing_stored(db)
    assert not await rows(services_of(app).inbox.sessions, InboxEntry)


async def test_blocking_the_bot_opts_the_lead_out_at_once_and_unblocking_does_not_opt_back_in(
    app, db, fake_telegram, clock
):
    await post(app, small_talk())
    assert [e.status for e in await rows(db, Enrollment)] == ["active"]
    sent_before = len(fake_telegram.sent_messages(CHAT))

    assert (await post(app, payload("my_chat_member_blocked"))).status == 200

    [lead] = await rows(db, Lead)
    assert lead.opted_out_at is not None
    [opt_out] = await rows(db, Event, Event.type == "opt_out")
    assert opt_out.payload["reason"] == "blocked us on telegram"
    assert [(e.status, e.exit_reason) for e in await rows(db, Enrollment)] == [("exited", "opt_out")]
    assert len(fake_telegram.sent_messages(CHAT)) == sent_before  # no "you are unsubscribed" to someone who blocked us

    await post(app, payload("my_chat_member_unblocked"))
    clock.advance(timedelta(hours=1))
    await services_of(app).runner.run_due()
    await services_of(app).dispatcher.dispatch_due()

    assert [e.type for e in await rows(db, Event) if e.type in ("blocked", "unblocked")] == ["blocked", "unblocked"]
    [lead] = await rows(db, Lead)
    assert lead.opted_out_at is not None  # unblocking is not consent to nurture again
    assert not await rows(db, Delivery, Delivery.kind == "nurture", Delivery.status == "sent")
    assert len(fake_telegram.sent_messages(CHAT)) == sent_before


async def test_the_bot_is_greeted_once_after_start_and_the_first_message_gets_got_it(app, fake_telegram):
    await post(app, payload("message_start"))
    await post(app, small_talk())

    texts = fake_telegram.texts(CHAT)
    assert [text for text in texts if text.startswith("Hi Ann!")] == [texts[0]]
    assert texts[1] == "Got it, thanks! We'll get back to you shortly."


@pytest.mark.parametrize("first", [None, "message_start"], ids=["contact-first", "after-start"])
async def test_a_shared_contact_gets_one_reply(app, fake_telegram, first):
    if first is not None:
        await post(app, payload(first))
    before = len(fake_telegram.texts(CHAT))

    await post(app, payload("message_contact"))

    assert fake_telegram.texts(CHAT)[before:] == ["Thanks! We'll reach you at +4915112345678."]


@pytest.mark.parametrize("name", ["message_text", "message_photo_caption"], ids=["fast-path", "through-ptb"])
async def test_an_update_id_telegram_reuses_in_another_chat_is_stored_and_a_resend_is_not(app, db, name):
    first = payload(name)
    other = payload(name)  # Telegram restarted its ids: the same update_id, another chat, another message
    other["message"]["chat"] = {**other["message"]["chat"], "id": CHAT + 7}
    other["message"]["from"] = {**other["message"]["from"], "id": CHAT + 7, "first_name": "Bea"}
    other["message"]["message_id"] += 1

    for update in (first, first, other, other):
        assert (await post(app, update)).status == 200

    assert len(await rows(db, Message, Message.direction == "in")) == 2
    assert {lead.first_name for lead in await rows(db, Lead)} == {"Ann", "Bea"}
