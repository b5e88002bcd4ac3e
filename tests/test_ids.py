"""Ids are never given twice: a retried erasure never reaches the next person, old links never open someone else."""

from __future__ import annotations

import asyncio
import os
import sqlite3

import pytest

from storage.db import create_engine
from storage.migrate import upgrade
from storage.models import Conversation, Event, Handoff, Lead, Message

from conftest import API_KEY, rows
from test_webchat import hello, say

AUTH = {"Authorization": f"Bearer {API_KEY}"}


async def signup(client, email: str, name: str) -> int:
    body = {"type": "signup", "lead": {"email": email, "first_name": name}}
    response = await client.post("/api/events", json=body, headers=AUTH)
    assert response.status == 201, await response.text()
    return (await response.json())["lead_id"]


async def test_a_retried_erasure_is_410_gone_and_leaves_the_next_person_alone(client, db):
    ann = await signup(client, "ann@example.com", "Ann")
    assert (await client.delete(f"/api/leads/{ann}", headers=AUTH)).status == 200
    bo = await signup(client, "bo@example.com", "Bo")

    retried = await client.delete(f"/api/leads/{ann}", headers=AUTH)  # the CRM did not hear the first answer

    assert bo != ann
    assert retried.status == 410 and f"lead {ann} was erased on " in (await retried.json())["error"]
    assert [(lead.id, lead.first_name) for lead in await rows(db, Lead)] == [(bo, "Bo")]
    assert (await client.delete("/api/leads/999", headers=AUTH)).status == 404  # never existed: not gone


async def chat_to_a_human(client) -> int:
    """A visitor chats on the widget and asks for a human: a conversation, events, messages and a handoff."""
    ws = await client.ws_connect("/chat/ws")
    lead = (await hello(ws))["lead"]
    await say(client, ws, "Hello there")
    await say(client, ws, "Can I talk to a human please?")
    await ws.close()
    return lead


async def test_the_next_person_gets_new_conversation_event_message_and_handoff_ids(client, db):
    first = await chat_to_a_human(client)
    used = {model: {row.id for row in await rows(db, model)} for model in (Conversation, Event, Message, Handoff)}
    assert all(used.values())
    assert (await client.delete(f"/api/leads/{first}", headers=AUTH)).status == 200

    second = await chat_to_a_human(client)

    assert second != first
    for model, ids in used.items():
        fresh = {row.id for row in await rows(db, model)}
        assert fresh and not fresh & ids, model.__name__


@pytest.mark.skipif(
    bool(os.environ.get("KINDLING_TEST_DATABASE_URL")),
    reason="PostgreSQL's sequences never reused an id: the migration changes nothing there",
)
def test_migrating_keeps_every_row_and_numbers_above_the_largest_id_ever_used(tmp_path):
    file = tmp_path / "old.db"
    engine = create_engine(f"sqlite+aiosqlite:///{file}")
    asyncio.run(upgrade(engine, "0010"))
    with sqlite3.connect(file) as connection:
        connection.execute(
            "INSERT INTO lead (id, created_at, updated_at, stage, stage_at, score, first_touch, last_touch, tags)"
            " VALUES (7, '2026-01-05 10:00:00', '2026-01-05 10:00:00', 'lead', '2026-01-05 10:00:00', 0, '{}', '{}',"
            " '[]')"
        )
        connection.execute("INSERT INTO conversation (id, lead_id, channel, external_id, owner, contact_requested,"
                           " created_at) VALUES (4, 7, 'webchat', 'v-1', 'bot', 0, '2026-01-05 10:00:00')")  # fmt: skip

    asyncio.run(upgrade(engine, "head"))
    asyncio.run(engine.dispose())

    with sqlite3.connect(file) as connection:
        connection.execute("PRAGMA foreign_keys=ON")
        assert connection.execute("SELECT id, stage FROM lead").fetchall() == [(7, "lead")]
        connection.execute("DELETE FROM conversation")
        connection.execute("DELETE FROM lead")
        connection.execute(
            "INSERT INTO lead (created_at, updated_at, stage, stage_at, score, first_touch, last_touch, tags)"
            " VALUES ('2026-01-06 10:00:00', '2026-01-06 10:00:00', 'visitor', '2026-01-06 10:00:00', 0, '{}', '{}',"
            " '[]')"
        )
        assert connection.execute("SELECT id FROM lead").fetchall() == [(8,)]
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
