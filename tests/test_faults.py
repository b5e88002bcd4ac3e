"""Faults a sender must be able to rely on: retries are safe, outages are answered so they retry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import text

from bot.config import WebhookSource
from bot.intake.inbound import Inbound, Profile
from bot.web.signing import signed_headers
from storage.db import DatabaseUnavailable, Deadlocked, create_engine, is_sqlite, transaction
from storage.models import Delivery, Enrollment, Event, Lead, Message

from conftest import API_KEY, rows, services_of

UNREACHABLE = "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"
SOURCE = WebhookSource("acme", "s3cret", None)


async def test_concurrent_replays_of_one_webhook_delivery_store_one_message_and_one_reply(
    make_client, settings, clock, db
):
    client = await make_client(settings.with_(webhook_sources={"acme": SOURCE}))
    body = json.dumps({"id": "d-9", "conversation": "t-1", "user": {"id": "u-1"}, "text": "hello"}).encode()
    headers = signed_headers("s3cret", body, clock.now())
    answers = await asyncio.gather(
        *[client.post("/webhooks/inbound/acme", data=body, headers=headers) for _ in range(6)]
    )
    assert [answer.status for answer in answers] == [200] * 6
    assert sorted([(await answer.json())["duplicate"] for answer in answers]) == [False] + [True] * 5
    await services_of(client).drain()
    assert len(await rows(db, Message, Message.direction == "in")) == 1
    assert len(await rows(db, Delivery)) == 1
    assert len(await rows(db, Lead)) == 1


async def test_concurrent_events_for_a_new_person_make_one_lead(client, db):
    bodies = [{"id": f"e-{n}", "type": "cart", "lead": {"email": "gil@example.com"}} for n in range(5)]
    auth = {"Authorization": f"Bearer {API_KEY}"}
    answers = await asyncio.gather(*[client.post("/api/events", json=body, headers=auth) for body in bodies])
    assert [answer.status for answer in answers] == [201] * 5
    assert len(await rows(db, Lead)) == 1
    assert len(await rows(db, Event, Event.type == "custom")) == 5


async def test_an_inbound_that_fails_does_not_fail_those_stored_together_with_it(client, db):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    bodies = [{"id": f"ok-{n}", "type": "signup", "lead": {"email": f"p{n}@example.com"}} for n in range(4)]
    bodies.insert(2, {"id": "bad", "type": "signup", "lead": {"id": 999_999}})  # no such lead
    answers = await asyncio.gather(*[client.post("/api/events", json=body, headers=auth) for body in bodies])
    assert [answer.status for answer in answers] == [201, 201, 404, 201, 201]
    assert len(await rows(db, Event, Event.type == "custom")) == 4
    assert len(await rows(db, Lead)) == 4


async def test_inbounds_stored_together_act_as_if_stored_one_after_the_other(client, db, clock):
    """A shared phone starts flows; the reply right behind it, in the same transaction, ends them."""

    def telegram(update_id: int, text: str) -> Inbound:
        return Inbound(
            channel="telegram", external_id="777", kind="message", dedup_key=f"telegram:update:{update_id}",
            identities=(("telegram", "777"),), at=clock.now(), text=text, profile=Profile(first_name="Ana"),
        )  # fmt: skip

    intake = services_of(client).intake
    shared, reply = await asyncio.gather(
        intake.receive(telegram(1, "+14155550123")), intake.receive(telegram(2, "great, tell me more"))
    )
    assert shared.lead_id == reply.lead_id and not reply.duplicate
    enrollments = {row.flow_slug: (row.status, row.exit_reason) for row in await rows(db, Enrollment)}
    assert enrollments["speed-to-lead"] == ("exited", "reply")  # and the stage:lead flow the phone started
    assert set(enrollments.values()) == {("exited", "reply")}


async def test_a_flood_from_a_few_people_at_once_is_all_stored_one_lead_each(client, db, clock):
    """Batches stored side by side (PostgreSQL) must not trip over each other on the same people.

    Two batches with the same person both wrote that person's rows and deadlocked: their inbounds were
    refused as if the database were down (the inbox then left them for a sweep a minute later).
    """

    def telegram(person: int, update_id: int) -> Inbound:
        return Inbound(
            channel="telegram", external_id=f"90{person}", kind="message", dedup_key=f"telegram:update:{update_id}",
            identities=(("telegram", f"90{person}"),), at=clock.now(), text="hello", profile=Profile(first_name="Bo"),
        )  # fmt: skip

    intake = services_of(client).intake
    floods = [[telegram(n % 6, 1000 * round_ + n) for n in range(200)] for round_ in range(2)]
    for flood in floods:  # the first makes the six people, the second finds them
        received = await asyncio.gather(*(intake.receive(inbound) for inbound in flood))  # raises if one failed
        assert len({each.lead_id for each in received}) == 6
    assert len(await rows(db, Lead)) == 6
    assert len(await rows(db, Message, Message.direction == "in")) == 400


async def test_when_the_database_is_down_senders_get_503_to_retry(make_client, settings, clock):
    down = settings.with_(database_url=UNREACHABLE, secret_key="k", webhook_sources={"acme": SOURCE})
    client = await make_client(down)
    body = json.dumps({"id": "d-1", "conversation": "t-1", "user": {"id": "u-1"}, "text": "hello"}).encode()
    webhook = await client.post(
        "/webhooks/inbound/acme", data=body, headers=signed_headers("s3cret", body, clock.now())
    )
    event = await client.post(
        "/api/events",
        json={"type": "signup", "lead": {"email": "a@example.com"}},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    health = await client.get("/healthz")
    assert (webhook.status, event.status, health.status) == (503, 503, 503)
    assert "retry" in (await webhook.json())["error"]

    ws = await client.ws_connect("/chat/ws")
    await ws.send_json({"type": "hello", "view": {"url": "https://shop.example/"}})
    frame = await ws.receive_json()
    assert frame["type"] == "error" and frame["retry"] is True


# --- deadlocks (PostgreSQL) ----------------------------------------------------------------------------------

NO_DEADLOCKS = "SQLite takes the write lock at BEGIN (IMMEDIATE): its transactions never deadlock"
HELD, WANTED = 4252, 4253  # advisory locks: a lead UPDATE takes HELD, then wants WANTED, which the opponent holds
THIS_DATABASE = "database = (SELECT oid FROM pg_database WHERE datname = current_database())"
DEADLOCK_ON_LEAD_UPDATE = [
    "CREATE SEQUENCE IF NOT EXISTS kindling_test_deadlocks",
    f"""CREATE OR REPLACE FUNCTION kindling_test_deadlock() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM nextval('kindling_test_deadlocks');  -- not undone by the rollback: counts the attempts
            PERFORM set_config('deadlock_timeout', '50ms', true);  -- this side finds the deadlock: the victim
            PERFORM pg_advisory_xact_lock({HELD});
            FOR i IN 1..500 LOOP  -- until the opponent waits for HELD (bounded: 5 s)
                EXIT WHEN EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = {HELD}
                                  AND NOT granted AND {THIS_DATABASE});
                PERFORM pg_sleep(0.01);
            END LOOP;
            PERFORM pg_advisory_xact_lock({WANTED});
            RETURN NEW;
        END $$""",
    "CREATE TRIGGER kindling_test_deadlock BEFORE UPDATE ON lead"
    " FOR EACH ROW EXECUTE FUNCTION kindling_test_deadlock()",
]
HELD_BY_ANOTHER = (
    f"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = {HELD} AND granted"
    f" AND pid <> pg_backend_pid() AND {THIS_DATABASE}"
)


async def new_leads(client, count: int) -> list[int]:  # type: ignore[no-untyped-def]
    auth = {"Authorization": f"Bearer {API_KEY}"}
    ids = []
    for n in range(count):
        answer = await client.post("/api/events", json={"type": "signup", "lead": {"email": f"d{n}@example.com"}},
                                   headers=auth)  # fmt: skip
        assert answer.status == 201
        ids.append((await answer.json())["lead_id"])
    return ids


@asynccontextmanager
async def every_lead_update_deadlocked(database_url: str) -> AsyncIterator[Callable[[], Awaitable[int]]]:
    """Each transaction that updates a lead deadlocks with another session and is the one PostgreSQL aborts.

    A real deadlock each time: the transaction holds HELD and waits for WANTED; the opponent holds WANTED and
    waits for HELD. Yields a function that tells how many there were so far.
    """
    engine = create_engine(database_url)
    done = asyncio.Event()

    async def deadlocks() -> int:
        async with engine.connect() as connection:
            counted = "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM kindling_test_deadlocks"
            return (await connection.execute(text(counted))).scalar_one()

    async def opponent() -> None:
        async with engine.connect() as connection:
            await connection.execute(text("SET deadlock_timeout = '30s'"))  # never this side that gives way
            await connection.execute(text(f"SELECT pg_advisory_lock({WANTED})"))
            await connection.commit()
            while not done.is_set():
                held = (await connection.execute(text(HELD_BY_ANOTHER))).scalar_one()
                await connection.commit()
                if not held:
                    await asyncio.sleep(0.01)
                    continue
                await connection.execute(text(f"SELECT pg_advisory_lock({HELD})"))  # granted once the victim aborts
                await connection.execute(text(f"SELECT pg_advisory_unlock({HELD})"))
                await connection.commit()
            await connection.execute(text("SELECT pg_advisory_unlock_all()"))
            await connection.commit()

    try:
        async with engine.begin() as connection:
            for statement in DEADLOCK_ON_LEAD_UPDATE:
                await connection.execute(text(statement))
        task = asyncio.create_task(opponent())
        try:
            yield deadlocks
        finally:
            done.set()
            await asyncio.wait_for(task, 10)
    finally:
        async with engine.begin() as connection:
            await connection.execute(text("DROP FUNCTION IF EXISTS kindling_test_deadlock() CASCADE"))
            await connection.execute(text("DROP SEQUENCE IF EXISTS kindling_test_deadlocks"))
        await engine.dispose()


async def test_transactions_that_deadlock_each_other_both_commit_once(client, db, database_url, clock):
    """PostgreSQL aborts one of two transactions that lock two rows in opposite orders; it is run again.

    Without the retry the loser's work was lost: its caller met "the database is unavailable".
    """
    if is_sqlite(database_url):
        pytest.skip(NO_DEADLOCKS)
    first, second = await new_leads(client, 2)
    before = [lead.score for lead in await rows(db, Lead)]
    holds = {"A": asyncio.Event(), "B": asyncio.Event()}
    runs: list[str] = []

    async def raise_both(session, name: str, mine: int, theirs: int, other: str) -> None:  # type: ignore[no-untyped-def]
        runs.append(name)
        await session.exec(text("SET LOCAL deadlock_timeout = '50ms'"))
        bump = text("UPDATE lead SET score = score + 1 WHERE id = :id")
        await session.exec(bump.bindparams(id=mine))
        holds[name].set()
        await asyncio.wait_for(holds[other].wait(), 10)  # each holds its first row: now each wants the other's
        await session.exec(bump.bindparams(id=theirs))
        session.add(Event(lead_id=mine, type="custom", name=f"raised by {name}", at=clock.now()))

    await asyncio.gather(
        transaction(db, lambda session: raise_both(session, "A", first, second, "B")),
        transaction(db, lambda session: raise_both(session, "B", second, first, "A")),
    )  # raises if either was lost

    # One deadlocked and ran once more; on a busy machine its second run can take its first row back before the
    # winner does, and deadlock again: still within the attempts, and still each committed once (below).
    assert len(runs) > 2 and set(runs) == {"A", "B"}
    after = [lead.score for lead in await rows(db, Lead)]
    assert after == [score + 2 for score in before]  # each raised both once: nothing lost, nothing twice
    raised = sorted(event.name for event in await rows(db, Event, Event.name.like("raised by %")))  # type: ignore[union-attr]
    assert raised == ["raised by A", "raised by B"]


async def test_a_transaction_that_deadlocks_at_each_attempt_is_refused_as_unavailable(client, db, database_url):
    """After its last attempt a deadlocked transaction raises Deadlocked, and an API request meeting it gets 503."""
    if is_sqlite(database_url):
        pytest.skip(NO_DEADLOCKS)
    [lead_id] = await new_leads(client, 1)
    [before] = await rows(db, Lead)
    bump = text("UPDATE lead SET score = score + 1 WHERE id = :id").bindparams(id=lead_id)

    async with every_lead_update_deadlocked(database_url) as deadlocks:
        with pytest.raises(Deadlocked) as raised:
            await transaction(db, lambda session: session.exec(bump), attempts=3)
        assert isinstance(raised.value, DatabaseUnavailable) and await deadlocks() == 3  # each attempt, then given up

        answer = await client.patch(
            f"/api/leads/{lead_id}", json={"add_tags": ["vip"]}, headers={"Authorization": f"Bearer {API_KEY}"}
        )
        assert answer.status == 503 and "retry" in (await answer.json())["error"]
        assert await deadlocks() == 6

    [lead] = await rows(db, Lead)
    assert (lead.score, lead.tags) == (before.score, [])  # nothing half-done
    answer = await client.patch(f"/api/leads/{lead_id}", json={"add_tags": ["vip"]},
                                headers={"Authorization": f"Bearer {API_KEY}"})  # fmt: skip
    assert answer.status == 200 and (await answer.json())["tags"] == ["vip"]  # and the retry goes through
