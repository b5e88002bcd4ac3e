"""The database fails in the middle of storing an inbound: 503 (so the sender retries), nothing half-written,
and the retry once the database is back is stored once and answered once.

The faults are real database faults, not exceptions raised in Kindling's code:

- PostgreSQL: the connection dies mid-transaction. A test-only trigger on `message` makes the app's
  INSERT wait for an advisory lock the test holds; by then the transaction has written the lead, its
  identity, the conversation and the event (the test sees the app's backend holding row locks on those
  tables). The test then ends that backend from its own connection with `pg_terminate_backend`, as an
  administrator, a failover or a network cut would.
- SQLite: the disk fills up. When the app's transaction reaches the same INSERT into message (seen by
  a listener on the app's engine, which changes nothing in what the app does), the test lowers this
  process's file size limit (RLIMIT_FSIZE, with SIGXFSZ ignored) to one byte. SQLite keeps the
  transaction's pages in memory and writes them to the write-ahead log at COMMIT, where the write now
  fails with an I/O error, as on a full disk; anything committed before that point (an intake that
  committed the lead on its own, say) would stay behind and fail the test. The limit is restored in
  `finally`; meanwhile no file of the test process may grow (pytest's captured output may lose the
  app's log lines for that request).

Each runs with both senders that retry on 5xx, Telegram's webhook and a signed webhook provider, and
with the widget, which is told to resend (an error frame with `retry`) and does so with the same id.
Telegram's update is answered once it is stored in the inbox (bot/intake/inbox.py), so for it the fault hits
that INSERT (on SQLite the inbox is a file of its own, written outside SQLAlchemy: the file size limit
is set before the request); a further test fails its intake after the answer, which must leave the
update in the inbox, nothing half-written, for a sweep to take in once.

The last test exhausts the connection pool instead: the test holds every connection of a small pool
(the sizes and timeout monkeypatched, as a busy server would leave it) on both databases. Telegram's
update is stored and answered all the same: the inbox writes outside that pool.
"""

from __future__ import annotations

import asyncio
import json
import resource
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import event, func, text
from sqlmodel import select

from bot.channels.telegram_plain import dedup_key
from bot.config import WebhookSource
from bot.intake.inbox import APPLICATION_NAME, LEASE
from bot.web.signing import signed_headers
from storage.db import create_engine, is_sqlite
from storage.models import Conversation, Delivery, Event, Identity, InboxEntry, Lead, Message

from conftest import API_KEY, services_of
from fake_telegram import TOKEN
from test_console_queue import operator
from test_fuzz_inbound import PAYLOADS

SECRET = "db-loss-telegram-secret"
WEBHOOK_SECRET = "db-loss-webhook-secret"
CHAT = 5550001
LOCK = 4242  # the advisory lock the trigger waits for
STALL = f"""CREATE OR REPLACE FUNCTION kindling_test_stall() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN PERFORM pg_advisory_xact_lock({LOCK}); RETURN NEW; END $$"""
STALL_ON = (
    "CREATE TRIGGER kindling_test_stall BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION kindling_test_stall()"
)
UNSTALL = ["DROP FUNCTION IF EXISTS kindling_test_stall() CASCADE"]  # and its trigger, on whichever table
WAITING_APP = f"SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = {LOCK} AND NOT granted"
TABLES = (Lead, Identity, Conversation, Event, Message, Delivery)

Send = Callable[[], Awaitable[Any]]  # posts (or sends a frame) and returns the answer


class Replies:
    """The webhook provider's reply endpoint: every reply Kindling sends, by delivery key."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.keys.append(request.headers["X-Kindling-Delivery"])
        return web.json_response({})


@pytest.fixture
async def replies(aiohttp_server):  # type: ignore[no-untyped-def]
    replies = Replies()
    app = web.Application()
    app.router.add_post("/replies", replies.handle)
    replies.server = await aiohttp_server(app)
    return replies


@pytest.fixture
async def client(make_client, settings, fake_telegram, replies):  # type: ignore[no-untyped-def]
    source = WebhookSource("acme", WEBHOOK_SECRET, str(replies.server.make_url("/replies")))
    return await make_client(
        settings.with_(
            telegram_token=TOKEN,
            telegram_secret=SECRET,
            telegram_api_url=fake_telegram.url,
            webhook_sources={"acme": source},
        )
    )


def sender(client, clock, channel: str) -> Send:  # type: ignore[no-untyped-def]
    """Posts the same inbound each time it is called, as the channel's sender would on a retry."""
    if channel == "telegram":
        body = json.dumps(PAYLOADS["message_text"]).encode()
        headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET, "Content-Type": "application/json"}
        return lambda: client.post("/webhooks/telegram", data=body, headers=headers)
    body = json.dumps({"id": "d-1", "conversation": "t-1", "user": {"id": "u-1"}, "text": "Hi, a free trial?"})
    return lambda: client.post(
        "/webhooks/inbound/acme", data=body, headers=signed_headers(WEBHOOK_SECRET, body.encode(), clock.now())
    )


