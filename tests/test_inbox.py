"""The inbox: a Telegram update is answered once stored as it came, and nothing is lost after that.

What a server that died after answering left in the inbox is taken in (at start-up on SQLite, after the
lease on PostgreSQL, where another instance may still hold it); an update whose intake keeps failing is
tried a few times and then kept with its error, not retried for ever and not dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3

import pytest
from sqlalchemy import text
from telegram import Update

from bot.channels.telegram import inbound_from
from bot.intake.inbound import inbound_to_json
from bot.intake.inbox import LEASE, MAX_ATTEMPTS
from storage.db import create_engine, inbox_url, is_sqlite, sessionmaker
from storage.models import Event, InboxEntry, Lead, Message

from conftest import API_KEY, rows, services_of
from fake_telegram import TOKEN
from test_telegram import CHAT, HEADERS, SECRET, payload

BROKEN = {  # a database that refuses every inbound message row (a stand-in for a bug or a bad migration)
    "sqlite": ["CREATE TRIGGER kindling_test_broken BEFORE INSERT ON message BEGIN SELECT RAISE(ABORT, 'broken'); END"],
    "postgresql": [
        """CREATE OR REPLACE FUNCTION kindling_test_broken() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN RAISE EXCEPTION 'broken'; END $$""",
        "CREATE TRIGGER kindling_test_broken BEFORE INSERT ON message"
        " FOR EACH ROW EXECUTE FUNCTION kindling_test_broken()",
    ],
}
MENDED = {
    "sqlite": ["DROP TRIGGER IF EXISTS kindling_test_broken"],
    "postgresql": ["DROP FUNCTION IF EXISTS kindling_test_broken() CASCADE"],
}


@pytest.fixture
def telegram_settings(settings, fake_telegram):  # type: ignore[no-untyped-def]
    return settings.with_(telegram_token=TOKEN, telegram_secret=SECRET, telegram_api_url=fake_telegram.url)


async def run(db, statements: list[str]) -> None:  # type: ignore[no-untyped-def]
    async with db() as session:
        for statement in statements:
            await session.exec(text(statement))  # type: ignore[call-overload]
        await session.commit()


def dialect(database_url: str) -> str:
    return "sqlite" if is_sqlite(database_url) else "postgresql"


async def test_an_update_a_dead_server_answered_but_never_took_in_is_taken_in_by_the_next(
    make_client, telegram_settings, db, clock, database_url, fake_telegram
):
    update = payload("message_text")
    inbound = inbound_from(Update.de_json(update, None), clock.now(), lambda link: None)
    engine = create_engine(inbox_url(database_url))  # what the dead server wrote before its 200, and no more
    async with engine.begin() as connection:
        await connection.run_sync(InboxEntry.metadata.create_all, tables=[InboxEntry.__table__])
    async with sessionmaker(engine)() as session:
        session.add(InboxEntry(dedup_key=inbound.dedup_key, inbound=inbound_to_json(inbound),
                               received_at=clock.now(), lease_until=clock.now() + LEASE))  # fmt: skip
        await session.commit()
    await engine.dispose()

    client = await make_client(telegram_settings)
    inbox = services_of(client).inbox
    if not is_sqlite(database_url):  # another instance may be taking it in: wait for the lease
        await services_of(client).drain()
        assert not await rows(db, Lead)
        clock.advance(LEASE)
        assert await inbox.sweep() == 1
    await services_of(client).drain()

    [lead] = await rows(db, Lead)
    assert lead.first_name == "Ann"
    [message] = await rows(db, Message, Message.direction == "in")
    assert message.text == "Hi, do you ship to Canada?"
    # A question: the answer is that a person will reply.
    assert fake_telegram.texts(CHAT) == ["Thanks, Ann! A person from our team will reply here within 5 minutes."]
    assert not await rows(services_of(client).inbox.sessions, InboxEntry)
    # Telegram redelivers it after all (the dead server's 200 was lost): answered, and nothing changes.
    assert (await client.post("/webhooks/telegram", json=update, headers=HEADERS)).status == 200
    await services_of(client).drain()
    assert len(await rows(db, Event, Event.type == "message")) == 1 and len(fake_telegram.texts(CHAT)) == 1
    assert not await rows(services_of(client).inbox.sessions, InboxEntry)


async def test_an_update_whose_intake_keeps_failing_is_tried_a_few_times_then_kept_with_its_error(
    make_client, telegram_settings, db, clock, database_url, fake_telegram
):
    client = await make_client(telegram_settings)
    inbox = services_of(client).inbox
    await run(db, BROKEN[dialect(database_url)])
    try:
        response = await client.post("/webhooks/telegram", json=payload("message_text"), headers=HEADERS)
        assert response.status == 200  # stored: Telegram must not send it again
        await services_of(client).drain()
        [entry] = await rows(services_of(client).inbox.sessions, InboxEntry)
        assert "broken" in entry.error and entry.attempts == 0

        for attempt in range(1, MAX_ATTEMPTS + 1):
            clock.advance(LEASE)
            assert await inbox.sweep() == 1
            await services_of(client).drain()
            [entry] = await rows(services_of(client).inbox.sessions, InboxEntry)
            assert entry.attempts == attempt and "broken" in entry.error
        clock.advance(LEASE)
        assert await inbox.sweep() == 0  # given up: kept for a person to look at, not retried for ever
        assert not await rows(db, Lead) and not await rows(db, Event)  # never half-written
        assert not fake_telegram.sent_messages()
    finally:
        await run(db, MENDED[dialect(database_url)])


async def test_erasing_a_person_deletes_their_inbounds_kept_in_the_inbox_and_no_one_elses(
    make_client, telegram_settings, db, clock, database_url
):
    client = await make_client(telegram_settings)
    inbox = services_of(client).inbox
    assert (await client.post("/webhooks/telegram", json=payload("message_text"), headers=HEADERS)).status == 200
    await services_of(client).drain()
    [lead] = await rows(db, Lead)
    other = payload("message_text", update_id=730118002, text="Call me on +1 415 555 0100")
    other["message"]["from"]["id"] = other["message"]["chat"]["id"] = CHAT + 1
    await run(db, BROKEN[dialect(database_url)])
    try:  # both kept, with their error: the person's second message and someone else's first
        for update in (payload("message_text", update_id=730118011, text="My card is 4111 1111 1111 1111"), other):
            assert (await client.post("/webhooks/telegram", json=update, headers=HEADERS)).status == 200
        await services_of(client).drain()
        assert len(await rows(inbox.sessions, InboxEntry)) == 2
    finally:
        await run(db, MENDED[dialect(database_url)])

    response = await client.delete(f"/api/leads/{lead.id}", headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status == 200 and (await response.json())["removed"]["inbox"] == 1
    [kept] = await rows(inbox.sessions, InboxEntry)
    assert kept.inbound["text"] == "Call me on +1 415 555 0100"
    clock.advance(LEASE)  # and what is left is still taken in once the database is mended
    assert await inbox.sweep() == 1
    await services_of(client).drain()
    assert [lead.id for lead in await rows(db, Lead)] != [] and not await rows(inbox.sessions, InboxEntry)


async def test_an_update_held_longer_than_its_lease_by_a_busy_intake_is_not_taken_over(
    make_client, telegram_settings, db, clock, database_url, fake_telegram
):
    client = await make_client(telegram_settings)
    inbox = services_of(client).inbox
    async with held_writes(db, database_url):  # intake waits for the database, as under a long backlog
        assert (await client.post("/webhooks/telegram", json=payload("message_text"), headers=HEADERS)).status == 200
        for _ in range(4):  # two minutes pass, with the sweeps every instance runs
            clock.advance(LEASE / 3)
            assert await inbox.sweep() == 0
        [entry] = await rows(inbox.sessions, InboxEntry)
        assert entry.attempts == 0 and entry.lease_until > clock.now()  # still ours: no sweep may take it over
    await services_of(client).drain()

    assert len(await rows(db, Message, Message.direction == "in")) == 1
    assert len(fake_telegram.texts(CHAT)) == 1 and not await rows(inbox.sessions, InboxEntry)


@contextlib.asynccontextmanager
async def held_writes(db, database_url: str):  # type: ignore[no-untyped-def]
    """Another connection holds the database's write lock (SQLite) or the event table's (PostgreSQL)."""
    if is_sqlite(database_url):
        connection = sqlite3.connect(database_url.split(":///", 1)[1], isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            connection.execute("ROLLBACK")
            connection.close()
        return
    async with db() as session:
        await session.exec(text("LOCK TABLE event IN EXCLUSIVE MODE"))  # type: ignore[call-overload]
        yield
        await session.rollback()


async def test_a_flood_beyond_what_is_held_in_memory_is_read_back_in_order_without_waiting_for_leases(
    make_client, telegram_settings, db, monkeypatch
):
    monkeypatch.setattr("bot.intake.inbox.HELD", 20)  # a flood of 10,000 and more, in miniature
    client = await make_client(telegram_settings)

    async def chat(index: int) -> None:  # each chat's messages one after the other; 40 chats at once
        for n in range(3):
            update = payload("message_text", update_id=731_000_000 + index * 10 + n, text=f"chat {index} #{n}")
            update["message"]["from"]["id"] = update["message"]["chat"]["id"] = CHAT + 10 + index
            assert (await client.post("/webhooks/telegram", json=update, headers=HEADERS)).status == 200

    await asyncio.gather(*(chat(index) for index in range(40)))
    await services_of(client).drain()  # no time passes: no lease runs out, no sweep runs

    messages = await rows(db, Message, Message.direction == "in")
    assert len(messages) == 120 and not await rows(services_of(client).inbox.sessions, InboxEntry)
    for index in range(40):
        texts = [m.text for m in sorted(messages, key=lambda m: m.id) if m.text.startswith(f"chat {index} ")]
        assert texts == [f"chat {index} #{n}" for n in range(3)]
