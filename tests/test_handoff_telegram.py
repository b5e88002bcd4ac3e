"""Handoff in Telegram: the operators' group gets the card, Take claims it, replies to the card reach the lead."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from bot.delivery.hub import QUEUE
from storage.models import Delivery, Event, Handoff, Message

from conftest import rows, services_of
from fake_telegram import BOT_USER, DATE, TOKEN
from test_handoff import add_operator, published
from test_telegram import CHAT, SECRET, payload, post

GROUP = -1001234567890
ANA, BEN, STRANGER = 7001, 7002, 7999
BOT = {key: BOT_USER[key] for key in ("id", "is_bot", "first_name", "username")}
CHAT_OF_GROUP = {"id": GROUP, "type": "supergroup", "title": "Operators"}


@pytest.fixture
def telegram_settings(settings, fake_telegram):
    return settings.with_(
        telegram_token=TOKEN, telegram_secret=SECRET, telegram_api_url=fake_telegram.url, operators_chat=GROUP
    )


@pytest.fixture
async def client(make_client, telegram_settings):
    return await make_client(telegram_settings)


def take(update_id: int, handoff_id: int, user_id: int, card_id: int) -> dict:
    """Someone in the operators' group presses a card's Take button."""
    card = {"message_id": card_id, "from": BOT, "chat": CHAT_OF_GROUP, "date": DATE, "text": "Warm lead"}
    query = {
        "id": f"q{update_id}",
        "from": {"id": user_id, "is_bot": False, "first_name": f"user{user_id}"},
        "message": card,
        "chat_instance": "-42",
        "data": f"take:{handoff_id}",
    }
    return {"update_id": update_id, "callback_query": query}


def group_reply(update_id: int, user_id: int, text: str, card_id: int) -> dict:
    """Someone in the operators' group replies to a card."""
    card = {"message_id": card_id, "from": BOT, "chat": CHAT_OF_GROUP, "date": DATE, "text": "Warm lead"}
    message = {
        "message_id": update_id,
        "from": {"id": user_id, "is_bot": False, "first_name": f"user{user_id}"},
        "chat": CHAT_OF_GROUP,
        "date": DATE,
        "text": text,
        "reply_to_message": card,
    }
    return {"update_id": update_id, "message": message}


async def warm_lead(client, db) -> Handoff:
    """Ann writes to the bot, then asks for a human."""
    await post(client, payload("message_text", text="Hi"))
    await post(client, payload("message_text", update_id=730118100, text="Can I talk to a human?"))
    [handoff] = await rows(db, Handoff)
    return handoff


async def test_the_operators_group_gets_the_card_with_a_take_button(client, db, fake_telegram, clock):
    handoff = await warm_lead(client, db)

    [card] = fake_telegram.sent_messages(GROUP)
    assert card["text"].startswith('Warm lead #1: Ann Lee (no contacts)\nWhy: wrote "talk to a human"')
    assert "visitor: Can I talk to a human?" in card["text"] and "Channel: telegram" in card["text"]
    assert card["reply_markup"] == {"inline_keyboard": [[{"text": "Take", "callback_data": f"take:{handoff.id}"}]]}
    assert handoff.telegram_message_id is not None and handoff.telegram_notified_at == clock.now()
    assert fake_telegram.texts(CHAT)[-1].startswith("Thanks, Ann! I'm bringing in a person")
    notified = await rows(db, Event, Event.type == "handoff_notified")
    assert [(e.payload["via"], e.payload["seconds_since_warm"]) for e in notified] == [("console", 0), ("telegram", 0)]


async def test_take_claims_and_a_second_presser_hears_who_has_it(client, db, fake_telegram):
    await add_operator(db, "Ana", telegram_id=ANA)
    await add_operator(db, "Ben", telegram_id=BEN)
    handoff = await warm_lead(client, db)
    card_id = int(handoff.telegram_message_id)

    for update_id, user in ((1, ANA), (2, BEN), (3, STRANGER)):
        assert (await post(client, take(update_id, handoff.id, user, card_id))).status == 200

    answers = [(a["callback_query_id"], a["text"]) for a in fake_telegram.called("answerCallbackQuery")]
    assert answers == [
        ("q1", "you took lead #1"),
        ("q2", "already taken by Ana"),
        (
            "q3",
            f"you are not a Kindling operator: ask an admin to run kindling operator add NAME --telegram-id {STRANGER}",
        ),
    ]
    [edited] = fake_telegram.called("editMessageText")
    assert str(edited["message_id"]) == str(card_id) and edited["text"].endswith("Taken by Ana.")
    assert "reply_markup" not in edited  # the Take button is gone
    [handoff] = await rows(db, Handoff)
    assert handoff.status == "claimed"


