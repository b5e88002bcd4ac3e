"""The website widget's WebSocket: visitors become leads, messages are stored once and answered."""

from __future__ import annotations

import uuid

from conftest import rows, services_of
from storage.models import Event, Lead, Message


async def hello(ws, visitor=None, token=None, url="https://shop.example/pricing?utm_source=google&utm_campaign=spring", since=0):
    await ws.send_json(
        {"type": "hello", "visitor": visitor, "token": token, "since": since,
         "view": {"id": str(uuid.uuid4()), "url": url, "referrer": "https://www.google.com/", "title": "Pricing"},
         "locale": "en-US", "timezone": "America/New_York"}
    )
    welcome = await ws.receive_json()
    assert welcome["type"] == "welcome"
    return welcome


async def say(client, ws, text, client_id=None):
    client_id = client_id or str(uuid.uuid4())
    await ws.send_json({"type": "message", "id": client_id, "text": text})
    ack = await ws.receive_json()
    assert ack == {"type": "ack", "id": client_id, "duplicate": ack["duplicate"]}
    await services_of(client).drain()
    return ack


async def test_a_visitor_chats_and_becomes_a_lead_with_source(client, db):
    ws = await client.ws_connect("/chat/ws")
    welcome = await hello(ws)
    await say(client, ws, "Hi, do you ship to Canada?")
    echo = await ws.receive_json()
    assert echo["from"] == "visitor" and echo["text"] == "Hi, do you ship to Canada?"
    greeting = await ws.receive_json()
    assert greeting["from"] == "bot" and greeting["text"].startswith("Hi! Thanks for reaching out")

    [lead] = await rows(db, Lead)
    assert lead.id == welcome["lead"]
    assert lead.first_touch["source"] == "google" and lead.first_touch["campaign"] == "spring"
    assert lead.locale == "en-US" and lead.timezone == "America/New_York"
    assert lead.score == 12  # pricing page +10, message +2
    types = [event.type for event in await rows(db, Event)]
    assert types == ["page_view", "message"]
    await ws.close()
