"""The bot asks a nameless visitor for a name and keeps it; "I'm Max Turner" anywhere sets it too."""

from __future__ import annotations

import pytest

from bot.intake.names import answered_name, stated_name
from storage.models import Event, Lead

from conftest import rows
from test_handoff import bot_texts
from test_telegram import (
    CHAT,
    payload,
    telegram_settings,  # noqa: F401  (fixture)
)
from test_telegram import client as telegram_app  # noqa: F401  (fixture)
from test_telegram import post as telegram_post
from test_webchat import hello, say

ASKS = "Hi! Thanks for reaching out. What's your name? And how can we help you today?"


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("I'm Max Turner", ("Max", "Turner")),
        ("Hi, I'm Max Turner from Acme, do you ship to Canada?", ("Max", "Turner")),
        ("hello! my name is max", ("Max", None)),
        ("I am Jean-Luc.", ("Jean-Luc", None)),
        ("Здравствуйте, меня зовут Макс", ("Макс", None)),
        ("你好，我叫王伟，想问一下价格", ("王伟", None)),
        ("I'm interested in the team plan", None),
        ("I'm looking for a price", None),
        ("im max", None),  # no capital, no "I'm": not sure enough
        ("Tim said hello", None),
    ],
)
def test_a_name_stated_anywhere_is_found_and_a_sentence_is_not_one(text, name):
    assert stated_name(text) == name


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Max", ("Max", None)),
        ("max turner", ("Max", "Turner")),
        ("Макс!", ("Макс", None)),
        ("王伟", ("王伟", None)),
        ("Do you have a plan for a team of 5?", None),
        ("Max?", None),
        ("We are a team of five people looking at plans", None),
        ("hello", None),
        ("price", None),
        ("call me", None),
        ("ann@example.com", None),
    ],
)
def test_a_bare_answer_is_a_name_only_when_it_reads_as_one(text, name):
    assert answered_name(text, ["call me"]) == name


async def chat(client, *texts: str):  # type: ignore[no-untyped-def]
    ws = await client.ws_connect("/chat/ws")
    await hello(ws)
    for text in texts:
        await say(client, ws, text)
    return ws


async def test_the_greeting_asks_a_web_visitor_for_a_name_and_the_answer_is_kept(client, db, run_kindling):
    ws = await chat(client, "Hi")
    assert await bot_texts(ws, 1) == [ASKS]
    await say(client, ws, "Max Turner")
    await say(client, ws, "Bob")  # asked once: a later word is not taken for a name

    [lead] = await rows(db, Lead)
    assert (lead.first_name, lead.last_name) == ("Max", "Turner")
    [given] = await rows(db, Event, Event.type == "name_given")
    assert given.payload == {"value": "Max Turner", "first_name": "Max", "last_name": "Turner", "channel": "webchat"}
    texts = await bot_texts(ws, 2)
    assert not any("name" in text for text in texts)
    status, shown, _ = await run_kindling("lead", "show", str(lead.id))
    assert status == 0 and f"Lead {lead.id}: Max Turner" in shown
    assert "name_given  'Max Turner'" in shown  # on the lead's timeline


async def test_a_question_after_the_greeting_is_not_a_name_and_the_bot_does_not_ask_again(client, db):
    ws = await chat(client, "Hi", "Do you have a plan for a team of 5?", "Max")
    [lead] = await rows(db, Lead)
    assert (lead.first_name, lead.last_name) == (None, None)
    assert await rows(db, Event, Event.type == "name_given") == []
    assert [text for text in await bot_texts(ws, 3) if "What's your name?" in text] == [ASKS]


async def test_i_am_max_turner_in_a_first_message_names_the_lead_and_the_greeting_uses_it(client, db):
    ws = await chat(client, "Hi, I'm Max Turner. Do you ship to Canada?")
    assert await bot_texts(ws, 1) == ["Hi Max! Thanks for reaching out. How can we help you today?"]
    [lead] = await rows(db, Lead)
    assert (lead.first_name, lead.last_name) == ("Max", "Turner")


@pytest.mark.parametrize(("answer", "first"), [("меня зовут Макс", "Макс"), ("我叫王伟", "王伟"), ("Max", "Max")])
async def test_names_in_other_languages_are_kept(client, db, answer, first):
    await chat(client, "Hi", answer)
    [lead] = await rows(db, Lead)
    assert lead.first_name == first


async def test_telegram_users_are_not_asked_and_keep_their_profile_name(telegram_app, db, fake_telegram):  # noqa: F811
    await telegram_post(telegram_app, payload("message_text"))
    await telegram_post(telegram_app, payload("message_text", update_id=900001, text="Max"))
    await telegram_post(telegram_app, payload("message_text", update_id=900002, text="I'm Max Turner"))

    # "Hi, do you ship to Canada?" is a question for a person; nothing the bot says asks Ann for a name.
    assert fake_telegram.texts(CHAT)[0] == "Thanks, Ann! A person from our team will reply here within 5 minutes."
    assert not any("name" in text for text in fake_telegram.texts(CHAT))
    [lead] = await rows(db, Lead)
    assert (lead.first_name, lead.last_name) == ("Ann", "Lee")
    assert await rows(db, Event, Event.type == "name_given") == []
