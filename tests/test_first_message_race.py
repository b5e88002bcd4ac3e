"""Two first messages from one new person, interleaved on PostgreSQL: one lead, both messages on it.

Found by the 10,000-update burst (test_burst.py), which ended with 1,497 leads for 1,495 people: the
extra two had no identity and each held one message of someone else's conversation. On PostgreSQL
(READ COMMITTED) intake B looked the person up before intake A committed, found nobody and made a
lead; by the time B attached the person's Telegram id, A had committed it, so B skipped it and went
on with its own lead. It must instead run again and find A's lead.

The interleaving is made deterministic with a test-only trigger on `lead`: the first transaction to
insert a lead (B) waits there for an advisory lock the test holds, while A runs to its commit; then the
test lets B go. SQLite needs no such test: every transaction takes the write lock at BEGIN, so two
intakes never interleave.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from sqlalchemy import text

from storage.db import create_engine, is_sqlite
from storage.models import Conversation, Event, Identity, Lead, Message

from conftest import rows, services_of
from fake_telegram import TOKEN
from test_db_loss import UNSTALL, _run
from test_fuzz_inbound import PAYLOADS

SECRET = "race-telegram-secret"
HEADERS = {"X-Telegram-Bot-Api-Secret-Token": SECRET, "Content-Type": "application/json"}
FIRST_IN, HOLD = 4243, 4242  # the first lead inserter takes FIRST_IN, then waits for HOLD (the test's)
STALL_FIRST_LEAD = [
    f"""CREATE OR REPLACE FUNCTION kindling_test_stall() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF pg_try_advisory_xact_lock({FIRST_IN}) THEN PERFORM pg_advisory_xact_lock({HOLD}); END IF;
            RETURN NEW;
        END $$""",
    "CREATE TRIGGER kindling_test_stall BEFORE INSERT ON lead FOR EACH ROW EXECUTE FUNCTION kindling_test_stall()",
]
WAITING = f"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = {HOLD} AND NOT granted"


@pytest.fixture
async def client(make_client, settings, fake_telegram):  # type: ignore[no-untyped-def]
    return await make_client(
        settings.with_(telegram_token=TOKEN, telegram_secret=SECRET, telegram_api_url=fake_telegram.url)
    )


def update(update_id: int, text_: str) -> bytes:
    data = json.loads(json.dumps(PAYLOADS["message_text"]))
    data["update_id"], data["message"]["text"] = update_id, text_
    return json.dumps(data).encode()


async def test_two_first_messages_of_a_new_person_interleaved_make_one_lead(client, db, database_url):
    if is_sqlite(database_url):
        pytest.skip("SQLite serializes writers at BEGIN IMMEDIATE: intakes cannot interleave")
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            await _run(connection, STALL_FIRST_LEAD)
            await connection.execute(text(f"SELECT pg_advisory_lock({HOLD})"))
            await connection.commit()
            second = await client.post("/webhooks/telegram", data=update(2, "B"), headers=HEADERS)
            assert second.status == 200  # in the inbox; its intake goes on in the background
            for _ in range(500):  # B waits in the trigger (bounded: 10 s)
                waiting = (await connection.execute(text(WAITING))).scalar_one()
                await connection.commit()
                if waiting:
                    break
                await asyncio.sleep(0.02)
            assert waiting, "the second update never reached its lead INSERT"
            first = await client.post("/webhooks/telegram", data=update(1, "A"), headers=HEADERS)
            assert first.status == 200  # in the inbox; intake takes it in right after
            for _ in range(500):  # A's intake commits lead, identity, conversation, event, message (bounded: 10 s)
                if await rows(db, Message):
                    break
                await asyncio.sleep(0.02)
            assert await rows(db, Message), "the first update was never taken in"
            await connection.execute(text(f"SELECT pg_advisory_unlock({HOLD})"))
            await connection.commit()
    finally:
        async with engine.connect() as connection:
            await _run(connection, UNSTALL)
        await engine.dispose()
    await services_of(client).drain()

    live = [lead for lead in await rows(db, Lead) if lead.merged_into_id is None]
    assert len(live) == 1, f"{len(live)} leads for one person"
    [lead] = live
    assert [(i.kind, i.lead_id) for i in await rows(db, Identity)] == [("telegram", lead.id)]
    assert {c.lead_id for c in await rows(db, Conversation)} == {lead.id}
    assert {e.lead_id for e in await rows(db, Event, Event.type == "message")} == {lead.id}
    assert sorted(m.text for m in await rows(db, Message, Message.direction == "in", Message.lead_id == lead.id)) == [
        "A",
        "B",
    ]
