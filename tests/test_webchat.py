"""The website widget's WebSocket: visitors become leads, messages are stored once and answered."""

from __future__ import annotations

import json
import re
import uuid
from datetime import timedelta

import pytest

from bot.config import ConfigError, settings_from
from storage.models import Event, Handoff, Lead, Message

from conftest import rows, services_of


async def hello(
    ws, visitor=None, token=None, url="https://shop.example/pricing?utm_source=google&utm_campaign=spring", since=0
):
    await ws.send_json(
        {
            "type": "hello",
            "visitor": visitor,
            "token": token,
            "since": since,
            "view": {"id": str(uuid.uuid4()), "url": url, "referrer": "https://www.google.com/", "title": "Pricing"},
            "locale": "en-US",
            "timezone": "America/New_York",
        }
    )
    welcome = await ws.receive_json()
    assert welcome["type"] == "welcome"
    return welcome


_unread: dict[int, list[dict]] = {}


@pytest.fixture(autouse=True)
def _forget_unread_frames():
    _unread.clear()


async def say(client, ws, text, client_id=None):
    """Send a message, wait for its ack (keeping other frames for `next_from`), let replies go out."""
    client_id = client_id or str(uuid.uuid4())
    # As a browser's JSON.stringify does: UTF-8, not \u escapes.
    await ws.send_str(json.dumps({"type": "message", "id": client_id, "text": text}, ensure_ascii=False))
    while (frame := await ws.receive_json(timeout=5))["type"] != "ack":
        _unread.setdefault(id(ws), []).append(frame)
    assert frame["id"] == client_id
    await services_of(client).drain()
    return frame


async def next_frame(ws):
    """The next frame from the server, including those `say` passed over."""
    waiting = _unread.get(id(ws))
    return waiting.pop(0) if waiting else await ws.receive_json(timeout=5)


async def next_from(ws, author):
    """The next message frame written by `author` (visitor, bot, operator)."""
    while True:
        frame = await next_frame(ws)
        if frame.get("type") == "message" and frame["from"] == author:
            return frame


async def test_a_visitor_chats_and_becomes_a_lead_with_source(client, db):
    ws = await client.ws_connect("/chat/ws")
    welcome = await hello(ws)
    await say(client, ws, "Hi, do you ship to Canada?")
    echo = await next_frame(ws)
    assert echo["from"] == "visitor" and echo["text"] == "Hi, do you ship to Canada?"
    answer = await next_frame(ws)  # a question: a person will answer it (not the greeting, not both)
    assert answer["from"] == "bot" and answer["text"].startswith("Thanks! A person from our team will reply here")

    [lead] = await rows(db, Lead)
    assert lead.id == welcome["lead"]
    assert lead.first_touch["source"] == "google" and lead.first_touch["campaign"] == "spring"
    assert lead.locale == "en-US" and lead.timezone == "America/New_York"
    assert lead.score == 12  # pricing page +10, message +2
    types = [event.type for event in await rows(db, Event)]
    # A pricing visitor enters pricing-not-ready, which ends as their question goes to a person.
    assert types == ["page_view", "flow_enrolled", "message", "handoff", "handoff_notified"]
    await ws.close()


async def test_a_resent_message_is_stored_and_answered_once(client, db):
    ws = await client.ws_connect("/chat/ws")
    await hello(ws)
    client_id = str(uuid.uuid4())
    first = await say(client, ws, "hello?", client_id)
    again = await say(client, ws, "hello?", client_id)
    assert (first["duplicate"], again["duplicate"]) == (False, True)
    assert len(await rows(db, Message, Message.direction == "in")) == 1
    assert len(await rows(db, Message, Message.direction == "out")) == 1


async def test_the_visitor_keeps_their_conversation_across_reconnects_and_sees_what_they_missed(client, db):
    ws = await client.ws_connect("/chat/ws")
    welcome = await hello(ws)
    await say(client, ws, "first question")
    await ws.close()  # left before reading the bot's answer

    ws = await client.ws_connect("/chat/ws")
    again = await hello(ws, welcome["visitor"], welcome["token"])
    assert again["visitor"] == welcome["visitor"] and again["conversation"] == welcome["conversation"]
    history = [await next_frame(ws), await next_frame(ws)]
    # A question goes to a person: the bot says so (and nothing else follows from it).
    assert [(m["from"], m["text"][:14]) for m in history] == [("visitor", "first question"), ("bot", "Thanks! A pers")]

    ws2 = await client.ws_connect("/chat/ws")
    await hello(ws2, welcome["visitor"], welcome["token"], since=history[-1]["id"])
    await say(client, ws2, "second")  # nothing older is replayed: the next frames are new ones
    assert (await next_from(ws2, "visitor"))["text"] == "second"
    assert len(await rows(db, Lead)) == 1