async def test_a_reply_to_the_card_reaches_the_lead_once_and_only_from_the_holder(client, db, fake_telegram):
    await add_operator(db, "Ana", telegram_id=ANA)
    await add_operator(db, "Ben", telegram_id=BEN)
    handoff = await warm_lead(client, db)
    card_id = int(handoff.telegram_message_id)
    await post(client, take(1, handoff.id, ANA, card_id))

    reply = group_reply(10, ANA, "Hi Ann, Ana here. Which plan are you looking at?", card_id)
    await post(client, reply)
    await post(client, reply)  # Telegram delivers it again: relayed once
    await post(client, group_reply(11, BEN, "Ben here too", card_id))
    await post(client, group_reply(12, ANA, "(just chatting)", card_id + 500))  # not a card: ignored

    assert fake_telegram.texts(CHAT)[-1] == "Hi Ann, Ana here. Which plan are you looking at?"
    [delivery] = await rows(db, Delivery, Delivery.kind == "operator")
    assert (delivery.status, delivery.channel, delivery.address) == ("sent", "telegram", str(CHAT))
    assert fake_telegram.texts(GROUP)[-1] == "Not sent: lead #1 is held by Ana."
    [operator_message] = await rows(db, Message, Message.author == "operator")
    assert operator_message.text.startswith("Hi Ann, Ana here")


async def test_while_an_operator_holds_it_the_bot_is_silent_and_messages_go_live(client, db, fake_telegram):
    await add_operator(db, "Ana", telegram_id=ANA)
    handoff = await warm_lead(client, db)
    await post(client, take(1, handoff.id, ANA, int(handoff.telegram_message_id)))
    sent_before = len(fake_telegram.sent_messages(CHAT))
    await services_of(client).hub.flush()  # what came before is out before we start listening

    async with services_of(client).hub.watch(handoff.conversation_id) as live:
        await post(client, payload("message_text", update_id=730118200, text="Hello? Anyone?"))
        await services_of(client).hub.flush()
        message = live.get_nowait()

    assert (message["from"], message["text"]) == ("visitor", "Hello? Anyone?")
    assert len(fake_telegram.sent_messages(CHAT)) == sent_before


@pytest.mark.parametrize(
    ("status", "description"),
    [(502, "Bad Gateway"), (403, "Forbidden: bot was kicked from the supergroup chat")],
)
async def test_an_unreachable_group_still_leaves_the_console_told_and_is_retried(
    client, db, fake_telegram, clock, caplog, status, description
):
    fake_telegram.fail_next("sendMessage", GROUP, status, description)
    caplog.set_level(logging.WARNING)
    async with services_of(client).hub.watch(QUEUE) as queue:
        handoff = await warm_lead(client, db)
        assert await published(services_of(client).hub, queue) == [("opened", handoff.id)]

    assert handoff.console_notified_at is not None and handoff.telegram_notified_at is None
    assert description.split(":")[0] in handoff.notify_error
    assert any("operators' group was not told" in record.getMessage() for record in caplog.records)
    notifier = services_of(client).notifier
    assert await notifier.pending() == 0  # not before a minute has passed
    clock.advance(timedelta(seconds=61))
    assert await notifier.pending() == 1
    [handoff] = await rows(db, Handoff)
    assert handoff.telegram_notified_at == clock.now() and handoff.notify_error is None
    assert len(fake_telegram.sent_messages(GROUP)) == 1


async def test_a_card_refused_by_flood_control_is_posted_after_telegrams_wait_not_a_minute(
    client, db, fake_telegram, clock
):
    fake_telegram.fail_next("sendMessage", GROUP, 429, "Too Many Requests: retry after 3", retry_after=3)
    handoff = await warm_lead(client, db)
    assert handoff.telegram_notified_at is None and "Retry in 3 seconds" in handoff.notify_error

    notifier = services_of(client).notifier
    clock.advance(timedelta(seconds=2))
    assert await notifier.pending() == 0
    clock.advance(timedelta(seconds=2))
    assert await notifier.pending() == 1
    [handoff] = await rows(db, Handoff)
    assert handoff.telegram_notified_at == clock.now() and len(fake_telegram.sent_messages(GROUP)) == 1


async def test_without_an_operators_chat_the_group_is_disabled_with_one_log_line(
    make_client, telegram_settings, caplog
):
    caplog.set_level(logging.INFO)
    await make_client(telegram_settings.with_(operators_chat=None))

    lines = [r.getMessage() for r in caplog.records if "operators' group" in r.getMessage()]
    assert lines == ["telegram operators' group is disabled: KINDLING_OPERATORS_CHAT is not set"]


async def test_answering_the_card_with_a_command_hands_the_lead_back(client, db, fake_telegram):
    await add_operator(db, "Ana", telegram_id=ANA)
    await add_operator(db, "Ben", telegram_id=BEN)
    handoff = await warm_lead(client, db)
    card_id = int(handoff.telegram_message_id)
    await post(client, take(1, handoff.id, ANA, card_id))

    await post(client, group_reply(20, STRANGER, "/won", card_id))
    await post(client, group_reply(21, BEN, "/won", card_id))
    await post(client, group_reply(22, ANA, "/lost", card_id))
    await post(client, group_reply(23, ANA, "/lost went with a competitor", card_id))

    assert fake_telegram.texts(GROUP)[-4:] == [
        f"Not done: you are not a Kindling operator: ask an admin to run kindling operator add NAME "
        f"--telegram-id {STRANGER}.",
        "Not done: lead #1 is held by Ana.",
        "Not done: a lost lead needs a reason.",
        "Handed back: lost (went with a competitor).",
    ]
    [handoff] = await rows(db, Handoff)
    assert (handoff.status, handoff.outcome, handoff.outcome_reason) == ("closed", "lost", "went with a competitor")
    assert not await rows(db, Delivery, Delivery.kind == "operator")  # commands are not relayed to the lead