async def counts(db) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Rows per table; messages are the inbound ones (the bot's replies join the transcript when sent), events the
    inbound messages' (a question also opens a handoff, with events of its own)."""
    queries = {model.__name__: select(func.count()).select_from(model) for model in TABLES}
    queries["Message"] = queries["Message"].where(Message.direction == "in")
    queries["Event"] = queries["Event"].where(Event.type == "message")
    async with db() as session:
        return {name: (await session.exec(query)).one() for name, query in queries.items()}


# --- the faults --------------------------------------------------------------------------------


async def connection_killed_mid_transaction(
    database_url: str, send: Send, table: str = "message"
) -> tuple[Any, set[str]]:
    """PostgreSQL: send while the app's INSERT into `table` waits in the trigger, then end its backend.

    Returns the answer and the tables the app's transaction had written to when it was ended.
    """
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            await _run(connection, [STALL, STALL_ON.format(table=table)])
            await connection.execute(text(f"SELECT pg_advisory_lock({LOCK})"))
            await connection.commit()
            request = asyncio.create_task(send())
            pid = await _waiting_backend(connection)
            written = await _tables_written_by(connection, pid)
            assert (await connection.execute(text(f"SELECT pg_terminate_backend({pid})"))).scalar_one()
            await connection.commit()
            response = await asyncio.wait_for(request, timeout=30)
            await connection.execute(text(f"SELECT pg_advisory_unlock({LOCK})"))
            await _run(connection, UNSTALL)
    finally:
        async with engine.connect() as connection:  # the trigger must not outlive the test, whatever happened
            await _run(connection, UNSTALL)
        await engine.dispose()
    return response, written


async def _run(connection, statements: list[str]) -> None:  # type: ignore[no-untyped-def]
    for statement in statements:
        await connection.exec_driver_sql(statement)
    await connection.commit()


async def _waiting_backend(connection) -> int:  # type: ignore[no-untyped-def]
    """The pid of the app's backend once it waits for the lock (bounded: 10 s)."""
    for _ in range(500):
        pid = (await connection.execute(text(WAITING_APP))).scalar()
        await connection.commit()  # a fresh snapshot of pg_locks next time
        if pid is not None:
            return pid
        await asyncio.sleep(0.02)
    raise AssertionError("the app never reached the stalled INSERT")


async def _tables_written_by(connection, pid: int) -> set[str]:  # type: ignore[no-untyped-def]
    query = text(
        "SELECT relname FROM pg_locks JOIN pg_class ON pg_class.oid = relation "
        "WHERE pid = :pid AND mode = 'RowExclusiveLock' AND relkind = 'r'"
    )
    names = set((await connection.execute(query, {"pid": pid})).scalars())
    await connection.commit()
    return names


async def disk_full_from_the_insert(client, send: Send, table: str = "message") -> Any:  # type: ignore[no-untyped-def]
    """SQLite: send; once the app's transaction reaches its INSERT into `table`, no file of this process may grow."""
    engine = services_of(client).sessions.kw["bind"].sync_engine
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    def fill_the_disk(connection, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        if statement.startswith(f"INSERT INTO {table} "):
            resource.setrlimit(resource.RLIMIT_FSIZE, (1, hard))

    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG for the write instead of a killed process
    event.listen(engine, "before_cursor_execute", fill_the_disk)
    if table == "inbox":  # a file of its own, written without SQLAlchemy: and the request's first write
        resource.setrlimit(resource.RLIMIT_FSIZE, (1, hard))
    try:
        return await send()
    finally:
        event.remove(engine, "before_cursor_execute", fill_the_disk)
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


# --- the test ------------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", ["telegram", "webhook"])
async def test_the_database_failing_mid_inbound_is_a_503_with_nothing_stored_and_the_retry_is_stored_once(
    client, db, database_url, clock, fake_telegram, replies, channel
):
    send = sender(client, clock, channel)
    await services_of(client).drain()
    assert set((await counts(db)).values()) == {0}
    # Telegram's update is answered once it is in the inbox: that INSERT is the one to fail. The signed
    # webhook is answered after intake: its transaction fails half-way, at the INSERT into message.
    table = "inbox" if channel == "telegram" else "message"

    if is_sqlite(database_url):
        failed = await disk_full_from_the_insert(client, send, table)
    else:
        failed, written = await connection_killed_mid_transaction(database_url, send, table)

    assert failed.status == 503, await failed.text()
    assert "retry" in (await failed.json())["error"]
    await services_of(client).drain()
    assert set((await counts(db)).values()) == {0}, "a half-written inbound was left behind"
    assert not await inbox(client)
    if not is_sqlite(database_url) and channel == "webhook":  # the transaction had written these when ended
        assert {"lead", "identity", "conversation", "event"} <= written, written
    assert not fake_telegram.sent_messages() and not replies.keys

    for _ in range(2):  # the database is back: the sender's retry, and a second one for good measure
        retried = await send()
        assert retried.status == 200, await retried.text()
        await services_of(client).drain()

    stored = await counts(db)
    assert (stored["Lead"], stored["Conversation"], stored["Event"], stored["Message"]) == (1, 1, 1, 1)
    answered = fake_telegram.texts(CHAT) if channel == "telegram" else replies.keys
    assert len(answered) == stored["Delivery"] == 1, answered


async def test_a_telegram_update_whose_intake_fails_after_the_answer_waits_in_the_inbox_and_is_taken_in_once(
    client, db, database_url, clock, fake_telegram
):
    """Answered 200 once stored; intake then fails half-way: nothing half-written, and a sweep takes it in."""
    post = sender(client, clock, "telegram")
    await services_of(client).drain()
    answers = []

    async def send_and_take_in() -> Any:
        answers.append(await post())
        await services_of(client).drain()  # intake runs after the answer: the fault is meant for it

    if is_sqlite(database_url):
        await disk_full_from_the_insert(client, send_and_take_in, "message")
    else:
        _, written = await connection_killed_mid_transaction(database_url, send_and_take_in, "message")
        assert {"lead", "identity", "conversation", "event"} <= written, written

    assert [answer.status for answer in answers] == [200]
    assert set((await counts(db)).values()) == {0}, "a half-written inbound was left behind"
    [entry] = await inbox(client)
    update_id, message = PAYLOADS["message_text"]["update_id"], PAYLOADS["message_text"]["message"]
    assert entry.dedup_key == dedup_key(update_id, message["chat"]["id"], message["message_id"])
    assert not fake_telegram.sent_messages()

    inbox_ = services_of(client).inbox
    assert await inbox_.sweep() == 0  # the receiving process keeps it until its lease runs out
    clock.advance(LEASE)
    assert await inbox_.sweep() == 1
    await services_of(client).drain()
    assert await inbox_.sweep() == 0  # taken in: gone from the inbox, in the same transaction

    stored = await counts(db)
    assert (stored["Lead"], stored["Conversation"], stored["Event"], stored["Message"]) == (1, 1, 1, 1)
    assert not await inbox(client)
    assert len(fake_telegram.texts(CHAT)) == stored["Delivery"] == 1


async def test_an_update_after_postgresql_ended_the_inboxs_idle_connection_is_stored_and_answered(
    client, db, database_url, clock
):
    """As after a restart of PostgreSQL: the inbox's connection of its own is replaced before the next update."""
    if is_sqlite(database_url):
        pytest.skip("SQLite's inbox is a file: no server to end its connection")
    first = await sender(client, clock, "telegram")()
    assert first.status == 200
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            ended = (  # this database's only: tests running beside this one have databases of their own
                "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
                " WHERE application_name = :name AND datname = current_database()"
            )
            ends = (await connection.execute(text(ended), {"name": APPLICATION_NAME})).scalars().all()
            assert ends and all(ends), ends
    finally:
        await engine.dispose()

    update = {**PAYLOADS["message_text"], "update_id": PAYLOADS["message_text"]["update_id"] + 1}
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET, "Content-Type": "application/json"}
    second = await client.post("/webhooks/telegram", data=json.dumps(update), headers=headers)
    assert second.status == 200, await second.text()
    await services_of(client).drain()
    stored = await counts(db)
    assert (stored["Event"], stored["Message"]) == (2, 2)  # both taken in, once each


async def inbox(client) -> list[InboxEntry]:  # type: ignore[no-untyped-def]
    """What waits in the app's inbox (on SQLite a file of its own)."""
    async with services_of(client).inbox.sessions() as session:
        return list((await session.exec(select(InboxEntry))).all())


async def test_the_widget_is_told_to_resend_when_the_database_fails_mid_message_and_the_resend_is_stored_once(
    client, db, database_url
):
    ws = await client.ws_connect("/chat/ws")
    await ws.send_json({"type": "hello", "visitor": None, "token": None})
    assert (await ws.receive_json(timeout=10))["type"] == "welcome"
    await services_of(client).drain()
    before = await counts(db)
    message = {"type": "message", "id": "3f1c2b9e-6a57-4a8e-9d1f-0c2b7e5a4d31", "text": "Is there a free trial?"}

    async def send() -> dict:
        await ws.send_json(message)
        while (frame := await ws.receive_json(timeout=30))["type"] not in ("ack", "error"):
            pass
        return frame

    if is_sqlite(database_url):
        failed = await disk_full_from_the_insert(client, send)
    else:
        failed, _ = await connection_killed_mid_transaction(database_url, send)

    assert (failed["type"], failed["id"], failed["retry"]) == ("error", message["id"], True)
    await services_of(client).drain()
    assert await counts(db) == before, "a half-written message was left behind"
    assert (await send()) == {"type": "ack", "id": message["id"], "duplicate": False}
    assert (await send()) == {"type": "ack", "id": message["id"], "duplicate": True}
    await services_of(client).drain()
    await ws.close()
    after = await counts(db)
    assert (after["Message"] - before["Message"], after["Event"] - before["Event"]) == (1, 1)


# --- every pooled connection busy ----------------------------------------------------------------

POOL = 2


@pytest.fixture
def small_pool(monkeypatch):  # type: ignore[no-untyped-def]
    """The app's engine gets a pool of POOL connections, no overflow, and waits 0.2 s for one (not 30 s)."""
    monkeypatch.setattr("storage.db.POOL_SIZE", {"postgresql": POOL, "sqlite": POOL})
    monkeypatch.setattr("storage.db.POOL_OVERFLOW", {"postgresql": 0, "sqlite": 0})
    monkeypatch.setattr("storage.db.POOL_TIMEOUT", 0.2)


@asynccontextmanager
async def every_connection_busy(client) -> AsyncIterator[None]:  # type: ignore[no-untyped-def]
    """Check out every connection of the app's pool and keep them, as long-running requests would."""
    engine = services_of(client).sessions.kw["bind"]
    async with AsyncExitStack() as held:
        for _ in range(POOL):
            await held.enter_async_context(engine.connect())
        yield


async def test_every_pooled_connection_busy_is_a_503_for_senders_and_a_page_for_people_and_retries_are_stored(
    small_pool, client, db, clock, add_operator, fake_telegram, replies
):
    await operator(client, add_operator, "ann")
    api = {"Authorization": f"Bearer {API_KEY}"}
    event = json.dumps({"type": "signup", "lead": {"email": "ann@example.com"}})
    senders = {
        "telegram": sender(client, clock, "telegram"),
        "webhook": sender(client, clock, "webhook"),
        "events": lambda: client.post("/api/events", data=event, headers={**api, "Content-Type": "application/json"}),
        "leads": lambda: client.get("/api/leads", headers=api),
    }
    await services_of(client).drain()

    async with every_connection_busy(client):
        busy = {name: await send() for name, send in senders.items()}
        page = await client.get("/console/queue")
        health = await client.get("/healthz")

        # The inbox writes outside the pool (SQLite: a file of its own; PostgreSQL: a connection of its own):
        # Telegram's update is stored and answered all the same.
        assert busy.pop("telegram").status == 200
        for name, answer in busy.items():
            assert answer.status == 503, (name, await answer.text())
            assert await answer.json() == {"error": "the database is unavailable; retry later"}, name
        assert page.status == 503 and "The database is unavailable; try again in a moment." in await page.text()
        assert health.status == 503

    retried = {}
    for name, send in senders.items():  # each once the last one's work in the background (intake, replies) is done:
        retried[name] = await send()  # with only POOL connections, that work could take both for the 0.2 s allowed
        await services_of(client).drain()
    assert {name: answer.status for name, answer in retried.items()} == {
        "telegram": 200,
        "webhook": 200,
        "events": 201,
        "leads": 200,
    }
    await services_of(client).drain()
    stored = await counts(db)
    assert (stored["Lead"], stored["Message"]) == (3, 2)  # Telegram's, the provider's and the signup's, once each
