"""Intake held up by another instance's lock must not hold up everyone else for as long (PostgreSQL).

Another instance's transaction holds one person's lead row (the test holds it, from a connection of its
own, as that instance would), so the intake transaction storing that person's inbound waits. Meanwhile:

- intake (bot/intake/intake.py): the inbounds stored in the same batch as the held one keep their people busy,
  and a later inbound of those people waits for that batch to end, but only for STUCK_SECONDS; then it is
  stored all the same (its own rows are free);
- the inbox (bot/intake/inbox.py): the chunk of Telegram updates handed to intake with the held one waits for it,
  and the updates behind that chunk are handed to intake by another task once it has been at it for STUCK
  seconds, and so are updates arriving after that.

When the lock is released the held inbound is stored once. Both constants are lowered here, to keep the
test's real-time waits short; SQLite has a single intake writer (one write lock): nothing there could pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlmodel import select

from bot.api.events import event_inbound
from storage.db import create_engine, is_sqlite
from storage.models import Event, InboxEntry, Lead, Message

from conftest import API_KEY, rows, services_of
from test_telegram import CHAT, HEADERS, payload

ONE_WRITER = "SQLite has one intake writer (one write lock): nothing can pass a transaction held up"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
WAITING = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"


@asynccontextmanager
async def lead_held(database_url: str, lead_id: int) -> AsyncIterator[None]:
    """Another instance's transaction holds a lead's row, until the block ends."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT id FROM lead WHERE id = :id FOR UPDATE"), {"id": lead_id})
            try:
                yield
            finally:
                await connection.rollback()
    finally:
        await engine.dispose()


async def until(db, check, what: str) -> None:  # type: ignore[no-untyped-def]
    """Poll the database until `check(session)` is true (bounded: 10 s of real time)."""
    for _ in range(500):
        async with db() as session:
            if await check(session):
                return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within 10 s: {what}")


async def a_transaction_waits_for_a_lock(session) -> bool:  # type: ignore[no-untyped-def]
    return bool((await session.exec(text(WAITING))).one()[0])


def message_stored(text_: str):  # type: ignore[no-untyped-def]
    async def check(session) -> bool:  # type: ignore[no-untyped-def]
        return (await session.exec(select(Message.id).where(Message.text == text_))).first() is not None

    return check


async def test_a_batch_held_up_by_another_instance_stops_holding_back_its_peoples_next_inbounds(
    client, db, database_url, clock, monkeypatch
):
    if is_sqlite(database_url):
        pytest.skip(ONE_WRITER)
    monkeypatch.setattr("bot.intake.intake.STUCK_SECONDS", 0.3)
    quinn, pat = ({"email": "quinn@example.com"}, {"email": "pat@example.com"})
    for n, person in enumerate((quinn, pat)):
        answer = await client.post("/api/events", json={"id": f"start-{n}", "type": "signup", "lead": person},
                                   headers=AUTH)  # fmt: skip
        assert answer.status == 201
    [quinn_id, pat_id] = [lead.id for lead in await rows(db, Lead)]
    clock.advance(timedelta(seconds=1))  # each inbound below changes its lead
    intake = services_of(client).intake

    def event(dedup: str, person: dict) -> dict:
        return {"id": dedup, "type": "demo_request", "lead": person}

    async with lead_held(database_url, quinn_id):
        # Quinn's and Pat's inbounds are stored in one batch, which waits for Quinn's lead.
        batch = asyncio.gather(*(intake.receive(event_inbound(body, clock.now()))
                                 for body in (event("q-1", quinn), event("p-1", pat))))  # fmt: skip
        await until(db, a_transaction_waits_for_a_lock, "the batch waits for Quinn's lead")
        # Pat's next event waits for that batch only so long, then is stored and answered.
        answer = await asyncio.wait_for(client.post("/api/events", json=event("p-2", pat), headers=AUTH), 10)
        assert answer.status == 201 and (await answer.json())["lead_id"] == pat_id
        assert not batch.done()  # the batch still waits for the other instance
    quinn_received, pat_received = await asyncio.wait_for(batch, 10)  # released: the batch is stored

    assert (quinn_received.lead_id, pat_received.lead_id) == (quinn_id, pat_id)
    stored = sorted((e.dedup_key, e.lead_id) for e in await rows(db, Event, Event.name == "demo_request"))
    assert stored == [("api:p-1", pat_id), ("api:p-2", pat_id), ("api:q-1", quinn_id)]  # each once
    assert len(await rows(db, Lead)) == 2


async def test_updates_behind_a_chunk_held_up_by_another_instance_are_taken_in_meanwhile(
    telegram_client, db, database_url, clock, monkeypatch, fake_telegram
):
    if is_sqlite(database_url):
        pytest.skip(ONE_WRITER)
    monkeypatch.setattr("bot.intake.inbox.STUCK", 1.0)
    client = telegram_client
    inbox = services_of(client).inbox
    assert (
        await client.post("/webhooks/telegram", json=payload("message_text", text="Hi"), headers=HEADERS)
    ).status == 200
    await services_of(client).drain()
    [ann] = await rows(db, Lead)
    clock.advance(timedelta(seconds=1))  # her next message changes her lead

    def someone_else(update_id: int, text_: str) -> dict:
        update = payload("message_text", update_id=update_id, text=text_)
        update["message"]["from"]["id"] = update["message"]["chat"]["id"] = CHAT + 1
        return update

    async with lead_held(database_url, ann.id):
        held = payload("message_text", update_id=732_000_001, text="thanks")
        assert (await client.post("/webhooks/telegram", json=held, headers=HEADERS)).status == 200
        await until(db, a_transaction_waits_for_a_lock, "Ann's update waits for her lead")
        # Behind it already (before it has been at it for STUCK seconds): taken in by another task.
        update = someone_else(732_000_002, "hello")
        assert (await client.post("/webhooks/telegram", json=update, headers=HEADERS)).status == 200
        await until(db, message_stored("hello"), "the update behind the held one taken in")
        # Arriving while it is still held up: taken in as well.
        update = someone_else(732_000_003, "ok")
        assert (await client.post("/webhooks/telegram", json=update, headers=HEADERS)).status == 200
        await until(db, message_stored("ok"), "the update after the held one taken in")
        assert not await rows(db, Message, Message.text == "thanks")  # still held up meanwhile
    await services_of(client).drain()

    texts = sorted(m.text for m in await rows(db, Message, Message.direction == "in"))
    assert texts == ["Hi", "hello", "ok", "thanks"]  # once each (small talk: the bot answers each chat itself)
    assert {m.lead_id for m in await rows(db, Message, Message.text == "thanks")} == {ann.id}
    assert not await rows(inbox.sessions, InboxEntry)
    # Each chat had a first and a second message: the held one is answered once, as the other chat's second was.
    assert len(fake_telegram.texts(CHAT)) == 3 and fake_telegram.texts(CHAT) == fake_telegram.texts(CHAT + 1)