async def test_a_visitor_cannot_write_into_another_visitors_conversation(client, db):
    alice = await client.ws_connect("/chat/ws")
    alice_welcome = await hello(alice)
    await say(client, alice, "alice's secret plans")

    mallory = await client.ws_connect("/chat/ws")
    forged = await hello(mallory, alice_welcome["visitor"], "0" * 32)
    assert forged["visitor"] != alice_welcome["visitor"]
    assert forged["conversation"] != alice_welcome["conversation"]
    await say(client, mallory, "injected")
    alice_messages = await rows(db, Message, Message.conversation_id == alice_welcome["conversation"])
    assert [m.text for m in alice_messages if m.direction == "in"] == ["alice's secret plans"]


async def test_contacts_typed_in_the_chat_are_kept_as_claims_and_never_join_another_lead(client, db):
    signup = await client.post(
        "/api/events",
        json={"type": "signup", "lead": {"email": "eve@example.com"}},
        headers={"Authorization": "Bearer test-api-key"},
    )
    backend_lead = (await signup.json())["lead_id"]
    ws = await client.ws_connect("/chat/ws")
    welcome = await hello(ws)
    await say(client, ws, "hi")
    await say(client, ws, "I'm EVE@example.com, reach me on +1 415 555 2671")
    thanks = await next_from(ws, "bot")
    while "Thanks!" not in thanks["text"]:
        thanks = await next_from(ws, "bot")

    assert thanks["text"] == "Thanks! We'll reach you at +14155552671."  # the phone nobody had: now theirs
    [visitor] = await rows(db, Lead, Lead.id == welcome["lead"])
    assert (visitor.email, visitor.phone, visitor.merged_into_id) == (None, "+14155552671", None)
    assert (await rows(db, Lead, Lead.id == backend_lead))[0].merged_into_id is None  # typed: no merge
    shared = await rows(db, Event, Event.lead_id == visitor.id, Event.type == "contact_shared")
    assert [(e.payload["value"], e.payload["verified"]) for e in shared] == [
        ("eve@example.com", False),
        ("+14155552671", False),
    ]
    assert visitor.stage == "mql"  # both count for the score, as shared contacts do


async def test_the_second_message_asks_for_a_contact_once(client):
    ws = await client.ws_connect("/chat/ws")
    await hello(ws)
    for text in ("hi", "ok", "thanks"):  # small talk: a question would go to a person, who asks themselves
        await say(client, ws, text)
    bot_texts = []
    for _ in range(4):
        bot_texts.append((await next_from(ws, "bot"))["text"])
    assert sum("best email or phone" in text for text in bot_texts) == 1


async def test_visitor_text_is_stored_as_text(client, db):
    ws = await client.ws_connect("/chat/ws")
    await hello(ws)
    payload = "<script>alert(1)</script> {{ 7*7 }} {% raw %}"
    await say(client, ws, payload)
    [message] = await rows(db, Message, Message.direction == "in")
    assert message.text == payload
    assert (await next_from(ws, "visitor"))["text"] == payload


async def test_bad_frames_get_an_error_and_the_chat_goes_on(client, db):
    ws = await client.ws_connect("/chat/ws")
    await ws.send_str("not json")
    assert (await ws.receive_json())["type"] == "error"  # no hello: refused

    ws = await client.ws_connect("/chat/ws")
    await hello(ws)
    for frame in (
        "not json",
        '{"type": "dance"}',
        '{"type": "message", "id": "x", "text": "hi"}',
        json.dumps({"type": "message", "id": str(uuid.uuid4()), "text": ""}),
    ):
        await ws.send_str(frame)
        assert (await ws.receive_json())["type"] == "error"
    await say(client, ws, "still here")
    assert len(await rows(db, Message, Message.direction == "in")) == 1


async def test_an_oversized_frame_closes_the_socket_without_storing_it(client, db):
    ws = await client.ws_connect("/chat/ws")
    await hello(ws)
    await ws.send_json({"type": "message", "id": str(uuid.uuid4()), "text": "x" * 20000})
    closing = await ws.receive()
    assert closing.type.name in ("CLOSE", "CLOSED", "CLOSING")
    assert await rows(db, Message) == []


async def test_a_page_view_of_pricing_scores_and_is_one_event_per_page_load(client, db):
    ws = await client.ws_connect("/chat/ws")
    welcome = await hello(ws, url="https://shop.example/")
    view = {"id": str(uuid.uuid4()), "url": "https://shop.example/pricing/teams", "referrer": "https://shop.example/"}
    await ws.send_json({"type": "page_view", "view": view})
    await ws.send_json({"type": "page_view", "view": view})  # a resend after a reconnect
    await ws.send_json({"type": "message", "id": str(uuid.uuid4()), "text": "hi"})
    await ws.receive_json()
    views = await rows(db, Event, Event.type == "page_view")
    assert [v.payload["path"] for v in views] == ["/", "/pricing/teams"]
    [lead] = await rows(db, Lead)
    assert lead.id == welcome["lead"] and lead.score == 12


