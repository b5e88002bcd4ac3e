"""Privacy: a lead's data exported in full, erased everywhere, and an erased person never contacted again."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from aiohttp import WSMsgType, web
from sqlalchemy import Column, ForeignKey, Integer, String, Table, inspect, text
from sqlmodel import SQLModel

from bot.channels.webchat import token_for
from bot.channels.webhook import sign
from bot.config import WebhookSource
from storage.db import checkpoint, is_sqlite
from storage.models import Delivery, Enrollment, Erasure, Event, Handoff, Lead, Message, Suppression

from conftest import API_KEY, rows, services_of, templates_with
from fake_telegram import TOKEN
from test_console_queue import operator, warm
from test_handoff import add_operator
from test_webchat import hello, next_from, say

AUTH = {"Authorization": f"Bearer {API_KEY}"}
FIRST, LAST = "Zelphine", "Quorrelby"
EMAIL_TYPED, EMAIL = "Zelphine.Quorrelby@Example.ORG", "zelphine.quorrelby@example.org"
PHONE_TYPED, PHONE = "+1 (415) 555-2689", "+14155552689"
TELEGRAM_CHAT = 5550001
TELEGRAM_SECRET = "test-telegram-secret"

DRIP = """+++
name = "Pricing drip"
trigger = "page_view"
when = "(event.path or '').startswith('/pricing')"
exit = ["opt_out"]
+++
{% step "one", after="10m" %}Hi {{ lead.first_name or "there" }}, here is our pricing guide.{% endstep %}
{% step "two", after="1h" %}{{ lead.first_name or "Hey" }}, any questions about plans?{% endstep %}
"""

SIGNUP = """+++
name = "Welcome after signup"
trigger = "custom:signup"
exit = ["opt_out"]
+++
{% step "welcome", after="1h" %}Welcome aboard, {{ lead.first_name or "friend" }}!{% endstep %}
"""


@pytest.fixture
async def app(make_client, settings, fake_telegram, tmp_path):
    """The app with the drip and signup flows, the widget and Telegram (on the fake Bot API).

    Questions do not go to a person here: the person's story (chats, a drip, then a handoff) stays as written.
    """
    templates = templates_with(tmp_path / "templates", {"drip": DRIP, "signup": SIGNUP})
    return await make_client(
        settings.with_(
            handoff=replace(settings.handoff, questions=False),
            templates=templates,
            telegram_token=TOKEN,
            telegram_secret=TELEGRAM_SECRET,
            telegram_api_url=fake_telegram.url,
        )
    )


async def signup(app, email: str, **lead) -> dict:
    """The site's backend reports a signup, with the email in the properties too."""
    body = {"type": "signup", "lead": {"email": email, **lead}, "properties": {"email": email, "plan": "pro"}}
    response = await app.post("/api/events", json=body, headers=AUTH)
    assert response.status == 201, await response.text()
    await services_of(app).drain()
    return await response.json()


async def backend_event(app, name: str, lead: dict) -> None:
    """The site's backend reports an event about a person it knows (it vouches for the email it names)."""
    response = await app.post("/api/events", json={"type": name, "lead": lead}, headers=AUTH)
    assert response.status == 201, await response.text()
    await services_of(app).drain()


