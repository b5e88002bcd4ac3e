"""The website widget's WebSocket: visitors become leads, messages are stored once and answered."""

from __future__ import annotations

import json
import uuid

import pytest

from storage.models import Event, Lead, Message

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
    greeting = await next_frame(ws)
    assert greeting["from"] == "bot" and greeting["text"].startswith("Hi! Thanks for reaching out")

    [lead] = await rows(db, Lead)
    assert lead.id == welcome["lead"]
    assert lead.first_touch["source"] == "google" and lead.first_touch["campaign"] == "spring"
    assert lead.locale == "en-US" and lead.timezone == "America/New_York"
    assert lead.score == 12  # pricing page +10, message +2
    types = [event.type for event in await rows(db, Event)]
    assert types == ["page_view", "flow_enrolled", "message"]  # a pricing visitor enters pricing-not-ready
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
    assert [(m["from"], m["text"][:14]) for m in history] == [("visitor", "first question"), ("bot", "Hi! Thanks for")]

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
    for text in ("hi", "what does it cost?", "and for teams?"):
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