async def test_a_refused_message_gets_an_error_with_its_id_so_the_widget_stops_resending_it(client, db):
    ws = await client.ws_connect("/chat/ws")
    await hello(ws)

    def message(client_id: str, text: str = "hi", **extra) -> str:
        return json.dumps({"type": "message", "id": client_id, "text": text, **extra})  # \u escapes, as JSON allows

    refused = {
        "a NUL character": lambda client_id: message(client_id, "hi\x00there"),
        "a lone surrogate": lambda client_id: message(client_id, "hi \ud83d"),
        "nesting past the limit": lambda client_id: message(
            client_id, extra=[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]
        ),
        "nesting past Python's recursion limit": lambda client_id: (
            message(client_id)[:-1] + ', "x": ' + "[" * 5000 + "]" * 5000 + "}"
        ),
    }
    for why, frame in refused.items():
        client_id = str(uuid.uuid4())
        await ws.send_str(frame(client_id))
        error = await ws.receive_json(timeout=5)
        assert (error["type"], error.get("id")) == ("error", client_id), why
        assert "NUL" in error["error"] or "nested" in error["error"], why

    client_id = str(uuid.uuid4())
    await ws.send_bytes(message(client_id).encode())  # a binary frame: answered, not a silent close
    error = await ws.receive_json(timeout=5)
    assert (error["type"], error.get("id"), error["error"]) == (
        "error",
        client_id,
        "frames must be text (JSON), not binary",
    )

    await say(client, ws, "still here")
    assert [m.text for m in await rows(db, Message, Message.direction == "in")] == ["still here"]


async def test_a_visitor_flooding_the_chat_is_slowed_down_and_nothing_is_stored_twice(client, db, clock):
    ws = await client.ws_connect("/chat/ws")
    await hello(ws)
    ids = [str(uuid.uuid4()) for _ in range(25)]
    for client_id in ids:  # 25 messages within the same second
        await ws.send_json({"type": "message", "id": client_id, "text": f"spam {client_id}"})
    answers = {}
    while len(answers) < len(ids):
        frame = await ws.receive_json(timeout=5)
        if frame["type"] in ("ack", "error"):
            answers[frame["id"]] = frame
    assert [answers[i]["type"] for i in ids] == ["ack"] * 20 + ["error"] * 5
    refused = answers[ids[-1]]
    assert refused["retry"] is True and refused["retry_after"] == 60
    assert refused["error"] == "too many messages: at most 20 a minute, sent again in a moment"
    await services_of(client).drain()
    assert len(await rows(db, Message, Message.direction == "in")) == 20

    clock.advance(timedelta(seconds=61))  # the widget sends the refused ones again, with their ids
    for client_id in [*ids[20:], ids[0]]:
        await say(client, ws, f"spam {client_id}", client_id)
    stored = [m.text for m in await rows(db, Message, Message.direction == "in")]
    assert sorted(stored) == sorted(f"spam {client_id}" for client_id in ids)  # each once


async def test_typing_a_lot_does_not_make_a_lead_warm(client, db, clock):
    ws = await client.ws_connect("/chat/ws")
    await hello(ws, url="https://shop.example/")
    for _ in range(5):
        clock.advance(timedelta(minutes=1))
        for _ in range(20):
            await say(client, ws, "ok")  # small talk: a question would go to a person whatever the score
    assert len(await rows(db, Message, Message.direction == "in")) == 100
    [lead] = await rows(db, Lead)
    assert lead.score == 10  # the shipped message rule: 2 points, counted at most 5 times a day
    assert await rows(db, Handoff) == []
    clock.advance(timedelta(days=1))
    await say(client, ws, "hello again tomorrow")
    [lead] = await rows(db, Lead)
    assert lead.score > 10


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"channels": {"webchat": {"messages_per_minute": 0}}}, "channels.webchat.messages_per_minute"),
        (
            {"scoring": {"rules": [{"name": "m", "event": "message", "points": 2, "cap": "3/h"}]}},
            "scoring.rules[0].cap",
        ),
        (
            {"scoring": {"rules": [{"name": "m", "event": "message", "points": 2, "cap": "3 per soon"}]}},
            "scoring.rules",
        ),
    ],
)
def test_a_bad_limit_or_cap_names_its_key(config, key):
    with pytest.raises(ConfigError, match=f"^{re.escape(key)}"):
        settings_from(config, {})