async def telegram(app, text: str, update_id: int) -> None:
    """A Telegram message from the person's own account."""
    sender = {"id": TELEGRAM_CHAT, "is_bot": False, "first_name": FIRST, "last_name": LAST, "language_code": "en"}
    update = {
        "update_id": update_id,
        "message": {
            "message_id": update_id % 1000,
            "from": sender,
            "chat": {**sender, "type": "private"},
            "date": 1767614400,
            "text": text,
        },
    }
    response = await app.post(
        "/webhooks/telegram", json=update, headers={"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET}
    )
    assert response.status == 200
    await services_of(app).drain()


async def tick(app, clock, by: timedelta) -> None:
    """Time passes: due steps run and the outbox is sent."""
    clock.advance(by)
    services = services_of(app)
    await services.runner.run_due()
    await services.dispatcher.dispatch_due()
    await services.drain()


async def rich_lead(app, db, clock) -> dict:
    """A person who reached us everywhere: signup API, widget, Telegram, a drip, a handoff, an operator, a merge."""
    clock.advance(timedelta(hours=3))  # 10:00 in the visitor's New York: no quiet hours
    signed_up = await signup(app, EMAIL_TYPED, first_name=FIRST, last_name=LAST)
    ws = await app.ws_connect("/chat/ws")
    welcome = await hello(ws)  # the pricing page: the drip enrolls this visitor
    await say(app, ws, f"Hi, I'm {FIRST} {LAST}")
    await say(app, ws, f"Reach me at {EMAIL_TYPED} or {PHONE_TYPED}")  # typed: the email only a claim
    await backend_event(app, "login", {"email": EMAIL, "visitor_id": welcome["visitor"]})  # verified: one lead now
    await telegram(app, f"/start v-{welcome['link']}", 730200001)
    await telegram(app, f"It's {FIRST} again, from Telegram", 730200002)
    await tick(app, clock, timedelta(minutes=10))  # step one is sent
    clock.advance(timedelta(hours=1))
    await services_of(app).runner.run_due()  # step two waits in the outbox
    await say(app, ws, "Can I talk to a human please?")
    [handoff] = await rows(db, Handoff)
    services = services_of(app)
    ana = await add_operator(db, "Ana")
    await services.handoffs.claim(handoff.id, ana)
    await services.handoffs.reply(handoff.id, ana, f"Hello {FIRST}, Ana here. How can I help?")
    assert (await next_from(ws, "operator"))["text"].startswith(f"Hello {FIRST}")
    await ws.close()
    return {"lead_id": signed_up["lead_id"], "merged_id": welcome["lead"], "visitor": welcome["visitor"]}


async def other_lead(app) -> int:
    """Someone else entirely, on the widget and the events API."""
    ws = await app.ws_connect("/chat/ws")
    welcome = await hello(ws, url="https://shop.example/pricing?utm_source=bing")
    await say(app, ws, "Hello, I'm Bartholomew, bart@example.net")
    await ws.close()
    await signup(app, "bart@example.net", first_name="Bartholomew", visitor_id=welcome["visitor"])
    return welcome["lead"]


async def export(app, lead_id: int) -> dict:
    response = await app.get(f"/api/leads/{lead_id}/export", headers=AUTH)
    assert response.status == 200, await response.text()
    return await response.json()


async def mentions(db, needles: list[str]) -> list[str]:
    """Every (table.column: needle) where a needle appears, in every table the database lists, cast to text."""
    found = []
    async with db() as session:
        connection = await session.connection()
        tables = await connection.run_sync(
            lambda sync: {
                name: [c["name"] for c in inspect(sync).get_columns(name)] for name in inspect(sync).get_table_names()
            }
        )
        for table, columns in tables.items():
            for column in columns:
                for needle in needles:
                    query = text(f'SELECT count(*) FROM "{table}" WHERE lower(CAST("{column}" AS TEXT)) LIKE :needle')
                    if (await connection.execute(query, {"needle": f"%{needle.lower()}%"})).scalar():
                        found.append(f"{table}.{column}: {needle}")
    return found


async def test_erasing_a_lead_leaves_nothing_about_them_anywhere_and_the_other_lead_intact(app, db, clock):
    person = await rich_lead(app, db, clock)
    other = await other_lead(app)
    needles = [EMAIL_TYPED, EMAIL, PHONE, PHONE_TYPED, "555-2689", FIRST, LAST, person["visitor"], str(TELEGRAM_CHAT)]
    assert len(await mentions(db, needles)) > 10  # the search finds them before
    deliveries = await rows(db, Delivery, Delivery.lead_id == person["lead_id"])
    assert {(d.kind, d.status) for d in deliveries} >= {
        ("nurture", "sent"),
        ("nurture", "pending"),
        ("operator", "sent"),
    }
    other_before = await export(app, other)

    response = await app.delete(f"/api/leads/{person['lead_id']}", headers=AUTH)

    assert response.status == 200
    answer = await response.json()
    assert answer["lead_id"] == person["lead_id"]
    assert answer["removed"]["lead"] == 2  # the survivor and the signup's lead merged into it
    assert set(answer["removed"]) >= {
        "identity",
        "conversation",
        "event",
        "message",
        "delivery",
        "enrollment",
        "handoff",
    }
    assert FIRST not in json.dumps(answer) and EMAIL not in json.dumps(answer)
    assert await mentions(db, needles) == []
    assert (await export(app, other))["tables"] == other_before["tables"]
    suppressed = await rows(db, Suppression)
    assert sorted(entry.kind for entry in suppressed) == ["email", "phone", "telegram", "visitor"]
    [audit] = await rows(db, Erasure)
    assert (audit.lead_id, audit.erased_by, audit.removed) == (
        person["lead_id"],
        "api:KINDLING_API_KEY",
        answer["removed"],
    )
    # The pending step is gone with the lead: the dispatcher has nothing left to send to them.
    assert await services_of(app).dispatcher.dispatch_due() == 0
    again = await app.delete(f"/api/leads/{person['lead_id']}", headers=AUTH)  # the erasure log names it: gone
    assert again.status == 410 and (await again.json())["error"].startswith(f"lead {person['lead_id']} was erased on ")
    merged = await app.delete(f"/api/leads/{person['merged_id']}", headers=AUTH)
    assert merged.status == 404 and await merged.json() == {"error": f"no lead {person['merged_id']}"}
    for lead_id in (person["lead_id"], person["merged_id"]):
        assert (await app.get(f"/api/leads/{lead_id}/export", headers=AUTH)).status == 404


async def closing(ws) -> tuple[int, str]:
    """Read past the frames still on their way to the socket; the close code and reason it got."""
    while (frame := await ws.receive(timeout=5)).type == WSMsgType.TEXT:
        pass
    assert frame.type == WSMsgType.CLOSE, frame
    return frame.data, frame.extra


async def test_erasing_a_lead_closes_their_open_sockets_and_drops_them_from_the_live_queue(app, add_operator):
    await operator(app, add_operator, "ann")
    queue = await app.ws_connect("/console/ws?queue=1")
    assert (await queue.receive_json(timeout=5))["handoffs"] == []
    widget = await warm(app, name="Fay")  # the visitor's widget stays open
    opened = await queue.receive_json(timeout=5)
    handoff_id, lead_id = opened["handoff"]["id"], opened["handoff"]["lead_id"]
    transcript = await app.ws_connect(f"/console/ws?handoff={handoff_id}")  # an operator reads the conversation

    assert (await app.delete(f"/api/leads/{lead_id}", headers=AUTH)).status == 200

    assert await closing(widget) == (4410, "erased")
    assert await closing(transcript) == (4410, "erased")
    erased = {"id": handoff_id, "lead_id": lead_id, "status": "erased"}
    assert await queue.receive_json(timeout=5) == {"type": "handoff", "change": "erased", "handoff": erased}
    assert not queue.closed  # the queue itself stays live


async def test_an_erasure_from_the_cli_closes_the_widget_open_on_a_postgresql_server_and_says_when_it_cannot(
    app, run_kindling, database_url
):
    widget = await warm(app, name="Fay")
    [lead_id] = [lead.id for lead in await rows(services_of(app).sessions, Lead)]

    status, out, err = await run_kindling("lead", "erase", str(lead_id), "--yes")

    assert status == 0, err
    if is_sqlite(database_url):  # the server is another process the command cannot reach
        assert "a `kindling serve` running on this SQLite database is not told" in err
        assert not widget.closed
    else:
        assert err == ""
        assert await closing(widget) == (4410, "erased")


async def test_on_sqlite_the_erased_person_is_gone_from_every_file_on_disk_while_the_server_runs(
    app, db, clock, database_url
):
    if not is_sqlite(database_url):
        pytest.skip("PostgreSQL keeps dead rows until VACUUM; docs/privacy.md says so")
    person = await rich_lead(app, db, clock)
    assert await checkpoint(db)  # what SQLite does every 1000 pages: the person is in the database file now
    folder = Path(database_url.split(":///", 1)[1]).parent

    def holding(needle: str) -> list[str]:
        """The files of the database folder (databases, inbox, their -wal and -shm) whose bytes hold the needle."""
        return sorted(path.name for path in folder.iterdir() if path.is_file() and needle.encode() in path.read_bytes())

    assert "kindling-inbox.db-wal" in holding(str(TELEGRAM_CHAT))  # the raw Telegram updates, already taken in
    assert holding(EMAIL)

    assert (await app.delete(f"/api/leads/{person['lead_id']}", headers=AUTH)).status == 200

    for needle in (EMAIL, PHONE, "555-2689", FIRST, LAST, person["visitor"], str(TELEGRAM_CHAT)):
        assert holding(needle) == [], needle


async def test_the_export_holds_every_row_of_every_table_about_the_person(app, db, clock):
    person = await rich_lead(app, db, clock)
    await other_lead(app)

    response = await app.get(f"/api/leads/{person['merged_id']}/export", headers=AUTH)  # a merged-away id works

    assert response.status == 200
    assert response.headers["Content-Disposition"] == f'attachment; filename="lead-{person["lead_id"]}.json"'
    document = await response.json()
    assert document["lead_id"] == person["lead_id"]
    assert document["lead_ids"] == sorted([person["lead_id"], person["merged_id"]])
    lead_ids = set(document["lead_ids"])
    for table in SQLModel.metadata.sorted_tables:
        if "lead_id" not in table.c or table.name == "erasure":
            continue
        async with db() as session:
            stored = (await session.exec(table.select().where(table.c.lead_id.in_(lead_ids)))).all()
        exported = {row["id"] for row in document["tables"].get(table.name, [])}
        assert {row.id for row in stored} <= exported, table.name
        assert stored or table.name not in document["tables"]
    assert {row["id"] for row in document["tables"]["lead"]} == lead_ids
    # Rows that point at the person only through another row come along too.
    assert {m["conversation_id"] for m in document["tables"]["message"]} <= {
        c["id"] for c in document["tables"]["conversation"]
    }
    assert set(document["tables"]) >= {"pointsentry", "enrollment", "handoff", "delivery", "identity"}
    dumped = json.dumps(document)
    for needle in (EMAIL, PHONE, FIRST, LAST, "Bartholomew"):
        assert (needle in dumped) is (needle != "Bartholomew")
    [handoff] = document["tables"]["handoff"]
    assert handoff["card"]["email"] == EMAIL and handoff["created_at"].endswith("+00:00")


async def test_an_erased_person_who_comes_back_can_chat_but_is_not_nurtured(app, db, clock):
    person = await rich_lead(app, db, clock)
    assert (await app.delete(f"/api/leads/{person['lead_id']}", headers=AUTH)).status == 200

    came_back = await signup(app, EMAIL_TYPED)  # the same email, from the site's backend
    ws = await app.ws_connect("/chat/ws")
    visitor = person["visitor"]
    await hello(ws, visitor, token_for(services_of(app).secret_key, visitor))  # the same browser, on pricing again
    await say(app, ws, "Hi again")
    assert (await next_from(ws, "bot"))["text"].startswith("Hi! Thanks for reaching out")  # they are answered
    await ws.close()
    await telegram(app, "Hello again", 730200003)  # and from the same Telegram account
    stranger = await other_lead(app)
    await tick(app, clock, timedelta(hours=2))

    returning = [lead for lead in await rows(db, Lead) if lead.id != stranger]
    assert len(returning) == 3 and all(lead.opted_out_at is not None for lead in returning)  # email, widget, Telegram
    assert came_back["lead_id"] in {lead.id for lead in returning}
    returning_ids = {lead.id for lead in returning}
    assert await rows(db, Enrollment, Enrollment.lead_id.in_(returning_ids)) == []
    assert await rows(db, Delivery, Delivery.lead_id.in_(returning_ids), Delivery.kind == "nurture") == []
    reasons = [e.payload["reason"] for e in await rows(db, Event, Event.type == "opt_out")]
    assert reasons and all(reason.startswith("matches an erased person") for reason in reasons)
    assert all(EMAIL not in reason and visitor not in reason for reason in reasons)
    # The stranger is nurtured as usual.
    assert {e.flow_slug for e in await rows(db, Enrollment, Enrollment.lead_id == stranger)} == {"drip", "signup"}


async def test_a_suppression_entry_is_hashed_with_the_installations_secret_key(make_client, settings, db):
    for key in ("first-installation-key", "second-installation-key"):  # one person, erased under each key
        app = await make_client(settings.with_(secret_key=key))
        erased = await signup(app, EMAIL_TYPED)
        assert (await app.delete(f"/api/leads/{erased['lead_id']}", headers=AUTH)).status == 200
    hashes = {entry.hash for entry in await rows(db, Suppression, Suppression.kind == "email")}
    assert len(hashes) == 2  # another key, another hash: a leaked table cannot be matched against a list of emails
    unkeyed = {hashlib.sha256(guess.encode()).hexdigest() for guess in (EMAIL, f"email:{EMAIL}", f"email{EMAIL}")}
    assert not hashes & unkeyed


async def test_every_lead_column_is_a_foreign_key_so_erasure_finds_it():
    """A table that keeps a lead id without a foreign key would be missed by export and erasure."""
    unlinked = [
        f"{table.name}.{column.name}"
        for table in SQLModel.metadata.sorted_tables
        for column in table.columns
        if column.name.endswith("lead_id") and not column.foreign_keys
    ]
    assert unlinked == ["erasure.lead_id"]  # the audit line outlives the lead on purpose


async def test_bad_and_unknown_ids_are_refused(app):
    for method, path in (("GET", "/api/leads/{}/export"), ("DELETE", "/api/leads/{}")):
        bad = await app.request(method, path.format("abc"), headers=AUTH)
        assert bad.status == 400 and "whole number" in (await bad.json())["error"]
        assert (await app.request(method, path.format(999), headers=AUTH)).status == 404
        assert (await app.request(method, path.format(-1), headers=AUTH)).status == 400
        assert (await app.request(method, path.format(1))).status == 401


class Provider:
    """Another chat provider whose reply endpoint erases the lead before it answers: a row vanishes mid-send."""

    def __init__(self, db) -> None:  # type: ignore[no-untyped-def]
        self.db, self.app = db, None
        self.erased: list[int] = []

    async def handle(self, request: web.Request) -> web.Response:
        for lead in await rows(self.db, Lead):
            response = await self.app.delete(f"/api/leads/{lead.id}", headers=AUTH)
            self.erased.append(response.status)
        return web.json_response({})


async def test_a_delivery_whose_lead_is_erased_mid_send_is_dropped_quietly(
    make_client, settings, aiohttp_server, db, clock, caplog
):
    provider = Provider(db)
    server = web.Application()
    server.router.add_post("/replies", provider.handle)
    replies = await aiohttp_server(server)
    source = WebhookSource("acme", "acme-secret", str(replies.make_url("/replies")))
    app = await make_client(settings.with_(webhook_sources={"acme": source}))
    provider.app = app
    body = json.dumps({"id": "d-1", "conversation": "t-1", "user": {"id": "u-1", "name": "Zed Q"}, "text": "hi"})
    timestamp = str(int(clock.now().timestamp()))
    headers = {"X-Kindling-Timestamp": timestamp, "X-Kindling-Signature": sign("acme-secret", timestamp, body.encode())}

    with caplog.at_level(logging.WARNING):
        response = await app.post("/webhooks/inbound/acme", data=body, headers=headers)
        await services_of(app).drain()  # the reply is being sent when the lead is erased
        await tick(app, clock, timedelta(minutes=5))

    assert response.status == 200 and provider.erased == [200]
    assert await rows(db, Lead) == [] and await rows(db, Delivery) == [] and await rows(db, Message) == []
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []


async def test_the_cli_exports_to_a_file_and_erases_after_confirmation(app, db, clock, run_kindling, tmp_path):
    person = await rich_lead(app, db, clock)
    lead_id = person["lead_id"]

    status, out, err = await run_kindling("lead", "export", str(lead_id), "--output", str(tmp_path / "lead.json"))
    assert status == 0 and err.strip() == f"lead {lead_id} exported to {tmp_path / 'lead.json'}"
    assert json.loads((tmp_path / "lead.json").read_text())["tables"]["lead"][0]["email"] == EMAIL
    status, out, err = await run_kindling("lead", "export", "999")
    assert (status, err.strip()) == (1, "no lead 999")

    status, out, err = await run_kindling("lead", "erase", str(lead_id), stdin="no\n")
    assert status == 1 and "This cannot be undone" in err and "nothing erased" in err
    assert FIRST not in err and EMAIL not in err  # the prompt names no personal data
    assert len(await rows(db, Lead)) == 2

    status, out, err = await run_kindling("lead", "erase", str(lead_id), stdin="yes\n")
    assert status == 0 and out.startswith(f"lead {lead_id} erased; rows removed: lead 2, ")
    assert await rows(db, Lead) == []
    [audit] = await rows(db, Erasure)
    assert audit.erased_by.startswith("cli:")
    status, out, err = await run_kindling("lead", "erase", str(lead_id), "--yes")
    assert status == 1 and err.startswith(f"lead {lead_id} was erased on ")


@pytest.fixture
async def tables_added_later(db):
    """Tables someone adds later, linked by foreign keys only: a note on a lead, its replies, a referral."""
    added = [
        Table("leadnote", SQLModel.metadata, Column("id", Integer, primary_key=True),
              Column("lead_id", ForeignKey("lead.id"), nullable=False), Column("body", String)),
        Table("notereply", SQLModel.metadata, Column("id", Integer, primary_key=True),
              Column("note_id", ForeignKey("leadnote.id"), nullable=False), Column("body", String)),
        Table("referral", SQLModel.metadata, Column("id", Integer, primary_key=True),
              Column("referrer_lead_id", ForeignKey("lead.id"), nullable=True),
              Column("referred_lead_id", ForeignKey("lead.id"), nullable=True)),
    ]  # fmt: skip
    async with db() as session, session.begin():
        await (await session.connection()).run_sync(lambda sync: [table.create(sync) for table in added])
    yield added
    async with db() as session, session.begin():
        await (await session.connection()).run_sync(lambda sync: [table.drop(sync) for table in reversed(added)])
    for table in added:
        SQLModel.metadata.remove(table)


async def test_tables_added_later_are_exported_and_erased_through_their_foreign_keys(app, db, tables_added_later):
    note, reply, referral = tables_added_later
    person = (await signup(app, EMAIL_TYPED, first_name=FIRST))["lead_id"]
    friend = (await signup(app, "bart@example.net", first_name="Bartholomew"))["lead_id"]
    async with db() as session, session.begin():
        await session.exec(note.insert().values(id=1, lead_id=person, body=f"{FIRST} wants a demo"))
        await session.exec(reply.insert().values(id=1, note_id=1, body=f"call {FIRST} on Monday"))
        await session.exec(referral.insert().values(id=1, referrer_lead_id=person, referred_lead_id=friend))

    document = await export(app, person)
    assert document["tables"]["leadnote"] == [{"id": 1, "lead_id": person, "body": f"{FIRST} wants a demo"}]
    assert document["tables"]["notereply"] == [{"id": 1, "note_id": 1, "body": f"call {FIRST} on Monday"}]
    assert "referral" not in document["tables"]  # the friend's row: it only points at the person
    response = await app.delete(f"/api/leads/{person}", headers=AUTH)

    assert response.status == 200
    assert {"leadnote": 1, "notereply": 1}.items() <= (await response.json())["removed"].items()
    assert await mentions(db, [FIRST, EMAIL]) == []
    async with db() as session:
        kept = (await session.exec(referral.select())).all()
    assert [tuple(row) for row in kept] == [(1, None, friend)]  # the friend keeps their row, without the link
    assert (await export(app, friend))["tables"]["lead"][0]["first_name"] == "Bartholomew"


async def test_two_erasures_of_one_lead_at_once_erase_it_once(app, db):
    lead_id = (await signup(app, EMAIL_TYPED, first_name=FIRST))["lead_id"]

    responses = await asyncio.gather(*(app.delete(f"/api/leads/{lead_id}", headers=AUTH) for _ in range(2)))

    assert sorted(response.status for response in responses) == [200, 410]  # the second finds it gone
    assert len(await rows(db, Erasure)) == 1 and len(await rows(db, Suppression)) == 1
